"""The audit log of a real Coordinator: every governance change and start is in it, and
``geode audit verify`` names the first entry that was edited or removed on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient, verify_audit_log
from geode.pki import certificate_pem
from tests.conftest import StartCoordinator
from tests.support import geode_cli
from tests.support.governance import governance_manifest, make_user

pytestmark = pytest.mark.e2e


def test_editing_or_removing_an_entry_is_detected(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    alice = make_user(tmp_path / "users", "alice")
    auditor = make_user(tmp_path / "users", "auditor")
    manifest = governance_manifest(
        measure_bundle(bundle).hex(),
        {alice: ["writer"], auditor: []},
        {"writer": {"resource": "secrets", "names": ["note"], "actions": ["write"]}},
        secrets={"note": {"type": "plain"}},
    )
    first = start_coordinator()
    with CoordinatorClient(first.client_addr, insecure=True) as client:
        root = x509.load_pem_x509_certificate(client.certificates().root.encode())
        client.set_manifest(manifest)
    with alice.client(first.client_addr, root) as client:
        client.set_secret("note", b"one")
        client.set_secret("note", b"two")
    assert first.stop() == 0
    coordinator = start_coordinator(first.data_dir)

    (tmp_path / "root.pem").write_text(certificate_pem(root))
    verify = [
        "audit", "verify", "--coordinator", coordinator.client_addr,
        "--root-ca", str(tmp_path / "root.pem"),
        "--cert", str(auditor.cert), "--key", str(auditor.key),
    ]  # fmt: skip
    ok = geode_cli(*verify, "-v", env=geode_env)
    assert ok.returncode == 0, ok.stderr
    events = [line.split()[2] for line in ok.stdout.splitlines()[:-1]]
    assert events == [
        "coordinator.start", "manifest.set", "secret.write", "secret.write", "coordinator.start",
    ]  # fmt: skip
    assert "OK: 5 entries" in ok.stdout
    assert "one" not in ok.stdout

    log = coordinator.data_dir / "audit.log"
    original = log.read_text().splitlines(keepends=True)
    edited = json.loads(original[2])
    edited["user"] = "auditor"
    log.write_text("".join([*original[:2], json.dumps(edited) + "\n", *original[3:]]))
    broken = geode_cli(*verify, env=geode_env)
    assert broken.returncode == 1
    assert "BROKEN at entry 3: its signature does not verify" in broken.stderr

    log.write_text("".join(original[:1] + original[2:]))
    removed = geode_cli(*verify, env=geode_env)
    assert removed.returncode == 1
    assert "BROKEN at entry 2: missing" in removed.stderr

    # The last entry removed: the chain holds, but the Coordinator's head names one more.
    log.write_text("".join(original[:-1]))
    with auditor.client(coordinator.client_addr, root) as client:
        head = client.audit_log()
    report = verify_audit_log(head.entries, head.head, root)
    assert (report.broken_at, report.reason.split(":")[0]) == (5, "entry 5")
