"""The transparent TLS proxy of ``geode run``: mutual TLS in front of the app and behind it.

Ingress, one TLS listener per ``IngressRoute``, takes mesh connections, reads the peer's SPIFFE
id from its verified certificate and applies the service's policy before the app sees a byte:

- ``http``: each request is authorised by method and path, then re-serialised to the app on
  127.0.0.1 with ``X-Geode-Peer`` set by the proxy (a client's own is dropped). The app's
  response streams back before the next request is forwarded, so pipelining is safe. A denial
  gets 403 with ``PolicyMiddleware``'s JSON body; a malformed head 400, an oversized one 431, a
  slow one 408, an unreachable app 502.
- ``tcp``: one decision per connection, then bytes are spliced to the app (denied: closed).

Egress, one loopback listener per ``EgressRoute``, turns the app's plaintext connections into
mutual TLS to the destination, which must present one of the route's SPIFFE ids.

Everything is asyncio protocols on whichever loop runs the proxy (uvloop included): bytes go from
one transport to the other as they arrive, a full write buffer pauses reading on the other side,
and HTTP is parsed by httptools (llhttp, in C). asyncio's TLS cannot half-close, so an EOF is
passed on only towards a plaintext side. The TLS contexts come from ``Credentials``, so renewed
certificates reach new connections without a restart.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

from geode.errors import LaunchError
from geode.manifest import EgressRoute, IngressRoute, MeshConfig
from geode.pki import SpiffeId
from geode.runtime._credentials import Credentials
from geode.runtime._identity import peer_spiffe_id
from geode.runtime._policy import PolicyEngine

__all__ = ["ProxyLimits", "TransparentProxy"]

log = logging.getLogger("geode.proxy")

APP_HOST = "127.0.0.1"
_PEER_HEADER = b"x-geode-peer"


@dataclass(frozen=True)
class ProxyLimits:
    """Timeouts (seconds) and sizes that keep one client from holding the proxy."""

    header_timeout: float = 10.0  # a request head must arrive within this, else 408
    idle_timeout: float = 60.0  # a keep-alive connection without a request is closed
    max_header_bytes: int = 64 * 1024  # a larger request head gets 431
    connect_timeout: float = 5.0  # to the app, or to an egress destination with its handshake
    half_close_timeout: float = 30.0  # after an egress app's EOF, how long the answer may take
    handshake_timeout: float = 10.0  # an ingress client's TLS handshake


class TransparentProxy:
    """The ingress and egress listeners of one instance, from its mesh view.

    ``await start()`` binds every listener (a port in use is a ``LaunchError`` naming it);
    ``await close()`` stops them and drops open connections. Also an async context manager.
    """

    def __init__(
        self,
        credentials: Credentials,
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
        self.engine = engine or PolicyEngine(
            mesh.policy, mesh.service, trust_domain=mesh.trust_domain
        )
        self.listen_host = listen_host
        self.limits = limits or ProxyLimits()
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TransparentProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._servers:
            raise RuntimeError("the proxy is already started")
        try:
            if self.mesh.ingress:
                context = self.credentials.server_ssl_context()
            for ingress in self.mesh.ingress:
                protocol = _HttpIngress if ingress.protocol == "http" else _TcpIngress
                await self._listen(
                    functools.partial(protocol, self, ingress),
                    self.listen_host,
                    ingress.port,
                    f"{ingress.protocol} ingress to app port {ingress.app_port}",
                    ssl=context,
                    ssl_handshake_timeout=self.limits.handshake_timeout,
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
                    functools.partial(_Egress, self, egress, client_context),
                    APP_HOST,
                    egress.local_port,
                    f"egress to {egress.host}:{egress.port}",
                )
        except BaseException:
            await self.close()
            raise

    async def _listen(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        what: str,
        **options: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(factory, host, port, backlog=1024, **options)
        except OSError as exc:
            raise LaunchError(
                f"cannot listen on {host}:{port} for the {what}: {exc.strerror or exc}"
            ) from None
        self._servers.append(server)
        log.info("proxy listening on %s:%d (%s)", host, port, what)

    async def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self._connections):
            transport.abort()
        for server in servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Let the aborted connections' connection_lost callbacks run.
        await asyncio.sleep(0)

    def _track(self, transport: asyncio.Transport) -> None:
        self._connections.add(transport)

    def _untrack(self, transport: asyncio.Transport) -> None:
        self._connections.discard(transport)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("proxy task failed", exc_info=task.exception())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and len(exc.args) == 1:
        return str(exc.args[0])  # our own identity check: str() would show a tuple
    return str(exc) or type(exc).__name__


def _close(transport: asyncio.Transport) -> None:
    """Close after flushing. Reading is resumed first: asyncio's TLS transport, when EOF came
    while it was paused, finishes closing only once it may read again."""
    transport.resume_reading()
    transport.close()


def _peer_of(transport: asyncio.BaseTransport) -> SpiffeId | None:
    ssl_object = transport.get_extra_info("ssl_object")
    return peer_spiffe_id(ssl_object.getpeercert(True) if ssl_object is not None else None)


# --- Splicing: TCP ingress and egress ----------------------------------------------------------


class _Relay(asyncio.Protocol):
    """One side of a spliced connection: what it reads, its partner's transport writes."""

    transport: asyncio.Transport
    partner: _Relay | None = None
    eof_closes_tls = False  # see _pass_eof

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
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, _Relay]]]
    ) -> None:
        """Connect the partner in the background; until then nothing more is read."""
        self.transport.pause_reading()
        self.proxy._spawn(self._splice(what, connect))

    async def _splice(
        self, what: str, connect: Callable[[], Coroutine[Any, Any, tuple[Any, _Relay]]]
    ) -> None:
        try:
            _, partner = await asyncio.wait_for(connect(), self.proxy.limits.connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s failed: %s", what, _describe(exc))
            _close(self.transport)
            return
        self.partner, partner.partner = partner, self
        partner.transport.writelines(self._early)
        self._early.clear()
        if self._lost:
            _close(partner.transport)
        elif self._eof:
            self._pass_eof()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
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
                _close(self.partner.transport)
            return False
        if self.partner is not None:
            self._pass_eof()
        return True  # still writing what the partner sends

    def _pass_eof(self) -> None:
        partner = self.partner
        assert partner is not None
        if partner._eof:
            _close(partner.transport)
            _close(self.transport)
        elif partner.transport.can_write_eof():
            partner.transport.write_eof()
        elif self.eof_closes_tls:
            # TLS (in asyncio) cannot carry a half-close. An app behind ingress that ends its
            # side has answered (an HTTP/1.0 response, a finished exchange): close the TLS
            # side now, once what was written to it has been sent.
            _close(partner.transport)
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
        _close(self.transport)
        if self.partner is not None:
            _close(self.partner.transport)

    def pause_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.proxy._untrack(self.transport)
        if self._linger is not None:
            self._linger.cancel()
        if self.partner is not None:
            _close(self.partner.transport)


class _AppSide(_Relay):
    """The connection to the app behind a TCP ingress."""

    eof_closes_tls = True


class _TcpIngress(_Relay):
    def __init__(self, proxy: TransparentProxy, route: IngressRoute) -> None:
        super().__init__(proxy)
        self.route = route

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.proxy.engine.authorize_tcp(_peer_of(transport), self.route.port):
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        factory = functools.partial(_AppSide, self.proxy)
        self.splice_to(
            f"ingress port {self.route.port}: connecting to the app on "
            f"{APP_HOST}:{self.route.app_port}",
            lambda: loop.create_connection(factory, APP_HOST, self.route.app_port),
        )


class _Egress(_Relay):
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
        factory = functools.partial(_Relay, self.proxy)
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


# --- HTTP ingress ------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised in a parser callback to stop parsing where a message ends."""


@dataclass(eq=False)
class _Request:
    """One request from the client, as far as it has been read."""

    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    method: str = ""
    version: str = "1.1"
    keep_alive: bool = False
    chunked: bool = False
    upgrade: bool = False
    expects_continue: bool = False
    replayable: bool = False  # idempotent and bodiless: may be sent again to a fresh connection
    head_size: int = 0  # URL and header bytes, known once the head is complete
    head_read: int = 0  # bytes read of a head not yet complete
    began_mid_read: bool = False  # after another message in the same read
    head_done: bool = False
    done: bool = False
    body: list[bytes] = field(default_factory=list)  # read, not yet forwarded
    error: int | None = None  # answer this status and close the connection
    reason: str = ""


class _Exchange(enum.Enum):
    """Where the request at the front of the queue is."""

    NEW = enum.auto()  # not looked at yet
    CONNECTING = enum.auto()  # allowed; the app connection is being opened
    FORWARDING = enum.auto()  # sent to the app; its response streams back
    ANSWERED = enum.auto()  # answered by the proxy; the rest of the body is dropped
    TUNNEL = enum.auto()  # the app switched protocols; bytes are spliced


def _header_lines(headers: Iterable[tuple[bytes, bytes]], *, peer: bool = True) -> list[bytes]:
    """Header lines; with ``peer=False`` without ``X-Geode-Peer``, which only the proxy sets
    (nor ``X_Geode_Peer``: CGI-style apps read both as ``HTTP_X_GEODE_PEER``)."""
    return [
        b"%s: %s\r\n" % h
        for h in headers
        if peer or h[0].lower().replace(b"_", b"-") != _PEER_HEADER
    ]


def _body_piece(data: bytes, chunked: bool) -> list[bytes]:
    # Chunked bodies are re-framed piece by piece: the receiver decodes them the same way.
    return [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data]


def _last_chunk(trailers: list[tuple[bytes, bytes]], *, peer: bool = True) -> bytes:
    return b"".join([b"0\r\n", *_header_lines(trailers, peer=peer), b"\r\n"])


def _policy_path(url: bytes) -> str | None:
    """The percent-decoded path the policy judges (as ASGI's ``scope["path"]``), or ``None``
    when it cannot be judged safely: no path, or ``.``/``..`` segments that the app might
    resolve into a path the policy never saw."""
    if url == b"*":
        return "*"
    try:
        raw = httptools.parse_url(url).path or b"/"
    except httptools.HttpParserInvalidURLError:
        return None
    path = unquote(raw.decode("latin-1"))
    if not path.startswith("/") or any(s in (".", "..") for s in path.split("/")):
        return None
    return path


def _upgrades_to_http(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        token.strip().lower().startswith((b"h2", b"http/"))
        for name, value in headers
        if name.lower() == b"upgrade"
        for token in value.split(b",")
    )


class _HttpIngress(asyncio.Protocol):
    """One client connection of an ``http`` ingress. Requests are parsed as they arrive, kept
    in ``_queue`` and handled one at a time: the front one is authorised, then answered here
    or forwarded to the app; reading pauses while a later one waits its turn."""

    transport: asyncio.Transport

    def __init__(self, proxy: TransparentProxy, route: IngressRoute) -> None:
        self.proxy = proxy
        self.route = route
        self.limits = proxy.limits
        self.peer: SpiffeId | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Request] = deque()
        self._parsing: _Request | None = None
        self._state = _Exchange.NEW
        self._answered = False  # a final response to the front request has been (partly) sent
        self._response_done = False
        self._keep_alive = True
        self._app: _HttpApp | None = None
        self._paused: set[str] = set()  # why reading the client is paused
        self._writing_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for_head = False  # what the timer means: a head is late, or just idle
        self._stopped = False  # no more requests are read (malformed input, or an upgrade)
        self._upgrading = False
        self._ended_in_read = False  # a request ended in the read being parsed
        self._tunnel_early: list[bytes] = []  # sent after an upgrade request, before the 101
        self._closed = False

    # Connection events.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.proxy._track(self.transport)
        self.peer = _peer_of(transport)
        self._arm_timer(self.limits.header_timeout, head=False)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._state is _Exchange.TUNNEL and self._app is not None:
            self._app.transport.write(data)
            return
        if self._stopped:
            if self._upgrading:
                self._tunnel_early.append(data)
            return
        partial = self._parsing if self._parsing and not self._parsing.head_done else None
        self._ended_in_read = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._stopped = self._upgrading = True
            self._pause("upgrade")
            self._tunnel_early.append(data[int(exc.args[0]) :])
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed request: {exc}")
        else:
            self._check_head_size(self._parsing, partial, len(data))
        self._advance()

    def _check_head_size(self, request: _Request | None, partial: _Request | None, n: int) -> None:
        """Refuse a head that has grown too large before it is complete. The read in which it
        began counts only if it began there at the start: after another message, where it
        began is unknown (its exact size is checked once complete)."""
        if request is None or request.head_done:
            return
        if request is partial or not request.began_mid_read:
            request.head_read += n
            if request.head_read > self.limits.max_header_bytes:
                self._fail(431, "request head too large")

    def eof_received(self) -> None:
        # asyncio's TLS closes the connection on EOF: no answer could reach the client now.
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.proxy._untrack(self.transport)
        self._cancel_timer()
        if self._app is not None:
            self._app.transport.close()
            self._app = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._app is not None:
            self._app.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._app is not None:
            self._app.transport.resume_reading()

    # Parser callbacks (httptools).

    def on_message_begin(self) -> None:
        self._parsing = _Request(began_mid_read=self._ended_in_read)
        self._queue.append(self._parsing)
        if len(self._queue) == 1:
            self._arm_timer(self.limits.header_timeout, head=True)
        else:
            self._pause("pipeline")

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.url += url
        self._parsing.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        if request.head_done:
            request.trailers.append((name, value))
        else:
            request.headers.append((name, value))
            request.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.head_done = True
        if request.head_size > self.limits.max_header_bytes:
            request.error, request.reason = 431, "request head too large"
            raise _Stop
        parser = self._parser
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        body = False
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":  # llhttp has checked that chunked comes last
                request.chunked = body = value.lower().rstrip().endswith(b"chunked")
                if request.version == "1.0":
                    # RFC 9112 6.1: faulty framing. An HTTP/1.0 app might ignore it and read
                    # the chunks as the next request, one the policy never saw.
                    request.error, request.reason = 400, "Transfer-Encoding in HTTP/1.0"
                    raise _Stop
            elif lowered == b"content-length":
                body = body or value.strip() != b"0"
            elif lowered == b"expect":
                request.expects_continue = value.lower() == b"100-continue"
        if request.version not in ("1.0", "1.1"):
            request.error, request.reason = 505, f"HTTP/{request.version} is not supported"
            raise _Stop
        request.replayable = not body and request.method in ("GET", "HEAD", "OPTIONS")

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        if request is not self._queue[0]:
            request.body.append(body)
        elif self._state is _Exchange.FORWARDING and self._app is not None:
            self._app.transport.writelines(_body_piece(body, request.chunked))
        elif self._state is not _Exchange.ANSWERED:
            request.body.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.done = True
        self._parsing = None
        self._ended_in_read = True
        forwarding = request is self._queue[0] and self._state is _Exchange.FORWARDING
        if forwarding and request.chunked and self._app is not None:
            self._app.transport.write(_last_chunk(request.trailers, peer=False))

    # The exchange at the front of the queue.

    def _advance(self) -> None:
        while self._queue and not self._closed:
            request = self._queue[0]
            if request.error is not None:
                if self._answered:
                    self._close()
                else:
                    log.info(
                        "ingress port %d: %d to %s: %s",
                        self.route.port,
                        request.error,
                        self.peer,
                        request.reason,
                    )
                    error = HTTPStatus(request.error).phrase.lower().replace(" ", "_")
                    self._respond(request.error, {"error": error, "reason": request.reason}, True)
                return
            if not request.head_done:
                return  # the head timer runs
            if self._state is _Exchange.NEW:
                self._start(request)
                continue
            if not (request.done and self._response_done):
                return
            self._queue.popleft()
            self._state = _Exchange.NEW
            self._answered = self._response_done = False
            if not self._keep_alive:
                self._close()
                return
            if len(self._queue) <= 1:
                self._resume("pipeline")
            if not self._queue:
                self._arm_timer(self.limits.idle_timeout, head=False)
            elif not self._queue[0].head_done:
                self._arm_timer(self.limits.header_timeout, head=True)

    def _start(self, request: _Request) -> None:
        self._cancel_timer()
        # An upgrade request leaves the parser in the new protocol: nothing can follow it.
        self._keep_alive = request.keep_alive and not request.upgrade
        if request.method == "CONNECT":
            reason = "CONNECT is not proxied"
            self._answer(request, 405, {"error": "method_not_allowed", "reason": reason})
            return
        path = _policy_path(bytes(request.url))
        if path is None:
            self._answer(request, 400, {"error": "bad_request", "reason": "unusable request path"})
            return
        if request.upgrade and _upgrades_to_http(request.headers):
            # Requests inside an HTTP/2 tunnel would reach the app unchecked.
            reason = "no upgrade to HTTP/2 (h2c)"
            self._answer(request, 400, {"error": "bad_request", "reason": reason})
            return
        decision = self.proxy.engine.authorize_http(self.peer, request.method, path)
        if not decision:
            peer = str(self.peer) if self.peer else None
            body = {"error": "policy_denied", "peer": peer, "reason": decision.reason}
            self._answer(request, 403, body)
            return
        if self._app is not None:
            self._forward(request, self._app)
        else:
            self._state = _Exchange.CONNECTING
            self._pause("connect")
            self.proxy._spawn(self._connect(request))

    async def _connect(self, request: _Request) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, app = await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(_HttpApp, self), APP_HOST, self.route.app_port
                ),
                self.limits.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "ingress port %d: the app on %s:%d is unreachable: %s",
                self.route.port,
                APP_HOST,
                self.route.app_port,
                _describe(exc),
            )
            if not self._closed:
                self._resume("connect")
                self._answer(request, 502, {"error": "bad_gateway", "reason": "app unreachable"})
                self._advance()
            return
        if self._closed:
            app.transport.close()
            return
        self._resume("connect")
        self._forward(request, app)
        self._advance()

    def _forward(self, request: _Request, app: _HttpApp) -> None:
        self._state = _Exchange.FORWARDING
        if self._app is not app:
            self._app = app
            if self._writing_paused:
                app.transport.pause_reading()
        app.expect(request)
        head = b"%s %s HTTP/%s\r\n" % (
            request.method.encode(),
            bytes(request.url),
            request.version.encode(),
        )
        peer = b"X-Geode-Peer: %s\r\n\r\n" % str(self.peer).encode()
        app.transport.writelines([head, *_header_lines(request.headers, peer=False), peer])
        for piece in request.body:
            app.transport.writelines(_body_piece(piece, request.chunked))
        request.body.clear()
        if request.done and request.chunked:
            app.transport.write(_last_chunk(request.trailers, peer=False))

    def _answer(self, request: _Request, status: int, payload: dict[str, Any]) -> None:
        """Answer the front request here; the rest of its body is read and dropped."""
        self._state = _Exchange.ANSWERED
        self._response_done = True
        request.body.clear()
        # A client waiting for 100 Continue may never send the body we would have to skip.
        close = not self._keep_alive or (request.expects_continue and not request.done)
        self._respond(status, payload, close)

    def _respond(self, status: int, payload: dict[str, Any], close: bool) -> None:
        self._answered = True
        body = json.dumps(payload).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: %s\r\n\r\n%s"
            % (
                status,
                HTTPStatus(status).phrase.encode(),
                len(body),
                b"close" if close else b"keep-alive",
                body,
            )
        )
        if close:
            self._close()

    # Events from the app connection.

    def response_started(self) -> None:
        self._answered = True

    def response_done(self, app: _HttpApp, keep_alive: bool) -> None:
        self._response_done = True
        # The client saw the app's own Connection header and version, so it decides as the app.
        self._keep_alive = self._keep_alive and keep_alive
        request = self._queue[0] if self._queue else None
        if not keep_alive or (request is not None and not request.done):
            # An early response leaves the app connection mid-request: start afresh.
            self._drop_app(app)
            self._state = _Exchange.ANSWERED
            if request is not None:
                request.body.clear()
        self._advance()

    def tunnel(self, app: _HttpApp, rest: bytes) -> None:
        """The app answered 101: from now on bytes are spliced both ways."""
        self._state = _Exchange.TUNNEL
        self._queue.clear()
        if rest:
            self.transport.write(rest)
        app.transport.writelines(self._tunnel_early)
        self._tunnel_early.clear()
        self._resume("upgrade")
        self._resume("pipeline")

    def app_lost(self, app: _HttpApp, reason: str) -> None:
        if app is not self._app:
            return
        self._app = None
        if self._closed or self._state not in (_Exchange.FORWARDING, _Exchange.TUNNEL):
            return  # an idle app connection: the next request opens another
        request = self._queue[0] if self._queue else None
        if self._state is _Exchange.TUNNEL:
            self._close()
        elif request is not None and request.replayable and app.reused and not app.received:
            # The app closed an idle connection as the request went out: send it again.
            self._state = _Exchange.CONNECTING
            self._pause("connect")
            self.proxy._spawn(self._connect(request))
        elif request is not None and not self._answered:
            log.warning("ingress port %d: the app failed: %s", self.route.port, reason)
            self._answer(request, 502, {"error": "bad_gateway", "reason": reason})
            self._advance()
        else:  # a truncated response cannot be mended
            log.warning("ingress port %d: the app's response broke off", self.route.port)
            self._close()

    def _drop_app(self, app: _HttpApp) -> None:
        if self._app is app:
            self._app = None
        app.transport.close()

    # Helpers.

    def _fail(self, status: int, reason: str) -> None:
        self._stopped = True
        self._pause("stopped")
        request = self._parsing
        if request is None:
            request = _Request()
            self._queue.append(request)
        if request.error is None:
            request.error, request.reason = status, reason
        self._parsing = None

    def _pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused:
                self.transport.resume_reading()

    def _arm_timer(self, delay: float, *, head: bool) -> None:
        self._cancel_timer()
        self._waiting_for_head = head
        self._timer = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._waiting_for_head and self._queue:
            self._fail(408, "request head not received in time")
            self._advance()
        else:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._cancel_timer()
        _close(self.transport)
        if self._app is not None:
            self._drop_app(self._app)


