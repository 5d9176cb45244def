"""What every proxied connection shares: the limits it runs under, the interface through which
it talks to the proxy that owns it, its place in its listener's count, its inactivity watchdog,
and a few helpers.

Connections know their proxy only as a ``ConnectionOwner``: they never reach into the proxy
itself, and the modules that define connections import nothing that defines the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from geode.pki import SpiffeId, peer_spiffe_id

__all__ = [
    "APP_HOST",
    "ConnectionOwner",
    "ProxyLimits",
    "Slot",
    "Watchdog",
    "close_flushed",
    "describe",
    "log",
    "peer_of",
]

log = logging.getLogger("geode.proxy")

APP_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ProxyLimits:
    """Timeouts (seconds) and sizes that keep one client from holding the proxy."""

    header_timeout: float = 10.0  # a request head must arrive within this, else 408
    idle_timeout: float = 60.0  # a keep-alive connection without a request is closed
    max_header_bytes: int = 64 * 1024  # a larger request head gets 431
    connect_timeout: float = 5.0  # to the app, or to an egress destination with its handshake
    half_close_timeout: float = 30.0  # after an egress app's EOF, how long the answer may take
    handshake_timeout: float = 10.0  # an ingress client's TLS handshake
    # Forwarding a request, tunnelling or splicing: both sides close when no byte has moved
    # either way for this long (an HTTP request not answered at all yet gets 408).
    inactivity_timeout: float = 120.0
    max_connections: int = 1024  # per listener, handshakes included; more are closed at once


class ConnectionOwner(Protocol):
    """What a connection may ask of the proxy that owns it: its limits, to be registered while
    its transport is open (so that closing the proxy drops it), and to run a task that the
    proxy cancels when it closes."""

    @property
    def limits(self) -> ProxyLimits: ...

    def track(self, transport: asyncio.Transport) -> None:
        """Register an open transport: it is aborted if the proxy closes first."""

    def forget(self, transport: asyncio.Transport) -> None:
        """The transport is lost: forget it."""

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` as a task of the proxy's (logged if it fails, cancelled on close)."""


def describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and len(exc.args) == 1:
        return str(exc.args[0])  # our own identity check: str() would show a tuple
    return str(exc) or type(exc).__name__


def close_flushed(transport: asyncio.Transport) -> None:
    """Close after flushing. Reading is resumed first: asyncio's TLS transport, when EOF came
    while it was paused, finishes closing only once it may read again."""
    transport.resume_reading()
    transport.close()


def peer_of(transport: asyncio.BaseTransport) -> SpiffeId | None:
    ssl_object = transport.get_extra_info("ssl_object")
    return peer_spiffe_id(ssl_object.getpeercert(True) if ssl_object is not None else None)


class Slot:
    """A connection's place in its listener's count (``ProxyLimits.max_connections``), given
    back exactly once: when the connection is lost, or when its handshake fails."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class Watchdog:
    """Calls ``expire`` once nothing has moved for ``timeout`` seconds.

    ``touch()`` (on every read and every drained write buffer) only notes the time; the timer
    re-arms itself for the rest of the period when it fires early, so busy connections cost one
    timer per period rather than one per read."""

    def __init__(self, timeout: float, expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._expire = expire
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self.last + timeout, self._check
        )

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        deadline = self.last + self._timeout
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self._handle = None
        self._expire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
