"""Recovery against real Coordinators: the data directory copied to a Coordinator with another
sealing key comes up in recovery; one share of three is not enough; two bring it back with the
same root, manifest and secrets, sealed under its own key from then on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient, prepare_share_upload, verify_audit_log
from geode.errors import ClientError
from geode.pki import fingerprint
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess, geode_cli
from tests.support.governance import governance_manifest, make_party, make_user

pytestmark = pytest.mark.e2e


def _root(c: CoordinatorProcess) -> x509.Certificate:
    with CoordinatorClient(c.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def test_two_of_three_parties_recover_a_copied_state(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    parties = [make_party(tmp_path / "parties", f"p{i}", i) for i in (1, 2, 3)]
    alice = make_user(tmp_path / "users", "alice")
    manifest = governance_manifest(
        measure_bundle(bundle).hex(),
        {alice: ["reader", "writer"]},
        {
            "reader": {"resource": "secrets", "names": ["token", "note"], "actions": ["read"]},
            "writer": {"resource": "secrets", "names": ["note"], "actions": ["write"]},
        },
        secrets={
            "token": {"type": "symmetric-key", "shared": True},
            "note": {"type": "plain"},
        },
        recovery=(parties, 2),
    )
    first = start_coordinator()
    root = _root(first)
    with CoordinatorClient(first.client_addr, root=root) as anonymous:
        result = anonymous.set_manifest(manifest)
    assert sorted(result.recovery_shares or {}) == ["p1", "p2", "p3"]
    with alice.client(first.client_addr, root) as client:
        client.set_secret("note", b"kept across hosts")
        token = client.get_secret("token")
    status = first.status()
    assert first.stop() == 0

    copy = tmp_path / "copied"
    shutil.copytree(first.data_dir, copy)
    second = start_coordinator(copy, "--sealing-key", str(tmp_path / "other" / "sealing.key"))
    recovering = second.status()
    assert recovering["state"] == "recovery"
    assert recovering["recovery"] == {"threshold": 2, "parties": ["p1", "p2", "p3"], "received": []}

    def recover(key: Path) -> str:
        done = geode_cli(
            "recover", "--key", str(key), "--coordinator", second.client_addr,
            "--measurement", str(recovering["measurement"]), env=geode_env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "1 of 2 (p1)" in recover(parties[0].key)
    assert second.status()["state"] == "recovery"  # one share is not enough
    # A key that is no party's gets nothing to send.
    with CoordinatorClient(second.client_addr, insecure=True) as client:
        offer = client.recovery_offer(bytes(32))
    stranger = make_party(tmp_path / "parties", "stranger", 4)
    key = serialization.load_pem_private_key(stranger.key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    with pytest.raises(ClientError, match="not one of the state's recovery keys"):
        prepare_share_upload(offer, key, key.public_key())
    assert "the Coordinator recovered (p1, p3)" in recover(parties[2].key)

    recovered = second.status()
    assert recovered["state"] == "active"
    for field in ("root_fingerprint", "manifest_sha256"):
        assert recovered[field] == status[field]
    assert recovered["root_fingerprint"] == fingerprint(root)
    # The same secrets, over TLS that chains to the same root (no restart needed).
    with alice.client(second.client_addr, root) as client:
        assert client.get_secret("token") == token
        assert client.get_secret("note") == b"kept across hosts"
        log = client.audit_log()
    report = verify_audit_log(log.entries, log.head, root)
    assert report.ok, report.reason
    assert report.entries[-1].event == "coordinator.recovered"
    assert report.entries[-1].details == {"parties": ["p1", "p3"]}

    # From now on the state opens with this Coordinator's own sealing key.
    assert second.stop() == 0
    again = start_coordinator(copy, "--sealing-key", str(tmp_path / "other" / "sealing.key"))
    assert again.status()["state"] == "active"
