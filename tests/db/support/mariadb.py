"""Helpers for the confidential-database tests: a deployment's CAs and certificates on disk,
TLS clients, checksums and a plaintext search of a data directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from geode.db import client_ssl_context
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)

DOMAIN = "db.geode.local"
DB_SPIFFE = f"spiffe://{DOMAIN}/service/db"
ROOT_ISSUER = "/O=Geode/CN=Geode Root CA"


def require_mariadb() -> None:
    """Skip without MariaDB, except in CI, where its absence is a failure."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    if shutil.which("mariadbd", path=search) or shutil.which("mysqld", path=search):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("mariadbd is not installed: .ci/run must install mariadb-server")
    pytest.skip("MariaDB is not installed (apt-get install mariadb-server)")


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


class DeploymentPKI:
    """A root CA and mesh CA like the Coordinator's, the database's mesh certificate, and
    client certificates as the manifest's certificate secrets (issued by the root)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.root = CertificateAuthority.create_root()
        self.mesh = self.root.create_intermediate("Geode Mesh CA")
        self.root_file = self._write("root.pem", certificate_pem(self.root.certificate))
        self.mesh_file = self._write("mesh.pem", certificate_pem(self.mesh.certificate))
        self.server = self.renew_server_certificate()

    def renew_server_certificate(self) -> ClientCert:
        """A new mesh certificate for the database (another instance id), as renewal writes it:
        each file replaced whole."""
        key = generate_private_key()
        leaf = self.mesh.issue(
            LeafParams(
                key.public_key(),
                str(uuid.uuid4()),
                spiffe_id=SpiffeId.parse(DB_SPIFFE),
                dns_names=["localhost"],
            )
        )
        chain = certificate_pem(leaf) + certificate_pem(self.mesh.certificate)
        for name, text in (("server.key", private_key_pem(key).decode()), ("server.pem", chain)):
            self._write(f"{name}.new", text).replace(self.dir / name)
        return ClientCert(self.dir / "server.pem", self.dir / "server.key")

    def _write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def _save(
        self, name: str, authority: CertificateAuthority, params: LeafParams, key: object
    ) -> ClientCert:
        cert = authority.issue(params)
        return ClientCert(
            self._write(f"{name}.pem", certificate_pem(cert)),
            self._write(f"{name}.key", private_key_pem(key).decode()),  # type: ignore[arg-type]
        )

    def secret_cert(
        self, common_name: str, *, authority: CertificateAuthority | None = None
    ) -> ClientCert:
        """A certificate secret with subject CN=``common_name``, from the root or ``authority``."""
        key = generate_private_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer = authority or self.root
        tag = "client-other-" if authority is not None else "client-"
        params = LeafParams(key.public_key(), common_name, subject=subject)
        return self._save(f"{tag}{common_name}", issuer, params, key)

    def mesh_cert(self, service: str) -> ClientCert:
        """A mesh instance certificate (CN = instance id, URI SAN = the service's SPIFFE id)."""
        key = generate_private_key()
        params = LeafParams(
            key.public_key(),
            str(uuid.uuid4()),
            spiffe_id=SpiffeId.parse(f"spiffe://{DOMAIN}/service/{service}"),
        )
        return self._save(f"mesh-{service}", self.mesh, params, key)

    def server_env(self, secrets_dir: Path) -> dict[str, str]:
        """What ``geode run`` would give the database service."""
        return {
            "GEODE_CERT_FILE": str(self.server.cert),
            "GEODE_KEY_FILE": str(self.server.key),
            "GEODE_CA_FILE": str(self.mesh_file),
            "GEODE_ROOT_CA_FILE": str(self.root_file),
            "GEODE_SPIFFE_ID": DB_SPIFFE,
            "GEODE_SECRETS_DIR": str(secrets_dir),
        }


def tls_connect(
    pki: DeploymentPKI, port: int, user: str, client: ClientCert, **kwargs: object
) -> pymysql.Connection:  # type: ignore[type-arg]
    """A TLS connection that checks the server is the database service of the mesh."""
    context = client_ssl_context(
        client.cert, client.key, ca_file=pki.mesh_file, servers=[DB_SPIFFE]
    )
    return pymysql.connect(
        host="127.0.0.1", port=port, user=user, ssl=context, connect_timeout=10, **kwargs
    )


def plain_connect(port: int, user: str, **kwargs: object) -> pymysql.Connection:  # type: ignore[type-arg]
    """A connection without TLS (PyMySQL would otherwise try TLS when the server offers it)."""
    return pymysql.connect(
        host="127.0.0.1", port=port, user=user, connect_timeout=10, ssl_disabled=True, **kwargs
    )


def error_code(exc: BaseException) -> int:
    """The MySQL error number of a PyMySQL error (0 if none)."""
    args = getattr(exc, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else 0


def checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def files_containing(directory: Path, needle: bytes) -> list[str]:
    """Every file under ``directory`` whose bytes contain ``needle``."""
    assert any(directory.rglob("*")), f"{directory} is empty"
    return [
        str(path.relative_to(directory))
        for path in sorted(directory.rglob("*"))
        if path.is_file() and needle in path.read_bytes()
    ]


def ssl_error_types() -> tuple[type[BaseException], ...]:
    return (pymysql.err.OperationalError, ssl.SSLError, ConnectionError)
