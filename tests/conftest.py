"""Shared fixtures: an isolated Geode environment and real Coordinator processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geode.attestation import measure_bundle
from geode.testing import EtcdCluster
from tests.support import CoordinatorProcess, make_bundle, sample_manifest
from tests.support.etcd import EtcdServer, etcd_binary
from tests.support.hardware import FakeSgx, FakeSnp, FakeTdx

StartCoordinator = Callable[..., CoordinatorProcess]


@pytest.fixture
def geode_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Keys and pins of this test only: nothing touches the real home directory."""
    values = {
        "GEODE_SEALING_KEY": str(tmp_path / "keys" / "sealing.key"),
        "GEODE_PLATFORM_KEY": str(tmp_path / "keys" / "platform.key"),
        "GEODE_CONFIG_DIR": str(tmp_path / "config"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("GEODE_COORDINATOR", "GEODE_COORDINATOR_MESH", "GEODE_ROOT_CA"):
        monkeypatch.delenv(key, raising=False)
    return {**os.environ, **values}


@pytest.fixture
def start_coordinator(tmp_path: Path, geode_env: dict[str, str]) -> Iterator[StartCoordinator]:
    """Factory: ``start_coordinator(data_dir=None, *args)`` starts a Coordinator process."""
    started: list[CoordinatorProcess] = []

    def start(data_dir: Path | None = None, *args: str) -> CoordinatorProcess:
        proc = CoordinatorProcess(
            data_dir or tmp_path / "data",
            dict(geode_env),
            tmp_path / f"coordinator-{len(started)}.log",
            *args,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real single-member etcd on free loopback ports (fails in CI when etcd is missing)."""
    server = EtcdServer(tmp_path / "etcd")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A real three-member etcd cluster on free loopback ports (fails in CI when etcd is
    missing)."""
    cluster = EtcdCluster(tmp_path / "etcd-cluster", etcd_binary(), 3, name="test")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def coordinator(start_coordinator: StartCoordinator) -> CoordinatorProcess:
    return start_coordinator()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small service bundle, with the tests' Python locked (``python3 app.py`` runs it)."""
    return make_bundle(
        tmp_path / "bundle", {"app.py": "print('hello from a confidential service')\n"}
    )


@pytest.fixture
def manifest_for(bundle: Path) -> Callable[..., str]:
    def build(**service: object) -> str:
        return sample_manifest(measure_bundle(bundle).hex(), **service)

    return build


# Fake TEE platforms (``tests.support.hardware``), one per test module: its tests share a chip.


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> FakeSnp:
    return FakeSnp.create(tmp_path_factory.mktemp("snp"))


@pytest.fixture(scope="module")
def tdx(tmp_path_factory: pytest.TempPathFactory) -> FakeTdx:
    return FakeTdx.create(tmp_path_factory.mktemp("tdx"))


@pytest.fixture(scope="module")
def sgx(tmp_path_factory: pytest.TempPathFactory) -> FakeSgx:
    return FakeSgx.create(tmp_path_factory.mktemp("sgx"))
