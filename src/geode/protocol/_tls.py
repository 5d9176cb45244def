"""Every ``SSLContext`` Geode makes, one function per role, all on one common policy.

- ``coordinator_server_context``: the Coordinator's APIs. The client API (``users=True``) asks
  for a user's certificate without requiring one; the mesh API asks for none. The caller loads
  a certificate from the current root.
- ``coordinator_client_context``: a client of the Coordinator (operators, relying parties,
  activating instances, a Coordinator forwarding to the writer). Trusts the deployment root
  only and checks the host name; presents a user's certificate if given.
- ``mesh_server_context``: a mesh server. Requires a client certificate from the mesh CA. The
  database server checks its files with it too: MariaDB, which does its own TLS, plays this
  role (clients must present a certificate the mesh CA or the root issued).
- ``mesh_client_context``: a mesh client. Verifies the server against the mesh CA and its
  SPIFFE id in the handshake (``MeshSSLContext``).
- ``public_server_context``: a server outside the mesh (a page for browsers, the admission
  webhook). Asks for no client certificate.
- ``public_client_context``: a client of such a page, as a browser trusting the root would be.
- ``etcd_client_context``: the Coordinator as a client of etcd, an outside service. Verifies
  against etcd's CA (else the system's) and the host name; presents a client certificate if
  given.

The common policy (``_context``): TLS 1.2 at least, no compression, no renegotiation, and one
cipher list, ``_CIPHERS``. Not verifying the peer is never a default and never what ``None``
means: a client of the Coordinator that verifies nothing asks for it with ``insecure=True``
(first contact, before the root is known; a Coordinator joining a cluster, where evidence
authenticates both ends).

Where this lives: ``geode.protocol`` sits above ``pki`` (whose SPIFFE ids and certificate helpers
these contexts check) and below everything that makes a context — the Coordinator, its clients,
the runtime, the database and the admission webhook — so every arrow to this module points
downwards. The proxy does not import it: it takes its contexts from the ``MeshCredentials`` it
is given (the runtime's ``Credentials``, which are built here) and reads a peer's identity with
``pki.peer_spiffe_id``, so ``protocol`` and ``proxy`` stay side by side, neither importing the
other. The runtime re-exports ``MeshSSLContext`` for apps.

``MeshSSLContext`` adds what Python's ``ssl`` lacks, a check of the peer's identity: it wraps
sockets (and the BIO objects asyncio uses) in classes whose handshake, once the chain has
verified, also requires the peer certificate's URI SAN to be one of the expected SPIFFE ids. A
client built on it (httpx, asyncio, plain sockets) never sends a byte to the wrong service.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import httpx
from cryptography import x509

from geode.errors import ClientError
from geode.pki import COORDINATOR_URI, SpiffeId, certificate_pem, peer_spiffe_id, uri_sans

__all__ = [
    "ClientIdentity",
    "MeshSSLContext",
    "check_certificate_and_key",
    "check_coordinator_peer",
    "coordinator_client_context",
    "coordinator_server_context",
    "etcd_client_context",
    "mesh_client_context",
    "mesh_server_context",
    "public_client_context",
    "public_server_context",
]

ClientIdentity = tuple[Path, Path]  # a certificate (chain) and its private key, PEM files
_File = str | os.PathLike[str]
_Context = TypeVar("_Context", bound=ssl.SSLContext)

# TLS 1.2 suites: forward-secret AEAD only (AES-GCM, ChaCha20-Poly1305), no CBC. TLS 1.3's
# suites are all AEAD and are not set here.
_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!aDSS"


def _context(protocol: int, kind: type[_Context]) -> _Context:
    """A context of ``kind`` under the common policy. ``PROTOCOL_TLS_CLIENT`` verifies the
    server and its host name until a role says otherwise."""
    context = kind(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(_CIPHERS)
    return context


# -- the Coordinator ---------------------------------------------------------------------------


def coordinator_server_context(*, users: bool) -> ssl.SSLContext:
    """A server context for one of the Coordinator's APIs, without its certificate: the caller
    loads one from the current root (it changes after a recovery) and, with ``users=True``
    (the client API), the anchors the users' certificates are checked against. The client API
    asks every client for a certificate without requiring one (relying parties have none), and
    a user's certificate is an anchor by itself, whoever issued it."""
    context = _context(ssl.PROTOCOL_TLS_SERVER, ssl.SSLContext)
    if users:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def coordinator_client_context(
    root: x509.Certificate | None,
    identity: ClientIdentity | None = None,
    *,
    insecure: bool = False,
) -> ssl.SSLContext:
    """TLS to a Coordinator: only ``root`` is trusted, and the host name is checked (that the
    peer is the Coordinator itself, not another holder of a certificate from the root, is
    ``check_coordinator_peer``). ``insecure=True`` (and no root) verifies nothing: first
    contact, before the root is known, and peers authenticated otherwise (by evidence). A
    missing root without it is a ``ClientError``. ``identity`` is a user's certificate and
    key, sent when the Coordinator asks."""
    if insecure and root is not None:
        raise ValueError("give a root to verify against, or insecure=True, not both")
    if root is None and not insecure:
        raise ClientError("no trusted root for the Coordinator (pass insecure=True to not verify)")
    context = _context(ssl.PROTOCOL_TLS_CLIENT, ssl.SSLContext)
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=certificate_pem(root))
    if identity is not None:
        cert_file, key_file = identity
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                f"cannot use the client certificate {cert_file} with key {key_file}: {exc}"
            ) from None
    return context


