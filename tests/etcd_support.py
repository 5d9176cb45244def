"""A real etcd (Debian ``etcd-server``) for the tests, on free loopback ports in a temp dir."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.testing import EtcdProcess, find_etcd

__all__ = ["EtcdServer", "EtcdTLS", "etcd_binary"]


def etcd_binary() -> str:
    """The etcd program; fails under CI=true when it is missing (``make test`` installs it),
    skips otherwise."""
    found = find_etcd()
    if found is None:
        message = "etcd is not installed (apt-get install etcd-server; `make test` does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass(frozen=True)
class EtcdTLS:
    """A CA, etcd's server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> EtcdTLS:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test etcd CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths = {"ca": directory / "ca.pem"}
        paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        # etcd's JSON gateway calls etcd's gRPC side with the server certificate, so that one is
        # a client certificate too (as etcd's own deployment guides issue it).
        for role, usages in (
            ("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                    ),
                    critical=False,
                )
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            paths[f"{role}_cert"] = directory / f"{role}.pem"
            paths[f"{role}_key"] = directory / f"{role}.key"
            paths[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            paths[f"{role}_key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            paths[f"{role}_key"].chmod(0o600)
        return cls(**paths)


class EtcdServer(EtcdProcess):
    """``geode.testing.EtcdProcess`` for the tests: found or failed/skipped as the environment
    says, optionally with TLS and client certificate authentication."""

    def __init__(self, directory: Path, tls: EtcdTLS | None = None) -> None:
        tls_args: list[str] = []
        verify: ssl.SSLContext | bool = False
        if tls is not None:
            tls_args = [
                "--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key),
                "--trusted-ca-file", str(tls.ca), "--client-cert-auth",
            ]  # fmt: skip
            verify = ssl.create_default_context(cafile=str(tls.ca))
            verify.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        super().__init__(directory, etcd_binary(), name="test", tls_args=tls_args, verify=verify)
        self.tls = tls
