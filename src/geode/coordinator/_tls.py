"""The Coordinator's TLS: its server certificate, and client certificates on the client API.

Both APIs present a certificate the root issues (self-signed while in recovery, when there is no
root key). The client API also asks every client for a certificate (optional: relying parties
call it without one) and trusts, as anchors, the root and each user certificate any manifest in
force named since the start. That is the handshake's gate only; who the caller is, is decided
per request by the exact certificate (``Governance.user_for``). A user removed by an update
still passes the handshake until the next start, and is refused there as no user (401).

Python's ``ssl`` has no verify callback: a certificate that chains to none of those anchors ends
the handshake. Those refusals are logged here, since no request ever reaches the application.

uvicorn does not hand the client certificate to the application, so ``PeerCertificateProtocol``
(the client API's ``HeadLimitedProtocol``, ``_limits``) adds it to each request's scope as the
ASGI TLS extension does (``client_cert_chain``). (The runtime's ``TLSExtensionProtocol`` does
more, for the mesh; the Coordinator may not import it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from geode.coordinator._coordinator import Coordinator
from geode.coordinator._holder import State
from geode.coordinator._limits import HeadLimitedProtocol
from geode.pki import (
    COORDINATOR_URI,
    CertificateAuthority,
    LeafParams,
    certificate_der,
    certificate_pem,
    fingerprint,
    generate_private_key,
    load_certificate,
    private_key_pem,
)
from geode.protocol import coordinator_server_context

__all__ = ["PeerCertificateProtocol", "ServerTLS"]

log = logging.getLogger("geode.coordinator.tls")


class _RefusalLoggingSSLObject(ssl.SSLObject):
    """Logs a client certificate the handshake refuses (the application never sees it)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            log.warning(
                "client API: TLS handshake refused a client certificate that is no user's (%s)",
                exc.verify_message,
            )
            raise


class PeerCertificateProtocol(HeadLimitedProtocol):
    """The Coordinator's httptools protocol, plus the verified client certificate in each
    scope."""

    _peer_tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self._peer_tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)]}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_tls is not None:
            self.scope["extensions"] = {"tls": self._peer_tls}  # type: ignore[dict-item]


@contextlib.contextmanager
def _temporary_key_file(key_pem_encrypted: bytes) -> Iterator[str]:
    shm = "/dev/shm"  # noqa: S108 - a tmpfs keeps the (encrypted) key off the disk
    base = shm if os.path.isdir(shm) else None
    fd, path = tempfile.mkstemp(prefix="geode-", suffix=".key", dir=base)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem_encrypted)
        yield path
    finally:
        os.unlink(path)


class ServerTLS:
    """The client and mesh API contexts, kept in step with the Coordinator's state."""

    def __init__(self, coordinator: Coordinator, dns_names: Sequence[str], ips: Sequence[str]):
        self._coordinator = coordinator
        self._dns_names = list(dns_names)
        self._ips = list(ips)
        self.client = coordinator_server_context(users=True)
        self.client.sslobject_class = _RefusalLoggingSSLObject
        self.mesh = coordinator_server_context(users=False)
        self._issuer: str | None = None  # fingerprint of the root the certificate is from
        self._trusted: set[bytes] = set()
        self.refresh()

    def refresh(self) -> None:
        """Load a certificate from the current root (after a recovery) and trust the users of
        the manifest in force. Runs on the serving loop, between handshakes."""
        coordinator = self._coordinator
        if coordinator.state is State.RECOVERY:
            if self._issuer is None:
                self._load_certificate(None)
                self._issuer = ""
            return
        root = coordinator.root_certificate
        if self._issuer != fingerprint(root):
            self._load_certificate(coordinator.root_authority)
            self._issuer = fingerprint(root)
        anchors = [root] + [
            load_certificate(pem) for pem in coordinator.governance.user_certificates()
        ]
        new = [cert for cert in anchors if certificate_der(cert) not in self._trusted]
        if new:
            self.client.load_verify_locations(cadata="".join(certificate_pem(c) for c in new))
            self._trusted |= {certificate_der(cert) for cert in new}

    def _load_certificate(self, authority: CertificateAuthority | None) -> None:
        """A fresh server certificate from ``authority`` (``None``: self-signed, for
        recovery). The key reaches OpenSSL through a file, encrypted under a one-time password
        that exists only in memory."""
        key = generate_private_key()
        chain: list[x509.Certificate] = []
        if authority is None:
            authority = CertificateAuthority.create_root("Geode Coordinator (recovery)")
            chain = [authority.certificate]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Geode Coordinator")])
        cert = authority.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name="Geode Coordinator",
                subject=subject,
                uris=[COORDINATOR_URI],
                dns_names=self._dns_names,
                ip_addresses=self._ips,
                lifetime=datetime.timedelta(days=365),
                client=False,
            )
        )
        password = os.urandom(32).hex().encode()
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as cert_file:
            cert_file.write(certificate_pem(cert) + "".join(certificate_pem(c) for c in chain))
            cert_file.flush()
            with _temporary_key_file(private_key_pem(key, password)) as key_path:
                for context in (self.client, self.mesh):
                    context.load_cert_chain(cert_file.name, key_path, password=password)
