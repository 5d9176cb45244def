"""``geode coordinator --collateral KIND=FILE``: hardware evidence checked with collateral."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from geode.coordinator import CoordinatorConfig
from geode.coordinator._server import _read_collateral
from geode.errors import GeodeError
from tests.attestation.support.vectors import VECTORS, requires_vectors
from tests.support import CoordinatorProcess


@pytest.mark.parametrize("value", ["simulated=x.json", "sgx", "quantum=x.json", "sgx=/nope.json"])
def test_a_bad_collateral_option_is_one_line(value: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "geode", "coordinator", "--simulation",
         "--data-dir", str(tmp_path / "data"), "--collateral", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--collateral" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreadable_collateral_file_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    config = CoordinatorConfig(data_dir=tmp_path / "data", collateral={"sgx": directory})
    with pytest.raises(GeodeError, match="--collateral sgx="):
        _read_collateral(config)


@requires_vectors
def test_the_coordinator_starts_with_intel_collateral(
    tmp_path: Path, geode_env: dict[str, str]
) -> None:
    assert VECTORS is not None
    collateral = VECTORS / "sgx_v3_dcapqvl.collateral.json"
    coordinator = CoordinatorProcess(
        tmp_path / "data", geode_env, tmp_path / "c.log", "--collateral", f"sgx={collateral}"
    )
    try:
        coordinator.start()
        assert coordinator.status()["state"] == "awaiting-manifest"
        assert _read_collateral(
            CoordinatorConfig(data_dir=tmp_path, collateral={"sgx": collateral})
        ) == {"sgx": collateral.read_bytes()}
    finally:
        coordinator.stop()
