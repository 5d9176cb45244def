"""Splicing for the transparent TLS proxy: TCP ingress and egress, byte for byte, with flow
control and an inactivity timeout; and the helpers the HTTP ingress shares."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from geode.manifest import EgressRoute, IngressRoute
from geode.pki import SpiffeId
from geode.runtime._identity import peer_spiffe_id

if TYPE_CHECKING:
    from geode.runtime._proxy import TransparentProxy

__all__ = [
    "APP_HOST",
    "Egress",
    "Relay",
    "Slot",
    "TcpIngress",
    "Watchdog",
    "close_flushed",
    "describe",
    "peer_of",
]

log = logging.getLogger("geode.proxy")

APP_HOST = "127.0.0.1"
_PEER_HEADER = b"x-geode-peer"


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


# --- Splicing: TCP ingress and egress ----------------------------------------------------------


class Relay(asyncio.Protocol):
    """One side of a spliced connection: what it reads, its partner's transport writes."""

    transport: asyncio.Transport
    partner: Relay | None = None
    eof_closes_tls = False  # see _pass_eof
    slot: Slot | None = None  # set by the listener that accepted the connection
    watchdog: Watchdog | None = None  # shared by both sides once splicing

    def __init__(self, proxy: TransparentProxy) -> None:
        self.proxy = proxy
        self._early: list[bytes] = []  # read before the partner was connected
        self._eof = False
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.proxy._track(self.transport)

    def splice_to(
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, Relay]]]
    ) -> None:
        """Connect the partner in the background; until then nothing more is read. From now on
        both sides close when no byte has moved either way for ``inactivity_timeout``."""
        self.transport.pause_reading()
        self.watchdog = Watchdog(self.proxy.limits.inactivity_timeout, self._inactive)
        self.proxy._spawn(self._splice(what, connect))

    def _inactive(self) -> None:
        log.info(
            "proxy: a spliced connection moved no byte for %g s: closed",
            self.proxy.limits.inactivity_timeout,
        )
        # Aborted, not closed: a peer that does not read would keep a flushing close open.
        self.transport.abort()
        if self.partner is not None:
            self.partner.transport.abort()

    async def _splice(
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, Relay]]]
    ) -> None:
        try:
            _, partner = await asyncio.wait_for(connect(), self.proxy.limits.connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s failed: %r", what, describe(exc))
            close_flushed(self.transport)
            return
        self.partner, partner.partner = partner, self
        if self._lost or self.watchdog is None:  # this side's watchdog has stopped
            partner.watchdog = Watchdog(self.proxy.limits.inactivity_timeout, partner._inactive)
        else:
            partner.watchdog = self.watchdog
        partner.transport.writelines(self._early)
        self._early.clear()
        if self._lost:
            close_flushed(partner.transport)
        elif self._eof:
            self._pass_eof()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.watchdog is not None:
            self.watchdog.touch()
        partner = self.partner
        if partner is None:
            self._early.append(data)
            return
        partner.transport.write(data)
        if partner._linger is not None:
            partner._linger_on()

    def eof_received(self) -> bool:
        self._eof = True
        if not self.transport.can_write_eof():
            # asyncio's TLS closes this side now, so nothing more can reach it.
            if self.partner is not None:
                close_flushed(self.partner.transport)
            return False
        if self.partner is not None:
            self._pass_eof()
        return True  # still writing what the partner sends

    def _pass_eof(self) -> None:
        partner = self.partner
        assert partner is not None
        if partner._eof:
            close_flushed(partner.transport)
            close_flushed(self.transport)
        elif partner.transport.can_write_eof():
            partner.transport.write_eof()
        elif self.eof_closes_tls:
            # TLS (in asyncio) cannot carry a half-close. An app behind ingress that ends its
            # side has answered (an HTTP/1.0 response, a finished exchange): close the TLS
            # side now, once what was written to it has been sent.
            close_flushed(partner.transport)
        else:
            # An app using egress that ends its side usually still awaits the answer: the
            # partner keeps sending as long as it has something to say; once quiet for
            # half_close_timeout, both sides close.
            self._linger_on()

    def _linger_on(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self._linger = asyncio.get_running_loop().call_later(
            self.proxy.limits.half_close_timeout, self._linger_over
        )

    def _linger_over(self) -> None:
        close_flushed(self.transport)
        if self.partner is not None:
            close_flushed(self.partner.transport)

    def pause_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.watchdog is not None:
            self.watchdog.touch()
        if self.partner is not None:
            self.partner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.proxy._untrack(self.transport)
        if self.slot is not None:
            self.slot.release()
        if self._linger is not None:
            self._linger.cancel()
        partner = self.partner
        if self.watchdog is not None and (partner is None or partner._lost):
            # Both sides are gone (or the partner, still connecting, gets a watchdog of its
            # own): nothing is left to watch.
            self.watchdog.cancel()
        if partner is not None:
            close_flushed(partner.transport)


class _AppSide(Relay):
    """The connection to the app behind a TCP ingress."""

    eof_closes_tls = True


class TcpIngress(Relay):
    def __init__(self, proxy: TransparentProxy, route: IngressRoute) -> None:
        super().__init__(proxy)
        self.route = route

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.proxy.engine.authorize_tcp(peer_of(transport), self.route.port):
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        factory = functools.partial(_AppSide, self.proxy)
        self.splice_to(
            f"ingress port {self.route.port}: connecting to the app on "
            f"{APP_HOST}:{self.route.app_port}",
            lambda: loop.create_connection(factory, APP_HOST, self.route.app_port),
        )


class Egress(Relay):
    def __init__(
        self, proxy: TransparentProxy, route: EgressRoute, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(proxy)
        self.route = route
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.context is None:  # logged once, at start
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        route, context = self.route, self.context
        factory = functools.partial(Relay, self.proxy)
        self.splice_to(
            f"egress to {route.host}:{route.port}",
            lambda: loop.create_connection(
                factory,
                route.host,
                route.port,
                ssl=context,
                server_hostname=route.host,
                ssl_handshake_timeout=self.proxy.limits.connect_timeout,
            ),
        )
