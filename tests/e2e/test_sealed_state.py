"""Sealed state across restarts, tampering and another sealing key; no plaintext secret on disk."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess, sample_manifest

pytestmark = pytest.mark.e2e


def _root(c: CoordinatorProcess) -> x509.Certificate:
    with CoordinatorClient(c.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def _activate(
    c: CoordinatorProcess, bundle: Path, env: dict[str, str], service: str = "web"
) -> Activation:
    platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
    provider = simulated_evidence_provider(platform, measure_bundle(bundle))
    return activate(c.mesh_addr, service, provider, root=_root(c))


def _set_manifest(c: CoordinatorProcess, bundle: Path, **service: object) -> None:
    with CoordinatorClient(c.client_addr, root=_root(c)) as client:
        client.set_manifest(sample_manifest(measure_bundle(bundle).hex(), **service).encode())


def test_restart_keeps_root_manifest_secrets_and_counts(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str]
) -> None:
    first = start_coordinator()
    _set_manifest(first, bundle, max_activations=2)
    before = _activate(first, bundle, geode_env)
    status_before = first.status()
    assert first.stop() == 0

    second = start_coordinator(first.data_dir)
    status_after = second.status()
    assert status_after["state"] == "active"
    for field in ("root_fingerprint", "manifest_sha256", "activations"):
        assert status_after[field] == status_before[field]
    after = _activate(second, bundle, geode_env)
    assert after.env["API_TOKEN"] == before.env["API_TOKEN"]
    assert after.files["db.key"] == before.files["db.key"]
    assert after.root_ca == before.root_ca
    # The count survived the restart: a third activation exceeds max_activations=2.
    with pytest.raises(ActivationDenied, match="max_activations reached"):
        _activate(second, bundle, geode_env)


def test_flipped_byte_is_detected_and_state_kept(
    start_coordinator: StartCoordinator, bundle: Path
) -> None:
    first = start_coordinator()
    _set_manifest(first, bundle)
    first.stop()
    state = first.data_dir / "state.sealed"
    blob = bytearray(state.read_bytes())
    blob[len(blob) // 2 + 7] ^= 0x01
    state.write_bytes(bytes(blob))

    second = start_coordinator(first.data_dir)
    status = second.status()
    assert status["state"] == "recovery"
    assert "modified or is corrupt" in str(status["reason"])
    assert "RECOVERY" in second.log()
    for method, path, port in (
        ("POST", "/api/v1/mesh/nonce", second.mesh_port),
        ("GET", "/api/v1/manifest", second.client_port),
        ("GET", "/api/v1/certificates", second.client_port),
    ):
        answer = httpx.request(method, f"https://127.0.0.1:{port}{path}", verify=False)
        assert answer.status_code == 503
        assert answer.json()["error"] == "coordinator_unavailable"
    second.stop()
    assert state.read_bytes() == bytes(blob), "a Coordinator in recovery must not rewrite state"


def test_other_sealing_key_enters_recovery(
    start_coordinator: StartCoordinator, bundle: Path, tmp_path: Path
) -> None:
    first = start_coordinator()
    _set_manifest(first, bundle)
    first.stop()
    original = (first.data_dir / "state.sealed").read_bytes()
    other_key = tmp_path / "other-sealing.key"
    other_key.write_bytes(os.urandom(32))
    os.chmod(other_key, 0o600)
    second = start_coordinator(first.data_dir, "--sealing-key", str(other_key))
    status = second.status()
    assert status["state"] == "recovery"
    assert "sealing key does not open" in str(status["reason"])
    second.stop()
    assert (first.data_dir / "state.sealed").read_bytes() == original


def test_second_coordinator_on_same_directory_refuses(
    start_coordinator: StartCoordinator, coordinator: CoordinatorProcess
) -> None:
    with pytest.raises(RuntimeError, match="in use by another Coordinator"):
        start_coordinator(coordinator.data_dir)


def test_no_plaintext_secret_in_data_directory(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str]
) -> None:
    c = start_coordinator()
    _set_manifest(c, bundle)
    got = _activate(c, bundle, geode_env)
    c.stop()

    api_token = bytes.fromhex(got.env["API_TOKEN"].decode())
    db_key = got.files["db.key"]
    tls_key = serialization.load_pem_private_key(got.files["tls.key"], password=None)
    tls_der = tls_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    needles = {
        "api_token raw": api_token,
        "api_token hex": api_token.hex().encode(),
        "api_token b64": base64.b64encode(api_token),
        "db_key raw": db_key,
        "db_key b64": base64.b64encode(db_key),
        "tls key DER": tls_der,
        "tls key b64": base64.b64encode(tls_der)[:40],
        "any PEM private key": b"PRIVATE KEY",
        "manifest text": b"trust_domain",
    }
    files = [p for p in c.data_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{what} found in plaintext in {path.name}"


def test_sealing_key_inside_the_data_directory_is_refused(
    tmp_path: Path, geode_env: dict[str, str]
) -> None:
    from tests.support import geode_cli

    data = tmp_path / "data"
    result = geode_cli(
        "coordinator",
        "--simulation",
        "--data-dir",
        str(data),
        "--sealing-key",
        str(data / "sealing.key"),
        env=geode_env,
    )
    assert result.returncode == 1
    assert "must not live in the data directory" in result.stderr
    assert "Traceback" not in result.stderr
