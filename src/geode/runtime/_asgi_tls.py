"""The ASGI TLS extension for uvicorn: hands the verified peer certificate to the application.

uvicorn does not fill ``scope["extensions"]["tls"]``, so an ASGI app behind it cannot see who is
on the other end of a mutual-TLS connection. ``TLSExtensionProtocol`` is uvicorn's httptools
protocol with that one addition: at connection time it reads the TLS session (peer certificate,
version, cipher) once, and every request on the connection carries it, following the ASGI TLS
extension's field names. Python's ``ssl`` exposes only the peer's leaf certificate, so
``client_cert_chain`` holds that one certificate.

It also coalesces writes: uvicorn writes a response's head and body separately, which over TLS
is two records and two ``send`` calls, and the peer reads and decrypts both. What the app
writes within one turn of the event loop leaves as one write (up to ``_COALESCE_LIMIT``).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

from geode.pki import peer_spiffe_id

__all__ = [
    "CoalescingTransport",
    "TLSExtensionProtocol",
    "TLSExtensionWSProtocol",
    "peer_certificate",
    "tls_extension",
]

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_COALESCE_LIMIT = 64 * 1024  # more than this is written at once: flow control must see it


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension for one connection, or ``None`` for plaintext."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {
        # Geode's addition, derived once per connection rather than once per request.
        "geode_peer": peer_spiffe_id(der) if der else None,
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }


class CoalescingTransport:
    """A transport whose writes within one turn of the event loop reach the real one as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)
        self._size += len(data)
        if self._size > _COALESCE_LIMIT:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        self._parts, self._size = [], 0
        if not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class TLSExtensionProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus ``scope["extensions"]["tls"]`` on every request and
    coalesced writes."""

    _geode_tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._geode_tls = tls_extension(transport.get_extra_info("ssl_object"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._geode_tls is not None:
            self.scope["extensions"] = {"tls": self._geode_tls}  # type: ignore[dict-item]


class TLSExtensionWSProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol, plus ``scope["extensions"]["tls"]``: a WebSocket
    upgraded from a mutual-TLS connection names its verified peer too."""

    _geode_tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._geode_tls = tls_extension(transport.get_extra_info("ssl_object"))

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)  # builds the scope; the app runs in a task, later
        if self._geode_tls is not None:
            self.scope["extensions"]["tls"] = self._geode_tls  # type: ignore[assignment]


def peer_certificate(scope: Any) -> x509.Certificate | None:
    """The peer's leaf certificate from an ASGI scope, when the connection was mutual TLS."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_chain") or tls.get("client_cert_error") is not None:
        return None
    return x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
