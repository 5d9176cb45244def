"""What stops the thief is the policy, not a broken thief: with a permissive policy, or with a
manifest update by the deployment's operator that allows it, it steals."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.db.support.mariadb import require_mariadb
from tests.support.bookstore import EXAMPLE, GeodeUp, deployment_copy

pytestmark = pytest.mark.e2e


def self_signed_user(cert_file: Path, key_file: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the operator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)


OFFSET = 700  # apart from test_bookstore's 500 and the relays


def test_a_permissive_policy_lets_the_thief_steal(tmp_path: Path) -> None:
    require_mariadb()
    deployment = deployment_copy(tmp_path / "deployment", port_offset=OFFSET)
    up = GeodeUp(deployment, tmp_path / "run", "--permissive", port_offset=OFFSET)
    try:
        up.wait_until("every service started", lambda: "Ctrl-C stops everything" in up.output())
        up.wait_until("the thief steals", lambda: up.raw("bookthief")["stolen"] > 0)
        assert "PERMISSIVE" in up.output()
    finally:
        code = up.stop()
    assert code == 0, up.output()
    assert up.left_behind() == []


def test_the_operator_lets_the_thief_in_with_a_manifest_update(tmp_path: Path) -> None:
    """The governed way: a manifest update by the deployment's operator adds a rule for the
    thief; geode up restarts the services under the new manifest, and the thief buys."""
    require_mariadb()
    deployment = deployment_copy(tmp_path / "deployment", port_offset=OFFSET)
    up = GeodeUp(deployment, tmp_path / "run", port_offset=OFFSET)
    try:
        up.wait_until("every service started", lambda: "Ctrl-C stops everything" in up.output())
        up.wait_until("the thief is refused", lambda: up.raw("bookthief")["refused"] > 0)
        assert up.raw("bookthief")["stolen"] == 0
        allow = [sys.executable, str(EXAMPLE / "allow_thief.py"), "--run-dir", str(up.run_dir),
                 "--coordinator", f"127.0.0.1:{14100 + OFFSET}"]  # fmt: skip
        done = subprocess.run(allow, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "manifest update applied" in done.stdout
        up.wait_until("the services restart", lambda: "Services restarted." in up.output())
        up.wait_until("the thief steals", lambda: up.raw("bookthief")["stolen"] > 0)
        # Only the rule's route: restocking the warehouse directly is still refused.
        assert "/restock-books" in up.raw("bookthief")["last"]["refusal"]
        # Without the operator's key, no update: another client certificate is refused.
        nobody = tmp_path / "nobody"
        nobody.mkdir()
        shutil.copy(up.root_file, nobody / "root.pem")
        self_signed_user(nobody / "operator.crt", nobody / "operator.key")
        stranger = subprocess.run(
            [*allow[:2], "--run-dir", str(nobody), *allow[4:]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert stranger.returncode != 0
        assert "no user's of this deployment" in stranger.stderr
        assert "Traceback" not in stranger.stderr
    finally:
        code = up.stop()
    assert code == 0, up.output()
    assert up.left_behind() == []
