"""Splicing for the transparent TLS proxy: TCP ingress and egress, byte for byte, with flow
control and an inactivity timeout."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from geode.manifest import EgressRoute, IngressRoute
from geode.proxy._connection import (
    APP_HOST,
    ConnectionOwner,
    Slot,
    Watchdog,
    close_flushed,
    describe,
    log,
    peer_of,
)
from geode.proxy._policy import PolicyEngine

__all__ = ["Egress", "Relay", "TcpIngress"]


class Relay(asyncio.Protocol):
    """One side of a spliced connection: what it reads, its partner's transport writes."""

    transport: asyncio.Transport
    partner: Relay | None = None
    eof_closes_tls = False  # see _pass_eof
    slot: Slot | None = None  # set by the listener that accepted the connection
    watchdog: Watchdog | None = None  # shared by both sides once splicing

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self._early: list[bytes] = []  # read before the partner was connected
        self._eof = False
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.track(self.transport)

    def splice_to(
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, Relay]]]
    ) -> None:
        """Connect the partner in the background; until then nothing more is read. From now on
        both sides close when no byte has moved either way for ``inactivity_timeout``."""
        self.transport.pause_reading()
        self.watchdog = Watchdog(self.owner.limits.inactivity_timeout, self._inactive)
        self.owner.spawn(self._splice(what, connect))

    def _inactive(self) -> None:
        log.info(
            "proxy: a spliced connection moved no byte for %g s: closed",
            self.owner.limits.inactivity_timeout,
        )
        # Aborted, not closed: a peer that does not read would keep a flushing close open.
        self.transport.abort()
        if self.partner is not None:
            self.partner.transport.abort()

    async def _splice(
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, Relay]]]
    ) -> None:
        try:
            _, partner = await asyncio.wait_for(connect(), self.owner.limits.connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s failed: %r", what, describe(exc))
            close_flushed(self.transport)
            return
        self.partner, partner.partner = partner, self
        if self._lost or self.watchdog is None:  # this side's watchdog has stopped
            partner.watchdog = Watchdog(self.owner.limits.inactivity_timeout, partner._inactive)
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
            self.owner.limits.half_close_timeout, self._linger_over
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
        self.owner.forget(self.transport)
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
    """One client connection of a ``tcp`` ingress: one policy decision, then spliced."""

    def __init__(self, owner: ConnectionOwner, route: IngressRoute, engine: PolicyEngine) -> None:
        super().__init__(owner)
        self.route = route
        self.engine = engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.engine.authorize_tcp(peer_of(transport), self.route.port):
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        factory = functools.partial(_AppSide, self.owner)
        self.splice_to(
            f"ingress port {self.route.port}: connecting to the app on "
            f"{APP_HOST}:{self.route.app_port}",
            lambda: loop.create_connection(factory, APP_HOST, self.route.app_port),
        )


class Egress(Relay):
    """One connection of the app to an egress listener, spliced to the destination over mutual
    TLS (closed at once when no service serves the destination: ``context`` is ``None``)."""

    def __init__(
        self, owner: ConnectionOwner, route: EgressRoute, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(owner)
        self.route = route
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.context is None:  # logged once, at start
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        route, context = self.route, self.context
        factory = functools.partial(Relay, self.owner)
        self.splice_to(
            f"egress to {route.host}:{route.port}",
            lambda: loop.create_connection(
                factory,
                route.host,
                route.port,
                ssl=context,
                server_hostname=route.host,
                ssl_handshake_timeout=self.owner.limits.connect_timeout,
            ),
        )
