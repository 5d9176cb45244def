"""What the Coordinator does at start with what its command gave it: collateral for hardware
evidence read once (``--collateral KIND=FILE``), and an etcd that does not answer is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from geode.coordinator import CoordinatorConfig
from geode.coordinator._attesting import read_collateral
from geode.errors import GeodeError
from tests.attestation.support.vectors import VECTORS, requires_vectors
from tests.support import CoordinatorProcess, free_port, geode_cli


def test_an_unreadable_collateral_file_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.json"
    directory.mkdir()
    config = CoordinatorConfig(data_dir=tmp_path / "data", collateral={"sgx": directory})
    with pytest.raises(GeodeError, match="--collateral sgx="):
        read_collateral(config)


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
        assert read_collateral(
            CoordinatorConfig(data_dir=tmp_path, collateral={"sgx": collateral})
        ) == {"sgx": collateral.read_bytes()}
    finally:
        coordinator.stop()


def test_unreachable_etcd_is_one_line(tmp_path: Path, geode_env: dict[str, str]) -> None:
    store = f"etcd://127.0.0.1:{free_port()}"
    result = geode_cli(
        "coordinator", "--simulation", "--data-dir", str(tmp_path / "data"), "--store", store,
        env=geode_env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no etcd endpoint answered" in result.stderr
    assert "Traceback" not in result.stderr
