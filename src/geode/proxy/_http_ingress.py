"""HTTP ingress for the transparent TLS proxy: the HTTP/1.1 flow control of one client
connection. Requests are read (with the short cut of ``_http_message`` where it applies, else
httptools), queued, judged one at a time by the route's ``HttpGate`` (``_http_gate``: the policy
decision, nothing else), and answered here or forwarded to the app (``_http_app``) one at a
time, keep-alive and pipelining included (see ``_proxy`` for the behaviour as a whole).

**When an app connection is reused.** It serves the client connection's requests in turn
unless something leaves it in doubt; then it is closed once the response is complete, and the
next request opens a fresh one. That is after a response that did not allow keep-alive or came
before its request was read to the end; after a request the app may not have read in full
(``Request.app_reusable``: any body, any ``Expect`` or ``Upgrade``; the app is told to close
after a body or an ``Expect``) and after any HEAD; after bytes past the response's end
(``_http_app``: never forwarded); and when the next request already waits as the response
completes (pipelined). Before a request goes out on a reused connection, ``HttpApp.idle``
checks that no byte waits on it unread (one ``FIONREAD`` ioctl, about 1.3 microseconds); else a
fresh one is opened. What this cannot catch: bytes an app sends unasked after that check, on a
reused connection, pass for the answer to the request just sent (an app that writes after its
response has ended, later than the client's next request). The client's connection goes on
throughout, unless the client or the app's response asks to close (the app's answer to a close
the ingress asked for is not the client's: ``_http_app``)."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
from collections import deque
from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

from geode.manifest import IngressRoute
from geode.pki import SpiffeId
from geode.proxy._connection import (
    APP_HOST,
    ConnectionOwner,
    Slot,
    close_flushed,
    describe,
    log,
    peer_of,
)
from geode.proxy._http_app import HttpApp
from geode.proxy._http_gate import HttpGate, log_refusal
from geode.proxy._http_message import Request, added_fields, body_piece, last_chunk, simple_request
from geode.proxy._http_reader import RequestReader
from geode.proxy._http_timer import Wait, WaitTimer

__all__ = ["HttpIngress"]

# Requests parsed ahead of the one being answered: once this many wait, nothing more is parsed
# (the rest of a read waits in ``_backlog``) and nothing more is read until the queue drains.
_MAX_QUEUED = 16


class _Exchange(enum.Enum):
    """Where the request at the front of the queue is."""

    NEW = enum.auto()  # not looked at yet
    CONNECTING = enum.auto()  # allowed; the app connection is being opened
    FORWARDING = enum.auto()  # sent to the app; its response streams back
    ANSWERED = enum.auto()  # answered by the proxy; the rest of the body is dropped
    TUNNEL = enum.auto()  # the app switched protocols; bytes are spliced


class HttpIngress(asyncio.Protocol):
    """One client connection of an ``http`` ingress. Requests are read as they arrive (by the
    short cut, else by ``_reader``, which reports to this class as its ``RequestSink``), kept in
    ``_queue`` and handled one at a time: the front one is judged by ``gate``, then answered
    here or forwarded to the app; reading pauses while a later one waits its turn, and parsing
    stops at ``_MAX_QUEUED`` (one read may hold thousands). While the client does not read,
    nothing more is answered. From the front request's start to its end, ``Wait.PROGRESS``
    bounds how long no byte may move (``_stalled``)."""

    transport: asyncio.Transport
    _timer: WaitTimer  # set with the transport
    slot: Slot | None = None  # set by the listener that accepted the connection

    def __init__(self, owner: ConnectionOwner, route: IngressRoute, gate: HttpGate) -> None:
        self.owner = owner
        self.route = route
        self.gate = gate
        self.limits = owner.limits
        self.peer: SpiffeId | None = None
        self._reader = RequestReader(
            self, self.limits.max_header_bytes, app_reads_bodies=route.app_reads_bodies
        )
        self._queue: deque[Request] = deque()
        self._state = _Exchange.NEW
        self._answered = False  # a final response to the front request has been (partly) sent
        self._response_done = False
        self._keep_alive = True
        self._app: HttpApp | None = None
        self._paused: set[str] = set()  # why reading the client is paused
        self._writing_paused = False
        self._upgrading = False
        self._backlog = b""  # read, not parsed yet: _MAX_QUEUED requests wait
        self._advancing = False
        self._tunnel_early: list[bytes] = []  # sent after an upgrade request, before the 101
        self._closed = False  # closing or closed: nothing more is read or answered
        self._lost = False
        self._peer_line: bytes | None = None  # the fields the ingress adds (added_fields)

    # Connection events.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = WaitTimer(loop, self.limits.inactivity_timeout, self._timed_out)
        self.owner.track(self.transport)
        self.peer = peer_of(transport)
        self._arm_timer(self.limits.header_timeout, Wait.IDLE)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._timer.touch()  # a byte moved
        if self._state is _Exchange.TUNNEL and self._app is not None:
            self._app.transport.write(data)
            return
        if self._reader.stopped:
            if self._upgrading:
                self._tunnel_early.append(data)
            return
        if self._backlog:  # reading is paused, but a transport may still hand over what it had
            self._backlog += data
            return
        if not self._queue and self._reader.parsing is None:
            # The common case, one whole simple request and nothing else in this read: taken
            # without the parser, which stays between messages as it was.
            request = simple_request(data, self.limits.max_header_bytes)
            if request is not None:
                self._queue.append(request)
                if (
                    self._app is None
                    or self._state is not _Exchange.NEW
                    or self._writing_paused
                    or self._advancing
                ):
                    self._advance()
                else:  # straight to the app connection that is waiting
                    self._start(request)
                    if self._response_done:
                        self._advance()  # answered here (refused or denied)
                return
        self._backlog = self._reader.feed(data)
        self._advance()

    def eof_received(self) -> None:
        # asyncio's TLS closes the connection on EOF: no answer could reach the client now.
        self.close_flushed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self.owner.forget(self.transport)
        if self.slot is not None:
            self.slot.release()
        self._timer.cancel()
        if self._app is not None:
            self._app.close()
            self._app = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._app is not None:
            self._app.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.touch()
        if self._app is not None:
            self._app.transport.resume_reading()
        if self._state is _Exchange.NEW and not self._closed:
            self._advance()  # answers waited for the client to read

    # Requests as the reader reads them (``RequestSink``).

    def full(self) -> bool:
        return len(self._queue) >= _MAX_QUEUED

    def begun(self, request: Request) -> None:
        self._queue.append(request)
        if len(self._queue) == 1:
            self._arm_timer(self.limits.header_timeout, Wait.HEAD)
        else:
            self.pause("pipeline")

    def body(self, request: Request, piece: bytes) -> None:
        if request is not self._queue[0]:
            request.body.append(piece)
        elif self._state is _Exchange.FORWARDING and self._app is not None:
            self._app.transport.writelines(body_piece(piece, request.chunked))
        elif self._state is not _Exchange.ANSWERED:
            request.body.append(piece)

    def complete(self, request: Request) -> None:
        forwarding = request is self._queue[0] and self._state is _Exchange.FORWARDING
        if forwarding and request.chunked and self._app is not None:
            self._app.transport.write(last_chunk(request.trailers, peer=False))

    def upgraded(self, rest: bytes) -> None:
        self._upgrading = True
        self.pause("upgrade")
        self._tunnel_early.append(rest)

    def failed(self, request: Request | None, status: int, reason: str) -> None:
        self.pause("stopped")
        if request is None:
            request = Request()
            self._queue.append(request)
        if request.error is None:
            request.error, request.reason = status, reason

    # The exchange at the front of the queue.

    def _advance(self) -> None:
        if self._advancing:
            return  # called back from a write below: the loop there goes on from where it is
        self._advancing = True
        try:
            self._advance_queue()
        finally:
            self._advancing = False

    def _advance_queue(self) -> None:
        while self._queue and not self._closed:
            request = self._queue[0]
            if request.error is not None:
                if self._answered:
                    self.close_flushed()
                else:
                    self._log_refusal(request, request.error, request.reason)
                    error = HTTPStatus(request.error).phrase.lower().replace(" ", "_")
                    payload = {"error": error, "reason": request.reason}
                    self._respond(request, request.error, payload, True)
                return
            if not request.head_done:
                return  # the head timer runs
            if self._state is _Exchange.NEW:
                if self._writing_paused:
                    # The client does not read what it was sent: answer nothing more (nor read
                    # more, the queue being full) until it does; resume_writing goes on.
                    self._timer.arm_progress()
                    return
                self._start(request)
                continue
            if not (request.done and self._response_done):
                return
            self._queue.popleft()
            self._state = _Exchange.NEW
            self._answered = self._response_done = False
            if not self._keep_alive:
                self.close_flushed()
                return
            if self._backlog and len(self._queue) < _MAX_QUEUED:
                self._backlog = self._reader.feed(self._backlog)
            if len(self._queue) <= 1 and not self._backlog:
                self.resume("pipeline")
            if not self._queue:
                self._arm_timer(self.limits.idle_timeout, Wait.IDLE)
            elif not self._queue[0].head_done:
                self._arm_timer(self.limits.header_timeout, Wait.HEAD)

    def _log_refusal(self, request: Request, status: int, reason: str) -> None:
        log_refusal(self.route.port, self.peer, request, status, reason)

    def _start(self, request: Request) -> None:
        # From here until the exchange ends, it must make progress: see _stalled.
        self._timer.arm_progress()
        # An upgrade request leaves the parser in the new protocol: nothing can follow it.
        self._keep_alive = request.keep_alive and not request.upgrade
        refusal = self.gate.judge(self.peer, request)
        if refusal is not None:
            self._answer(request, refusal.status, refusal.payload)
            return
        # Only this request may switch protocols, and only if llhttp took it as an upgrade too:
        # then it has stopped parsing, and what follows the app's 101 is no request.
        request.may_upgrade = request.upgrade
        if self._app is not None and not self._app.idle():
            self._drop_app(self._app)  # bytes nobody asked for wait on it: start afresh
        if self._app is not None:
            self._forward(request, self._app)
        else:
            self._state = _Exchange.CONNECTING
            self.pause("connect")
            self.owner.spawn(self._connect(request))

    async def _connect(self, request: Request) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, app = await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(HttpApp, self), APP_HOST, self.route.app_port
                ),
                self.limits.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "ingress port %d: the app on %s:%d is unreachable: %s",
                self.route.port,
                APP_HOST,
                self.route.app_port,
                describe(exc),
            )
            if not self._closed:
                self.resume("connect")
                self._answer(request, 502, {"error": "bad_gateway", "reason": "app unreachable"})
                self._advance()
            return
        if self._closed:
            app.close()
            return
        self.resume("connect")
        self._forward(request, app)
        self._advance()

    def _forward(self, request: Request, app: HttpApp) -> None:
        self._state = _Exchange.FORWARDING
        if self._app is not app:
            self._app = app
            if self._writing_paused:
                app.transport.pause_reading()
        app.expect(request)
        if self._peer_line is None:  # X-Forwarded-For, X-Forwarded-Proto, X-Geode-Peer
            peername = self.transport.get_extra_info("peername")
            self._peer_line = added_fields(peername, str(self.peer))
        # The head and what has been read of the body go in one write: an app told to close
        # after this request (as ``_http_reader`` tells it after a body it may leave unread)
        # then has it all before it closes; bytes left unread would turn its close into a
        # reset, which may lose its response.
        out = request.head_for_app(self._peer_line)
        for piece in request.body:
            out.extend(body_piece(piece, request.chunked))
        request.body.clear()
        if request.done and request.chunked:
            out.append(last_chunk(request.trailers, peer=False))
        app.transport.write(b"".join(out))

    def _answer(self, request: Request, status: int, payload: Mapping[str, str | None]) -> None:
        """Answer the front request here; the rest of its body is read and dropped."""
        self._state = _Exchange.ANSWERED
        self._response_done = True
        request.body.clear()
        # A client waiting for 100 Continue may never send the body we would have to skip.
        close = not self._keep_alive or (request.expects_continue and not request.done)
        self._respond(request, status, payload, close)

    def _respond(
        self, request: Request, status: int, payload: Mapping[str, str | None], close: bool
    ) -> None:
        """The ingress's own answer; to a HEAD, its head alone (RFC 9110 9.3.2: a body would
        pass for the answer to the client's next request)."""
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
                b"" if request.method == "HEAD" else body,
            )
        )
        if close:
            self.close_flushed()

    # Events from the app connection.

    def response_started(self) -> None:
        self._answered = True

    def response_done(self, app: HttpApp, keep_alive: bool, reusable: bool) -> None:
        self._response_done = True
        # The client saw the app's own Connection header and version, so it decides as the app.
        self._keep_alive = self._keep_alive and keep_alive
        request = self._queue[0] if self._queue else None
        if (
            not reusable
            or request is None
            or not request.done
            or len(self._queue) > 1
            or self._backlog
        ):
            # The app connection serves no other request (see the module's docstring).
            self._drop_app(app)
            self._state = _Exchange.ANSWERED
            if request is not None:
                request.body.clear()
        elif self._keep_alive and not self._closed and not self._advancing:
            # The common end, the one request answered and nothing waiting: as _advance_queue
            # would end it.
            self._queue.clear()
            self._state = _Exchange.NEW
            self._answered = self._response_done = False
            self.resume("pipeline")
            self._arm_timer(self.limits.idle_timeout, Wait.IDLE)
            return
        self._advance()

    def unasked_switch(self, app: HttpApp) -> None:
        """The app answered 101 to a request that did not ask to upgrade (or that llhttp did
        not take as an upgrade, so later bytes would be parsed as requests): splicing now would
        let what follows reach the app unchecked. The connection ends with 502."""
        log.warning(
            "ingress port %d: the app switched protocols for a request that was no upgrade",
            self.route.port,
        )
        self._drop_app(app)
        if self._closed:
            return
        self._keep_alive = False
        request = self._queue[0] if self._queue else None
        if request is None or self._answered:
            self.close_flushed()
            return
        reason = "the app switched protocols unasked"
        self._answer(request, 502, {"error": "bad_gateway", "reason": reason})
        self._advance()

    def tunnel(self, app: HttpApp, rest: bytes) -> None:
        """The app answered 101: from now on bytes are spliced both ways."""
        self._state = _Exchange.TUNNEL
        self._queue.clear()
        if rest:
            self.transport.write(rest)
        app.transport.writelines(self._tunnel_early)
        self._tunnel_early.clear()
        self.resume("upgrade")
        self.resume("pipeline")

    def app_lost(self, app: HttpApp, reason: str) -> None:
        if app is not self._app:
            return
        self._app = None
        if self._closed or self._state not in (_Exchange.FORWARDING, _Exchange.TUNNEL):
            return  # an idle app connection: the next request opens another
        request = self._queue[0] if self._queue else None
        if self._state is _Exchange.TUNNEL:
            self.close_flushed()
        elif request is not None and request.replayable and app.reused and not app.received:
            # The app closed an idle connection as the request went out: send it again.
            self._state = _Exchange.CONNECTING
            self.pause("connect")
            self.owner.spawn(self._connect(request))
        elif request is not None and not self._answered:
            log.warning("ingress port %d: the app failed: %r", self.route.port, reason)
            self._answer(request, 502, {"error": "bad_gateway", "reason": reason})
            self._advance()
        else:  # a truncated response cannot be mended
            log.warning("ingress port %d: the app's response broke off", self.route.port)
            self.close_flushed()

    def _drop_app(self, app: HttpApp) -> None:
        if self._app is app:
            self._app = None
        app.close()

    # Helpers.

    def pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused:
                self.transport.resume_reading()

    def touch(self) -> None:
        """A byte moved: the ``Wait.PROGRESS`` timer starts over (lazily)."""
        self._timer.touch()

    def _arm_timer(self, delay: float, wait: Wait) -> None:
        if self._lost or (self._closed and wait is not Wait.CLOSING):
            return
        self._timer.arm(delay, wait)

    def _timed_out(self, wait: Wait) -> None:
        if self._closed and wait is not Wait.CLOSING:
            return
        if wait is Wait.CLOSING:
            self._abort()  # what was left to send did not leave in time
        elif wait is Wait.PROGRESS:
            self._stalled()
        elif wait is Wait.HEAD and self._queue:
            self._reader.stop(408, "request head not received in time")
            self._advance()
        else:
            self.close_flushed()

    def _stalled(self) -> None:
        """No byte moved either way for ``inactivity_timeout`` during an exchange: a request
        body that does not come, an app that does not answer, a client that does not read, a
        quiet tunnel. Before any of the response, the client gets 408; else both sides close."""
        timeout = self.limits.inactivity_timeout
        request = self._queue[0] if self._queue else None
        forwarding = self._state in (_Exchange.CONNECTING, _Exchange.FORWARDING)
        if request is not None and forwarding and not self._answered:
            reason = f"no progress for {timeout:g} s"
            self._log_refusal(request, 408, reason)
            self._keep_alive = False
            self._answer(request, 408, {"error": "request_timeout", "reason": reason})
        else:
            log.info(
                "ingress port %d: the connection from %s made no progress for %g s: closed",
                self.route.port,
                self.peer,
                timeout,
            )
            self._abort()

    def close_flushed(self) -> None:
        """Close once flushed; a client that does not take what is left within
        ``inactivity_timeout`` is cut off."""
        self._closed = True
        close_flushed(self.transport)
        if self._app is not None:
            self._drop_app(self._app)
        self._arm_timer(self.limits.inactivity_timeout, Wait.CLOSING)

    def _abort(self) -> None:
        self._closed = True
        self._timer.cancel()
        self.transport.abort()
        if self._app is not None:
            app, self._app = self._app, None
            app.transport.abort()