def check_coordinator_peer(response: httpx.Response) -> None:
    """Refuse a TLS peer that chains to the root but is not the Coordinator itself.

    The root also issues certificates that services and secret holders own; only the
    Coordinator's carries ``COORDINATOR_URI``.
    """
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    # The low-level _ssl socket httpcore hands out takes the flag positionally only.
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    if not der or COORDINATOR_URI not in uri_sans(x509.load_der_x509_certificate(der)):
        raise ClientError(
            "the server's certificate chains to the deployment root but is not the "
            "Coordinator's: refusing to talk to it"
        )


# -- the mesh ----------------------------------------------------------------------------------


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
    (``None``: any peer whose chain verifies). Made by ``mesh_client_context``."""

    sslsocket_class = _CheckedSSLSocket
    sslobject_class = _CheckedSSLObject
    expected_peers: frozenset[str] | None = None

    def expect_peers(self, peers: Iterable[str | SpiffeId] | None) -> None:
        self.expected_peers = None if peers is None else frozenset(str(p) for p in peers)


def _mesh(context: _Context, cert_file: _File, key_file: _File, ca_file: _File) -> _Context:
    context.verify_mode = ssl.CERT_REQUIRED
    # The mesh CA alone is the trust anchor: certificates the root issues for other uses
    # (certificate secrets) are no mesh identities, and a rotated mesh CA cuts off the old.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context


def mesh_server_context(cert_file: _File, key_file: _File, ca_file: _File) -> ssl.SSLContext:
    """Mutual TLS for a mesh server: presents ``cert_file`` and requires a client certificate
    that the mesh CA in ``ca_file`` issued. Who the client is, is the server's policy to decide
    from its SPIFFE id."""
    return _mesh(_context(ssl.PROTOCOL_TLS_SERVER, ssl.SSLContext), cert_file, key_file, ca_file)


def mesh_client_context(
    cert_file: _File,
    key_file: _File,
    ca_file: _File,
    *,
    peers: Iterable[str | SpiffeId] | None,
) -> MeshSSLContext:
    """Mutual TLS for a mesh client: presents ``cert_file``, verifies the server against the
    mesh CA in ``ca_file``, and accepts only a server whose SPIFFE id is one of ``peers``
    (``None``: any service of the mesh; the chain is verified all the same). Host names are not
    checked: in the mesh the SPIFFE id is the identity."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, MeshSSLContext)
    context.check_hostname = False
    _mesh(context, cert_file, key_file, ca_file)
    context.expect_peers(peers)
    return context


# -- outside the mesh --------------------------------------------------------------------------


def public_server_context(cert_file: _File, key_file: _File) -> ssl.SSLContext:
    """TLS for a server outside the mesh (a page for browsers, the admission webhook for the
    Kubernetes API server): presents ``cert_file``, asks for no client certificate."""
    context = _context(ssl.PROTOCOL_TLS_SERVER, ssl.SSLContext)
    context.load_cert_chain(cert_file, key_file)
    return context


def public_client_context(root: x509.Certificate) -> ssl.SSLContext:
    """TLS to a page a service serves outside the mesh, checked as a browser that trusts the
    deployment's ``root`` would: the chain to it, and the host name."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, ssl.SSLContext)
    context.load_verify_locations(cadata=certificate_pem(root))
    return context


def etcd_client_context(
    ca_file: _File | None, identity: ClientIdentity | None = None
) -> ssl.SSLContext:
    """TLS to etcd, a service outside the deployment: its server certificate is verified
    against ``ca_file`` (``None``: the system's trusted CAs; never no verification), host name
    included, and ``identity`` is the client certificate etcd may require."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, ssl.SSLContext)
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cafile=ca_file)
    if identity is not None:
        context.load_cert_chain(*identity)
    return context


def check_certificate_and_key(cert_file: _File, key_file: _File) -> None:
    """Raise ``ssl.SSLError`` (or ``OSError``) unless OpenSSL takes the pair: a renewal caught
    between replacing its two files must be caught before it reaches a live context."""
    _context(ssl.PROTOCOL_TLS_CLIENT, ssl.SSLContext).load_cert_chain(cert_file, key_file)
