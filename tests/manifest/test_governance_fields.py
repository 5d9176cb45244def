"""The manifest's governance sections: users, roles, recovery and the update threshold."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.errors import ManifestError
from geode.manifest import load_manifest
from geode.pki import certificate_pem
from tests.support.governance import make_party, make_user

ROLES = {
    "admin": {"resource": "manifest", "actions": ["update"]},
    "reader": {"resource": "secrets", "names": ["note"], "actions": ["read"]},
    "packager": {"resource": "packages", "names": ["app"], "actions": ["update"]},
}


def _manifest(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    users = {
        name: {"certificate": make_user(tmp_path, name).pem, "roles": roles}
        for name, roles in (("alice", ["admin", "reader"]), ("bob", ["admin"]), ("carol", []))
    }
    return {
        "version": 1,
        "trust_domain": "m.local",
        "packages": {"app": {"tee": "simulated", "measurement": "ab" * 32}},
        "secrets": {"note": {"type": "plain"}},
        "users": users,
        "roles": ROLES,
        **changes,
    }


def _load(data: dict[str, Any]) -> Any:
    return load_manifest(json.dumps(data).encode()).manifest


def test_roles_grant_what_they_name(tmp_path: Path) -> None:
    m = _load(_manifest(tmp_path))
    assert m.grants("alice", "secrets", "read", "note")
    assert not m.grants("alice", "secrets", "write", "note")
    assert not m.grants("bob", "secrets", "read", "note")
    assert m.grants("bob", "manifest", "update")
    assert not m.grants("carol", "manifest", "update")
    assert not m.grants("mallory", "manifest", "update")
    assert not m.grants("alice", "packages", "update", "app")
    assert m.manifest_updaters == ["alice", "bob"]
    assert m.update_threshold == 2  # default: every user who may update the manifest


def test_the_update_threshold_is_bounded_by_the_updaters(tmp_path: Path) -> None:
    assert _load(_manifest(tmp_path, updates={"threshold": 1})).update_threshold == 1
    with pytest.raises(ManifestError, match="threshold 3 exceeds the 2 users") as refused:
        _load(_manifest(tmp_path, updates={"threshold": 3}))
    assert refused.value.path == "updates.threshold"
    with pytest.raises(ManifestError) as zero:
        _load(_manifest(tmp_path, updates={"threshold": 0}))
    assert zero.value.path == "updates.threshold"


def test_two_users_cannot_share_a_certificate(tmp_path: Path) -> None:
    data = _manifest(tmp_path)
    data["users"]["bob"]["certificate"] = data["users"]["alice"]["certificate"]
    with pytest.raises(ManifestError, match="the same certificate as user 'alice'") as refused:
        _load(data)
    assert refused.value.path == "users.bob.certificate"


def test_a_user_certificate_must_allow_client_authentication(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server only")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    data = _manifest(tmp_path)
    data["users"]["carol"]["certificate"] = certificate_pem(cert)
    with pytest.raises(ManifestError, match="TLS client authentication") as refused:
        _load(data)
    assert refused.value.path == "users.carol.certificate"


def test_recovery_needs_keys(tmp_path: Path) -> None:
    party = make_party(tmp_path, "p1", 1)
    recovery = _load(_manifest(tmp_path, recovery={"keys": {"p1": party.public_pem}})).recovery
    assert recovery is not None
    assert recovery.threshold == 1
    with pytest.raises(ManifestError) as refused:
        _load(_manifest(tmp_path, recovery={"keys": {}, "threshold": 1}))
    assert refused.value.path == "recovery.keys"
