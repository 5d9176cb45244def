"""Coordinators with ``--store etcd://...`` against a real etcd: restarts keep the state, and two
Coordinators on one store never lose each other's updates."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied, ClientError
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess, sample_manifest
from tests.support.etcd import EtcdServer, state_in_etcd

pytestmark = pytest.mark.e2e


def _root(c: CoordinatorProcess) -> x509.Certificate:
    with CoordinatorClient(c.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def _activate(c: CoordinatorProcess, bundle: Path, env: dict[str, str]) -> Activation:
    platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
    provider = simulated_evidence_provider(platform, measure_bundle(bundle))
    return activate(c.mesh_addr, "web", provider, root=_root(c))


def _set_manifest(c: CoordinatorProcess, bundle: Path, **service: object) -> None:
    with CoordinatorClient(c.client_addr, root=_root(c)) as client:
        client.set_manifest(sample_manifest(measure_bundle(bundle).hex(), **service).encode())


def test_state_lives_in_etcd_across_restarts(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    first = start_coordinator(tmp_path / "data-1", "--store", etcd.url)
    _set_manifest(first, bundle, max_activations=2)
    before = _activate(first, bundle, geode_env)
    status_before = first.status()
    assert first.stop() == 0
    assert not (tmp_path / "data-1" / "state.sealed").exists()  # the audit log only

    # The state read back from etcd unseals with the Coordinator's sealing key.
    stored = state_in_etcd([etcd.endpoint], Path(geode_env["GEODE_SEALING_KEY"]))
    assert stored["manifest"] is not None
    assert stored["activations"] == {"web": 1}

    # Another data directory: everything that matters comes from etcd.
    second = start_coordinator(tmp_path / "data-2", "--store", etcd.url)
    status_after = second.status()
    assert status_after["state"] == "active"
    for field in ("root_fingerprint", "manifest_sha256", "activations"):
        assert status_after[field] == status_before[field]
    after = _activate(second, bundle, geode_env)
    assert after.env["API_TOKEN"] == before.env["API_TOKEN"]
    with pytest.raises(ActivationDenied, match="max_activations reached"):
        _activate(second, bundle, geode_env)


def test_two_coordinators_on_one_store_lose_no_update(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Both on one sealing key file (tests/e2e/test_etcd_join.py has them on their own keys). b
    # does not look for newer states on its own (--etcd-poll 600s): the race is deterministic.
    a = start_coordinator(tmp_path / "data-a", "--store", etcd.url)
    b = start_coordinator(tmp_path / "data-b", "--store", etcd.url, "--etcd-poll", "600s")
    _set_manifest(a, bundle, max_activations=3)

    # b read the store before a's manifest: its save loses the compare-and-swap, typed 409.
    with pytest.raises(ClientError) as conflict:
        _set_manifest(b, bundle, max_activations=100)
    assert conflict.value.status == 409
    assert conflict.value.code == "store_conflict"
    # What etcd holds is the winner's manifest (a's, max_activations=3), not b's.
    stored = state_in_etcd([etcd.endpoint], Path(geode_env["GEODE_SEALING_KEY"]))
    manifest = base64.b64decode(stored["manifest"])
    assert json.loads(manifest)["services"]["web"]["max_activations"] == 3
    assert hashlib.sha256(manifest).hexdigest() == a.status()["manifest_sha256"]
    # b has read the winner's state again: a's root and manifest, and it serves them.
    assert _root(b) == _root(a)
    assert b.status()["manifest_sha256"] == a.status()["manifest_sha256"]

    # Activations through either are written by one of them (the writer, a: it started
    # first), on one line of writes: none lost, none counted twice, none beyond the limit.
    assert f"the writer of activations is now {a.mesh_addr}" in b.log()
    for c in (b, a, b):
        _activate(c, bundle, geode_env)
    for c in (a, b):
        with pytest.raises(ActivationDenied, match="max_activations reached"):
            _activate(c, bundle, geode_env)
    assert a.status()["activations"] == {"web": 3}
    stored = state_in_etcd([etcd.endpoint], Path(geode_env["GEODE_SEALING_KEY"]))
    assert stored["activations"] == {"web": 3}
