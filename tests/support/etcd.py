"""A real etcd (Debian ``etcd-server``) for the tests, on free loopback ports in a temp dir."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.coordinator import Sealer, load_or_create_sealing_key
from geode.testing import EtcdProcess, find_etcd

__all__ = ["EtcdServer", "EtcdTLS", "etcd_binary", "state_in_etcd", "value_in_etcd"]


def own_sealing_key(tmp_path: Path, name: str) -> tuple[str, str]:
    """``geode coordinator`` arguments giving Coordinator ``name`` a sealing key of its own."""
    return "--sealing-key", str(tmp_path / "keys" / f"{name}.key")


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


def value_in_etcd(endpoints: Sequence[str], key: str) -> bytes | None:
    """The value of ``key`` in etcd, read over the JSON gateway of the first of ``endpoints``
    that answers (``None``: no such key)."""
    failures = []
    for endpoint in endpoints:
        try:
            answer = httpx.post(
                f"http://{endpoint}/v3/kv/range",
                json={"key": base64.b64encode(key.encode()).decode()},
                timeout=10,
            )
        except httpx.TransportError as exc:
            failures.append(f"{endpoint}: {exc!r}")
            continue
        if answer.status_code != 200:  # e.g. a member that sees no leader
            failures.append(f"{endpoint}: HTTP {answer.status_code}: {answer.text}")
            continue
        kvs = answer.json().get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None
    raise AssertionError(f"no etcd member answered: {failures}")


def state_in_etcd(
    endpoints: Sequence[str], sealing_key: Path, cluster_key: bytes | None = None
) -> dict[str, Any]:
    """The Coordinators' shared state as etcd holds it (``/geode/state``), unsealed with the key
    file ``sealing_key`` or else ``cluster_key``: the JSON document of ``CoordinatorState``."""
    blob = value_in_etcd(endpoints, "/geode/state")
    assert blob is not None, "no state in etcd"
    _, raw = Sealer.unseal(blob, load_or_create_sealing_key(sealing_key), cluster_key)
    state: dict[str, Any] = json.loads(raw)
    return state


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
