"""Users, recovery parties and manifests for the governance tests."""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from geode.client import CoordinatorClient
from geode.pki import certificate_pem, private_key_pem


@dataclass(frozen=True)
class User:
    """A user's self-signed client certificate and key, as files and the manifest's PEM."""

    name: str
    cert: Path
    key: Path
    pem: str

    @property
    def identity(self) -> tuple[Path, Path]:
        return self.cert, self.key

    def client(self, address: str, root: x509.Certificate) -> CoordinatorClient:
        return CoordinatorClient(address, root=root, identity=self.identity)


def make_user(directory: Path, name: str) -> User:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = certificate_pem(cert)
    (directory / f"{name}.crt").write_text(pem)
    (directory / f"{name}.key").write_bytes(private_key_pem(key))
    (directory / f"{name}.key").chmod(0o600)
    return User(name, directory / f"{name}.crt", directory / f"{name}.key", pem)


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class Party:
    """A recovery party: its RSA key file, and the public key the manifest names."""

    name: str
    key: Path
    public_pem: str


def make_party(directory: Path, name: str, index: int) -> Party:
    """Recovery keys are cached per index across tests: RSA key generation is slow."""
    key = _rsa_key(index)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-recovery.pem"
    path.write_bytes(private_key_pem(key))
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Party(name, path, public.decode())


def governance_manifest(
    measurement: str,
    users: dict[User, list[str]],
    roles: dict[str, dict[str, Any]],
    *,
    secrets: dict[str, dict[str, Any]] | None = None,
    services: dict[str, dict[str, Any]] | None = None,
    recovery: tuple[list[Party], int] | None = None,
    update_threshold: int | None = None,
    trust_domain: str = "gov.geode.local",
) -> bytes:
    manifest: dict[str, Any] = {
        "version": 1,
        "trust_domain": trust_domain,
        "packages": {"app": {"tee": "simulated", "measurement": measurement}},
        "services": services or {"web": {"package": "app"}},
        "secrets": secrets or {},
        "users": {u.name: {"certificate": u.pem, "roles": r} for u, r in users.items()},
        "roles": roles,
    }
    if recovery is not None:
        parties, threshold = recovery
        manifest["recovery"] = {
            "keys": {p.name: p.public_pem for p in parties},
            "threshold": threshold,
        }
    if update_threshold is not None:
        manifest["updates"] = {"threshold": update_threshold}
    return json.dumps(manifest, indent=2).encode()