class _HttpApp(asyncio.Protocol):
    """The plaintext connection to the app behind one client connection: each response is
    parsed only to re-frame it and find its end."""

    transport: asyncio.Transport

    def __init__(self, ingress: _HttpIngress) -> None:
        self.ingress = ingress
        self._parser: httptools.HttpResponseParser | None = None
        self._request: _Request | None = None
        self._reason = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._in_body = False
        self._chunked = False
        self._until_close = False  # the response ends when the app closes
        self._keep_alive = False
        self._tunnel = False
        self.reused = False  # an earlier exchange completed on this connection
        self.received = False  # the app has sent something for the current exchange

    def expect(self, request: _Request) -> None:
        """The next response answers ``request``."""
        self.reused = self._request is not None
        self.received = False
        self._parser = httptools.HttpResponseParser(self)
        self._request = request
        self._reason.clear()
        self._headers, self._trailers = [], []
        self._status, self._in_body, self._chunked, self._until_close = 0, False, False, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ingress.proxy._track(self.transport)

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            self.ingress.transport.write(data)
            return
        self.received = True
        if self._parser is None:  # bytes nobody asked for
            self.transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._parser = None
            self._tunnel = True
            self.ingress.tunnel(self, data[int(exc.args[0]) :])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Stop):
                self._finish()
            else:
                self._parser = None
                self.transport.close()
                self.ingress.app_lost(self, f"malformed response: {exc}")
        else:
            if self._status == 101 and not self._tunnel:
                self.transport.close()
                self.ingress.app_lost(self, "101 without a protocol upgrade")

    def connection_lost(self, exc: Exception | None) -> None:
        self.ingress.proxy._untrack(self.transport)
        if self._until_close and self._parser is not None:
            self._keep_alive = False
            self._finish()
        self._parser = None
        self.ingress.app_lost(self, "the app closed the connection")

    def pause_writing(self) -> None:
        self.ingress._pause("app")

    def resume_writing(self) -> None:
        self.ingress._resume("app")

    # Parser callbacks (httptools).

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        (self._trailers if self._in_body else self._headers).append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self._request is not None
        status = self._status = self._parser.get_status_code()
        head = b"HTTP/%s %d %s\r\n" % (
            self._parser.get_http_version().encode(),
            status,
            bytes(self._reason),
        )
        lines = [head, *_header_lines(self._headers), b"\r\n"]
        if status >= 200 or status == 101:
            self.ingress.response_started()
        elif self._request.version == "1.0":
            return  # HTTP/1.0 clients do not know interim responses
        self.ingress.transport.writelines(lines)
        if status < 200:
            return
        self._in_body = True
        names = {name.lower() for name, _ in self._headers}
        bodyless = status in (204, 304) or self._request.method == "HEAD"
        self._chunked = not bodyless and any(
            n.lower() == b"transfer-encoding" and v.lower().rstrip().endswith(b"chunked")
            for n, v in self._headers
        )
        self._until_close = not (bodyless or self._chunked or b"content-length" in names)
        if self._request.method == "HEAD":
            # llhttp cannot be told the request was HEAD: the response ends with its head.
            self._keep_alive = self._parser.should_keep_alive()
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self.ingress.transport.writelines(_body_piece(body, self._chunked))

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._status < 200:  # interim (100, 103) or 101: the parser carries on
            self._reason.clear()
            self._headers = []
            return
        self._keep_alive = self._parser.should_keep_alive()
        raise _Stop

    def _finish(self) -> None:
        self._parser = None
        if self._chunked:
            self.ingress.transport.write(_last_chunk(self._trailers))
        self.ingress.response_done(self, self._keep_alive)
