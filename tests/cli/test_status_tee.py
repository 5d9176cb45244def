"""``geode status`` names the TEE a hardware Coordinator runs in, the interface it reaches it
through and how it seals, in text and in ``--json`` (the Coordinator's answer, in-process)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from geode.cli import cli
from geode.client import CoordinatorClient
from geode.protocol import CoordinatorStatus

STATUS = CoordinatorStatus(
    state="active",
    simulation=False,
    measurement="ab" * 48,
    started_at="2026-01-01T00:00:00Z",
    tee="sev-snp",
    tee_interface="sev-snp via /dev/sev-guest",
    sealing="SNP_GET_DERIVED_KEY (VCEK, measurement and guest policy)",
)


@pytest.fixture(autouse=True)
def _answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CoordinatorClient, "status", lambda self: STATUS)


def status(*args: str) -> str:
    result = CliRunner().invoke(
        cli, ["status", "--insecure", "--coordinator", "127.0.0.1:1", *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_status_says_tee_interface_and_sealing() -> None:
    out = status()
    assert "tee:          sev-snp (sev-snp via /dev/sev-guest)" in out
    assert "sealing:      SNP_GET_DERIVED_KEY (VCEK, measurement and guest policy)" in out
    assert "simulation:" not in out


def test_status_json_carries_them() -> None:
    out = status("--json")
    answer = json.loads(out[out.index("{") :])
    assert answer["tee"] == "sev-snp"
    assert answer["tee_interface"] == "sev-snp via /dev/sev-guest"
    assert answer["sealing"].startswith("SNP_GET_DERIVED_KEY")
    assert answer["simulation"] is False
