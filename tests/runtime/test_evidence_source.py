"""geode.runtime.choose_evidence_source: ``geode run``'s evidence, from a TEE or simulated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from geode.attestation import (
    Evidence,
    QuoteProvider,
    SimulatedPlatform,
    platform_key_id,
    select_quote_provider,
    verify_simulated_quote,
)
from geode.errors import EvidenceError
from geode.runtime.launcher import choose_evidence_source

REPORT_DATA = bytes(range(64))


# The measurement of the staged copy of a bundle, as ``geode run`` passes it.
MEASUREMENT = bytes(range(32))


def _no_tee(environ: dict[str, str]) -> Callable[[str | None], QuoteProvider | None]:
    """``select_quote_provider`` on a machine with no TEE interface at all."""

    def select(name: str | None) -> QuoteProvider | None:
        missing = Path("/nonexistent/geode-test")
        return select_quote_provider(
            name, environ=environ, gramine_root=missing, tsm_root=missing, sev_guest=missing
        )

    return select


@pytest.mark.parametrize("name", ["auto", "simulated", None])
@pytest.mark.parametrize("debug", [False, True])
def test_without_a_tee_it_is_simulation_of_the_given_measurement(
    tmp_path: Path, name: str | None, debug: bool
) -> None:
    key = tmp_path / "keys" / "platform.key"
    key.parent.mkdir(mode=0o700)
    source = choose_evidence_source(
        name,
        measurement=MEASUREMENT,
        platform_key=key,
        simulate_debug=debug,
        select=_no_tee({}),
    )
    assert source.simulated
    assert source.name == "simulated"
    evidence = source.provider(REPORT_DATA)
    assert evidence.kind == "simulated"
    platform = SimulatedPlatform.load(key)  # made on first use, mode 0600
    keys = {platform_key_id(platform.public_key): platform.public_key}
    claims = verify_simulated_quote(evidence.data, keys)
    assert claims.measurement == MEASUREMENT
    assert claims.report_data == REPORT_DATA
    assert claims.debug is debug


class _FakeTee:
    name = "configfs-tsm"

    def __call__(self, report_data: bytes) -> Evidence:
        return Evidence("tdx", b"quote:" + report_data)


def test_a_tee_present_is_used_and_no_platform_key_is_made(tmp_path: Path) -> None:
    key = tmp_path / "platform.key"
    asked: list[str | None] = []

    def select(name: str | None) -> _FakeTee:
        asked.append(name)
        return _FakeTee()

    source = choose_evidence_source(
        "auto", measurement=MEASUREMENT, platform_key=key, select=select
    )
    assert asked == ["auto"]
    assert not source.simulated
    assert source.name == "configfs-tsm"
    assert source.provider(REPORT_DATA) == Evidence("tdx", b"quote:" + REPORT_DATA)
    assert not key.exists()


def test_a_named_provider_that_is_absent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="'gramine' is not available"):
        choose_evidence_source(
            "gramine",
            measurement=MEASUREMENT,
            platform_key=tmp_path / "k",
            select=_no_tee({}),
        )
    assert not (tmp_path / "k").exists()


def test_the_environment_names_the_provider_when_the_flag_does_not(
    tmp_path: Path,
) -> None:
    with pytest.raises(EvidenceError, match="unknown quote provider 'tpm'"):
        choose_evidence_source(
            None,
            measurement=MEASUREMENT,
            platform_key=tmp_path / "k",
            select=_no_tee({"GEODE_QUOTE_PROVIDER": "tpm"}),
        )
