"""The transparent TLS proxy of ``geode run``: mutual TLS in front of the app and behind it.

Ingress, one TLS listener per ``IngressRoute``, takes mesh connections, reads the peer's SPIFFE
id from its verified certificate and applies the service's policy before the app sees a byte:

- ``http``: each request is authorised by method and path, then re-serialised to the app on
  127.0.0.1 with only the fields the app may get from a client (``_http_message``: none named
  with an underscore, no forwarding or method-override field) and ``X-Forwarded-For``,
  ``X-Forwarded-Proto`` and ``X-Geode-Peer`` set by the proxy. The app's response streams back
  before the next request is forwarded, so pipelining is safe. A denial gets 403 with
  ``PolicyMiddleware``'s JSON body; a malformed head (two Hosts too) 400, an oversized one (or
  oversized trailers) 431, a slow one 408, an unreachable app 502. The target is judged, and
  forwarded, in one normal form (``_http_gate``: ``//x``, ``/a/../x``, ``/%78`` are ``/x``);
  targets the app might still resolve differently from the policy (``#``, an encoded ``/`` or
  backslash, ``..;``) and any request for h2c get 400; only an upgrade request that passed
  every check may be answered with 101 (else 502, closed).
- ``tcp``: one decision per connection, then bytes are spliced to the app (denied: closed).

Egress, one loopback listener per ``EgressRoute``, turns the app's plaintext connections into
mutual TLS to the destination, which must present one of the route's SPIFFE ids.

Everything is asyncio protocols on whichever loop runs the proxy (uvloop included): bytes go from
one transport to the other as they arrive, a full write buffer pauses reading on the other side,
and HTTP is parsed by httptools (llhttp, in C) but for the short cut ``_http_message``
describes. asyncio's TLS cannot half-close, so an EOF is passed on only towards a plaintext side.
The TLS contexts come from the ``MeshCredentials`` given (``geode.runtime.Credentials``), so
renewed certificates reach new connections without a restart.

Each listener accepts its own connections (``_Listener``): at most ``max_connections`` at a time,
handshakes included; beyond that a new connection is closed at once, with a warning at most every
``_WARN_EVERY`` seconds. Accepting never logs a traceback: out of file descriptors, it warns and
retries. Once forwarding, tunnelling or splicing, a connection on which no byte has moved for
``inactivity_timeout`` is closed on both sides.

The modules, each importing only those listed before it: ``_policy`` (the ``PolicyEngine``),
``_connection`` (``ProxyLimits``, and ``ConnectionOwner``, all a connection may ask of this
proxy), ``_splice`` (TCP ingress, egress), ``_http_message`` (requests, re-framing, the short
cut), ``_http_gate`` (the decision on a request head), ``_http_reader`` (parsing),
``_http_timer``, ``_http_app`` (the app side, which knows its client side as a
``ClientSide``), ``_http_ingress`` (HTTP/1.1 flow control), and this.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import resource
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from geode._sockets import listening_sockets
from geode.errors import LaunchError
from geode.manifest import MeshConfig
from geode.proxy._connection import APP_HOST, ConnectionOwner, ProxyLimits, Slot, describe, log
from geode.proxy._http_gate import HttpGate
from geode.proxy._http_ingress import HttpIngress
from geode.proxy._policy import PolicyEngine
from geode.proxy._splice import Egress, Relay, TcpIngress

__all__ = ["MeshCredentials", "TransparentProxy"]

_BACKLOG = 1024
_WARN_EVERY = 10.0  # seconds between two warnings of one kind from one listener
_ACCEPT_RETRY = 0.25  # seconds before accepting again when out of file descriptors or memory
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class MeshCredentials(Protocol):
    """What the proxy needs of an instance's credentials (``geode.runtime.Credentials`` is
    one): its mesh view, and TLS contexts that take up a renewed certificate in place."""

    @property
    def mesh(self) -> MeshConfig | None: ...

    def server_ssl_context(self) -> ssl.SSLContext:
        """Mutual TLS for a mesh server (ingress)."""
        ...

    def client_ssl_context(self, peers: Iterable[str]) -> ssl.SSLContext:
        """Mutual TLS for a mesh client that accepts only the SPIFFE ids ``peers`` (egress)."""
        ...


class _Connections:
    """The open transports and running tasks of one proxy: the ``ConnectionOwner`` its
    listeners and connections talk to."""

    def __init__(self, limits: ProxyLimits) -> None:
        self.limits = limits
        self.transports: set[asyncio.Transport] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def track(self, transport: asyncio.Transport) -> None:
        self.transports.add(transport)

    def forget(self, transport: asyncio.Transport) -> None:
        self.transports.discard(transport)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Cancel every task and abort every connection."""
        for task in list(self.tasks):
            task.cancel()
        for transport in list(self.transports):
            transport.abort()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        # Let the aborted connections' connection_lost callbacks run.
        await asyncio.sleep(0)


def _raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one, where allowed: every connection
    takes one descriptor, two once forwarded."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # e.g. an unlimited hard limit the kernel caps
        log.debug("the open-file limit stays at %d: %s", soft, exc)
    else:
        log.debug("open-file limit raised from %d to %d", soft, hard)


