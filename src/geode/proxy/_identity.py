"""Peer identities in the TLS handshake: the SPIFFE id, checked before any byte is sent.

Python's ``ssl`` verifies the chain but has no hook for the peer's identity. ``MeshSSLContext``
wraps sockets (and the BIO objects asyncio uses) in classes whose handshake, once the chain has
verified, also requires the peer certificate's URI SAN to be one of the expected SPIFFE ids. A
client built on it (httpx, asyncio, plain sockets) never talks to the wrong service.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from cryptography import x509

from geode.errors import PKIError
from geode.pki import SpiffeId, uri_sans

__all__ = ["MeshSSLContext", "peer_spiffe_id"]


def peer_spiffe_id(cert: x509.Certificate | bytes | None) -> SpiffeId | None:
    """The SPIFFE id of a certificate (DER or parsed), or ``None`` if it has none or several."""
    if cert is None:
        return None
    if isinstance(cert, bytes):
        try:
            cert = x509.load_der_x509_certificate(cert)
        except ValueError:
            return None
    ids = [uri for uri in uri_sans(cert) if uri.startswith("spiffe://")]
    if len(ids) != 1:
        return None
    try:
        return SpiffeId.parse(ids[0])
    except PKIError:  # a malformed id is no id
        return None


def _check_peer(context: ssl.SSLContext, der: bytes | None) -> None:
    expected = getattr(context, "expected_peers", None)
    if expected is None:
        return
    peer = peer_spiffe_id(der)
    if peer is None or str(peer) not in expected:
        raise ssl.SSLCertVerificationError(
            f"peer identity {peer} is not one of {', '.join(sorted(expected)) or '(none)'}"
        )


class _CheckedSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _check_peer(self.context, self.getpeercert(True))
        except ssl.SSLCertVerificationError:
            self.close()
            raise


class _CheckedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_peer(self.context, self.getpeercert(True))


class MeshSSLContext(ssl.SSLContext):
    """An ``SSLContext`` that also requires the peer's SPIFFE id to be in ``expected_peers``
    (``None``: any peer whose chain verifies)."""

    sslsocket_class = _CheckedSSLSocket
    sslobject_class = _CheckedSSLObject
    expected_peers: frozenset[str] | None = None

    def expect_peers(self, peers: Iterable[str | SpiffeId] | None) -> None:
        self.expected_peers = None if peers is None else frozenset(str(p) for p in peers)
