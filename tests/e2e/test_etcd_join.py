"""Coordinators with their own sealing keys on one etcd store: a newcomer obtains the cluster key
from a running peer by mutual attestation, keeps it sealed with its own key, and a Coordinator
of another package, or one attesting with a platform key trusted for services only, gets nothing
(real processes, real etcd)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import geode
from geode.attestation import EvidenceVerifier, SimulatedPlatform, measure_bundle
from geode.coordinator import EtcdSettings, EtcdStore, parse_etcd_url
from geode.coordinator._audit import EtcdAuditLog
from geode.coordinator._cluster import JoinParty, obtain_cluster_key
from geode.errors import ActivationDenied, ClientError
from tests.conftest import StartCoordinator
from tests.coordinator.support.simulated import simulated_tee
from tests.e2e.test_etcd_coordinators import _activate, _root, _set_manifest
from tests.support import CoordinatorProcess, wait_until
from tests.support.etcd import EtcdServer, own_sealing_key

pytestmark = pytest.mark.e2e


def _store(etcd: EtcdServer) -> EtcdStore:
    return EtcdStore(EtcdSettings(endpoints=parse_etcd_url(etcd.url)))


def test_a_newcomer_obtains_the_cluster_key_from_a_peer_and_keeps_it(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    store = ("--store", etcd.url)
    a = start_coordinator(tmp_path / "data-a", *store, *own_sealing_key(tmp_path, "a"))
    _set_manifest(a, bundle, max_activations=2)
    _activate(a, bundle, geode_env)

    # b's sealing key opens nothing of a's: it asks a, and both attest.
    b = start_coordinator(tmp_path / "data-b", *store, *own_sealing_key(tmp_path, "b"))
    assert b.status()["state"] == "active"
    assert _root(b) == _root(a)
    assert f"obtained the cluster key from {a.mesh_addr}" in b.log()
    assert "cluster key handed over to a peer Coordinator" in a.log()
    copy = tmp_path / "data-b" / "cluster.key.sealed"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    _activate(b, bundle, geode_env)  # the second of two: counted on the shared state
    # One audit log in etcd for both: a's manifest and both starts, whoever flushed them.
    events = [json.loads(line)["event"] for line in EtcdAuditLog(_store(etcd)).read()]
    assert events.count("coordinator.start") == 2
    assert "manifest.set" in events
    assert not (tmp_path / "data-a" / "audit.log").exists()
    with pytest.raises(ActivationDenied, match="max_activations reached"):
        _activate(a, bundle, geode_env)

    # Alone, b opens the shared state after a restart with its own sealed copy.
    assert a.stop() == 0
    assert b.stop() == 0
    again = start_coordinator(tmp_path / "data-b", *store, *own_sealing_key(tmp_path, "b"))
    assert again.status()["state"] == "active"
    assert "asking a peer" not in again.log()
    assert again.status()["activations"] == {"web": 2}


def _modified_geode(directory: Path) -> dict[str, str]:
    """PYTHONPATH for a copy of the geode package with one changed byte of code: another
    Coordinator package, hence another measurement."""
    target = directory / "geode"
    shutil.copytree(
        Path(geode.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__")
    )
    with (target / "_files.py").open("a") as f:
        f.write("\n# a modified Coordinator\n")
    assert measure_bundle(target) != measure_bundle(Path(geode.__file__).parent)
    return {"PYTHONPATH": str(directory)}


def test_another_package_gets_no_key_and_no_peer_means_recovery(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    store = ("--store", etcd.url)
    a = start_coordinator(tmp_path / "data-a", *store, *own_sealing_key(tmp_path, "a"))
    _set_manifest(a, bundle)

    env = {**geode_env, **_modified_geode(tmp_path / "modified")}
    found = subprocess.run(
        [sys.executable, "-c", "import geode; print(geode.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert found.startswith(str(tmp_path / "modified"))
    other = CoordinatorProcess(
        tmp_path / "data-m", env, tmp_path / "modified.log", *store, *own_sealing_key(tmp_path, "m")
    )
    try:
        other.start()
        status = other.status()
        assert status["state"] == "recovery"
        assert "not the same Coordinator package: measurement mismatch" in other.log()
        assert "cluster key refused to" in a.log()
        assert "measurement mismatch" in a.log()
        assert not (tmp_path / "data-m" / "cluster.key.sealed").exists()
    finally:
        other.stop()
    assert a.status()["state"] == "active"  # the refusal changed nothing for a

    # Every Coordinator that held the key is gone: a new sealing key has nobody to ask.
    assert a.stop() == 0
    newcomer = start_coordinator(tmp_path / "data-n", *store, *own_sealing_key(tmp_path, "n"))
    assert newcomer.status()["state"] == "recovery"
    assert "no other Coordinator is listed in etcd" in newcomer.log()
    assert not (tmp_path / "data-n" / "cluster.key.sealed").exists()


def test_two_new_deployments_racing_on_one_store_end_as_one(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Both start on an empty store, each with its own root and cluster key in memory.
    store = ("--store", etcd.url)
    a = start_coordinator(tmp_path / "data-a", *store, *own_sealing_key(tmp_path, "a"))
    b = start_coordinator(tmp_path / "data-b", *store, *own_sealing_key(tmp_path, "b"))
    assert _root(a) != _root(b)
    _set_manifest(a, bundle, max_activations=3)
    with pytest.raises(ClientError) as conflict:
        _set_manifest(b, bundle)
    assert (conflict.value.status, conflict.value.code) == (409, "store_conflict")
    # b lost: a's state does not open with b's keys, and b never saved a state of its own, so
    # it obtains a's cluster key from a (in the background) and serves a's state.
    wait_until(lambda: _root(b) == _root(a), 15, b.log)
    assert f"obtained the cluster key from {a.mesh_addr}" in b.log()
    _activate(b, bundle, geode_env)
    _activate(a, bundle, geode_env)
    assert a.status()["activations"] == {"web": 2}
    # b reads what a saved within about a second (--etcd-poll), without writing anything.
    wait_until(lambda: b.status()["activations"] == {"web": 2}, 10, b.status)


def test_a_platform_key_trusted_for_services_earns_no_cluster_key(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # a trusts the platform its services run on (another host's simulated platform key).
    own = SimulatedPlatform.load_or_create(Path(geode_env["GEODE_PLATFORM_KEY"]))
    services_key = tmp_path / "keys" / "services-platform.key"
    services = SimulatedPlatform.load_or_create(services_key)
    store = ("--store", etcd.url)
    as_services = ("--trust-platform-key", str(services_key))
    a = start_coordinator(
        tmp_path / "data-a", *store, *own_sealing_key(tmp_path, "a"), *as_services
    )
    _set_manifest(a, bundle)

    # Whoever holds that key signs evidence claiming the Coordinator's measurement (anyone can
    # compute it) and asks a for the cluster key over its mesh API: refused, no key.
    measurement = measure_bundle(Path(geode.__file__).parent)
    verifier = EvidenceVerifier(
        simulation=True, platform_keys=[own.public_key, services.public_key]
    )
    forger = JoinParty(simulated_tee(services, measurement), verifier)
    key, failures = obtain_cluster_key([a.mesh_addr], forger, lambda _key: True)
    assert key is None
    (failure,) = failures
    assert "refused" in failure
    assert "untrusted simulated platform key" in failure
    assert "cluster key refused to" in a.log()

    # A Coordinator process on that platform is refused the same way, and stays in recovery.
    b_args = (*store, *own_sealing_key(tmp_path, "b"), "--platform-key", str(services_key))
    own_key = ("--trust-platform-key", geode_env["GEODE_PLATFORM_KEY"])
    b = start_coordinator(tmp_path / "data-b", *b_args, *own_key)
    assert b.status()["state"] == "recovery"
    assert not (tmp_path / "data-b" / "cluster.key.sealed").exists()
    assert b.stop() == 0

    # Trusted for Coordinators, explicitly and on both ends, the same key earns the join.
    assert a.stop() == 0
    a = start_coordinator(
        tmp_path / "data-a", *store, *own_sealing_key(tmp_path, "a"), *as_services,
        "--trust-coordinator-platform-key", str(services_key),
    )  # fmt: skip
    assert a.status()["state"] == "active"
    b = start_coordinator(
        tmp_path / "data-b", *b_args, "--trust-coordinator-platform-key",
        geode_env["GEODE_PLATFORM_KEY"],
    )  # fmt: skip
    assert b.status()["state"] == "active"
    assert _root(b) == _root(a)
    assert f"obtained the cluster key from {a.mesh_addr}" in b.log()