class _Listener:
    """The sockets of one listener, accepting connections itself so that it can count them:
    each holds a ``Slot`` from accept until it is lost (or its handshake fails)."""

    def __init__(
        self,
        owner: ConnectionOwner,
        sockets: list[socket.socket],
        factory: Callable[[], HttpIngress | Relay],
        what: str,
        context: ssl.SSLContext | None,
    ) -> None:
        self.owner = owner
        self.sockets = sockets
        self.factory = factory
        self.what = what
        self.options: dict[str, Any] = {}
        if context is not None:
            self.options = {
                "ssl": context,
                "ssl_handshake_timeout": owner.limits.handshake_timeout,
            }
        self.active = 0
        self._warned: dict[str, float] = {}  # kind of warning: when last logged
        self._unwarned: dict[str, int] = {}  # kind of warning: events since then
        self._accepting: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in self.sockets]

    async def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self.sockets:
            sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = self.owner.limits.max_connections
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._warn(f"cannot accept connections: {describe(exc)}; retrying")
                    await asyncio.sleep(_ACCEPT_RETRY)
                else:  # that one connection is gone already (ECONNABORTED and the like)
                    log.debug("proxy (%s): accept failed: %s", self.what, describe(exc))
                continue
            except Exception as exc:  # not expected; the listener must go on all the same
                self._warn(f"accept failed: {describe(exc)}; retrying")
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            if self.active >= limit:
                conn.close()
                self._warn(f"{limit} connections open (max_connections): closing new ones")
                continue
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already
                conn.close()
                continue
            self.active += 1
            self.owner.spawn(self._serve(conn, Slot(self._release)))

    def _release(self) -> None:
        self.active -= 1

    async def _serve(self, conn: socket.socket, slot: Slot) -> None:
        made: list[HttpIngress | Relay] = []

        def factory() -> HttpIngress | Relay:
            protocol = self.factory()
            protocol.slot = slot
            made.append(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(factory, conn, **self.options)
        except BaseException as exc:
            slot.release()
            if not made:  # else its transport owns the socket, and has closed it
                conn.close()
            if not isinstance(exc, Exception):
                raise
            # A failed or late TLS handshake: the client's problem, as asyncio sees it too.
            log.debug("proxy (%s): connection not set up: %s", self.what, describe(exc))

    def _warn(self, kind: str) -> None:
        """Log ``kind`` at most every ``_WARN_EVERY`` seconds, with how often it happened."""
        now = time.monotonic()
        count = self._unwarned.get(kind, 0) + 1
        if now - self._warned.get(kind, -_WARN_EVERY) < _WARN_EVERY:
            self._unwarned[kind] = count
            return
        self._warned[kind], self._unwarned[kind] = now, 0
        log.warning("proxy (%s): %s (%d time(s) since the last warning)", self.what, kind, count)


class TransparentProxy:
    """The ingress and egress listeners of one instance, from its mesh view.

    ``await start()`` binds every listener (a port in use is a ``LaunchError`` naming it);
    ``await close()`` stops them and drops open connections. Also an async context manager.
    """

    def __init__(
        self,
        credentials: MeshCredentials,
        mesh: MeshConfig | None = None,
        engine: PolicyEngine | None = None,
        *,
        listen_host: str = "0.0.0.0",
        limits: ProxyLimits | None = None,
    ) -> None:
        mesh = mesh if mesh is not None else credentials.mesh
        if mesh is None:
            raise LaunchError("no mesh view (GEODE_MESH_FILE): the proxy has no routes")
        self.credentials = credentials
        self.mesh = mesh
        self.engine = engine or PolicyEngine.for_mesh(mesh)
        self.listen_host = listen_host
        self.limits = limits or ProxyLimits()
        self._listeners: list[_Listener] = []
        self._connections = _Connections(self.limits)

    async def __aenter__(self) -> TransparentProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._listeners:
            raise RuntimeError("the proxy is already started")
        _raise_fd_limit()
        try:
            if self.mesh.ingress:
                context = self.credentials.server_ssl_context()
            for ingress in self.mesh.ingress:
                factory: Callable[[], HttpIngress | Relay]
                if ingress.protocol == "http":
                    gate = HttpGate(self.engine, ingress.port)
                    factory = functools.partial(HttpIngress, self._connections, ingress, gate)
                else:
                    factory = functools.partial(TcpIngress, self._connections, ingress, self.engine)
                await self._listen(
                    factory,
                    self.listen_host,
                    ingress.port,
                    f"{ingress.protocol} ingress to app port {ingress.app_port}",
                    context,
                )
            for egress in self.mesh.egress:
                client_context = None
                if egress.peers:
                    client_context = self.credentials.client_ssl_context(egress.peers)
                else:
                    log.warning(
                        "egress to %s:%d (local port %d) refuses every connection: no service "
                        "in the manifest serves that host",
                        egress.host,
                        egress.port,
                        egress.local_port,
                    )
                await self._listen(
                    functools.partial(Egress, self._connections, egress, client_context),
                    APP_HOST,
                    egress.local_port,
                    f"egress to {egress.host}:{egress.port}",
                    None,
                )
        except BaseException:
            await self.close()
            raise

    async def _listen(
        self,
        factory: Callable[[], HttpIngress | Relay],
        host: str,
        port: int,
        what: str,
        context: ssl.SSLContext | None,
    ) -> None:
        try:
            sockets = await _bind(host, port)
        except OSError as exc:
            raise LaunchError(
                f"cannot listen on {host}:{port} for the {what}: {exc.strerror or exc}"
            ) from None
        listener = _Listener(self._connections, sockets, factory, f"{host}:{port}, {what}", context)
        self._listeners.append(listener)
        listener.start()
        log.info("proxy listening on %s:%d (%s)", host, port, what)

    async def close(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()
        await self._connections.close()


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return listening_sockets(infos, _BACKLOG)
