"""The accept path of the Coordinator's two APIs: each accepts its own connections (so that
it can count them, TLS handshakes included, and bound a handshake below asyncio's 60 s) and
hands them to ``HeadLimitedProtocol`` (``_limits``, which holds the limits themselves).

``LimitedServer`` is a uvicorn server whose listening is ``ApiListener``'s instead of
``loop.create_server``'s, relying on uvicorn's ``Server.startup`` (hence the narrow uvicorn
range in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

import uvicorn

from geode._sockets import listening_sockets
from geode.coordinator._limits import ApiGate, HeadLimitedProtocol, peer_name

__all__ = ["ApiListener", "LimitedServer"]

log = logging.getLogger("geode.coordinator.limits")

TLS_CLOSE_TIMEOUT = 5.0  # seconds a TLS close waits for the peer's close_notify
_ACCEPT_RETRY = 0.25  # seconds before accepting again when out of descriptors or memory
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ApiListener:
    """The listening sockets of one API, accepting connections itself to count them (each
    holds a place from accept until it is lost, or its handshake fails) and to bound the
    handshake by the head timeout. Closed like an ``asyncio.Server`` (by uvicorn)."""

    def __init__(
        self,
        gate: ApiGate,
        sockets: list[socket.socket],
        factory: Callable[[Callable[[], None], float], HeadLimitedProtocol],
        context: ssl.SSLContext,
    ) -> None:
        self.gate = gate
        self.sockets = sockets
        self.factory = factory
        self.context = context
        self._accepting: list[asyncio.Task[None]] = []
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    def close(self) -> None:
        """Stop accepting and drop the connections still in their handshake (uvicorn shuts
        down the others)."""
        for task in (*self._accepting, *self._connecting):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._connecting, return_exceptions=True)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        gate = self.gate
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    gate.warn(f"cannot accept connections: {exc.strerror}; retrying", "unknown")
                    await asyncio.sleep(_ACCEPT_RETRY)
                continue  # else that one connection is gone already (ECONNABORTED and the like)
            except Exception as exc:  # not expected; the API must go on accepting all the same
                gate.warn(f"accept failed: {exc!r}; retrying", "unknown")
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            release = gate.admit()
            if release is None:
                conn.close()
                gate.warn(
                    f"{gate.max_connections} connections open: closing new ones ({gate.flag})",
                    peer_name(address),
                )
                continue
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already
                conn.close()
                release()
                continue
            deadline = loop.time() + gate.limits.head_timeout
            task = loop.create_task(self._connect(conn, peer_name(address), release, deadline))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(
        self, conn: socket.socket, peer: str, release: Callable[[], None], deadline: float
    ) -> None:
        made: list[HeadLimitedProtocol] = []

        def factory() -> HeadLimitedProtocol:
            protocol = self.factory(release, deadline)
            made.append(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.gate.limits.head_timeout,
                ssl_shutdown_timeout=TLS_CLOSE_TIMEOUT,
            )
        except BaseException as exc:
            release()
            if not made:  # else its transport owns the socket, and has closed it
                conn.close()
            if not isinstance(exc, Exception):
                raise
            # A late handshake is aborted without an exception type of its own: the clock says.
            if loop.time() >= deadline - 0.01:
                self.gate.warn(
                    f"TLS handshake not done within {self.gate.limits.head_timeout:g} s "
                    "(--head-timeout)",
                    peer,
                )
            else:  # a failed handshake: the client's problem (refused certificates: _tls)
                log.debug("%s: connection from %s not set up: %s", self.gate.name, peer, exc)


class LimitedServer(uvicorn.Server):
    """A uvicorn server listening through an ``ApiListener``: TLS is done there (the
    ``uvicorn.Config`` has none), with the handshake bounded and every connection counted."""

    def __init__(
        self,
        config: uvicorn.Config,
        protocol: type[HeadLimitedProtocol],
        gate: ApiGate,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(config)
        self._protocol = protocol
        self._gate = gate
        self._context = context

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()  # "off" for the Coordinator: nothing to start
        config = self.config
        state = self.lifespan.state

        def factory(release: Callable[[], None], deadline: float) -> HeadLimitedProtocol:
            protocol = self._protocol(
                config=config, server_state=self.server_state, app_state=state
            )
            protocol.admitted(self._gate, release, deadline)
            return protocol

        try:
            infos = socket.getaddrinfo(
                config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            bound = listening_sockets(infos, config.backlog)
        except OSError as exc:
            log.error(
                "%s: cannot listen on %s:%d: %s",
                self._gate.name,
                config.host,
                config.port,
                exc.strerror or exc,
            )
            self.should_exit = True
            return
        listener = ApiListener(self._gate, bound, factory, self._context)
        listener.start()
        self.servers = [listener]  # type: ignore[list-item]
        self.started = True
