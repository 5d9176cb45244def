"""Limits on the connections and request heads of the Coordinator's two APIs.

Without them, a client that opens connections and never finishes a request head holds each
one (and its file descriptor) for ever: a thousand of them, under a 1,024-descriptor limit,
cut off activation for everyone. And uvicorn buffers a request head whole, however large.
So, per API (``ApiGate``):

- Each API accepts its own connections (``_listener.ApiListener``) so that it can count
  them: at most ``max_connections`` at a time, TLS handshakes included; beyond that a new
  connection is closed at once. The client and the mesh API have separate budgets, so a flood
  of the client API leaves the mesh API (activations, renewals) reachable. ``fit_fd_limit``
  raises the process's open-file limit to its hard limit and lowers both budgets, with a
  warning, when they would not fit under it beside ``FD_RESERVE`` descriptors for the rest.
- ``head_timeout`` bounds the time from accepting a connection to the end of its first
  request head, the TLS handshake included (the handshake alone is bounded by it too), and on
  a kept-alive connection from the first byte of a request to the end of its head: a late head
  gets 408 (or, when nothing came at all, is just closed).
- ``max_head_bytes`` bounds the bytes before a head's end: more get 431, and the parser is
  fed no more than that (a pipelined head may overrun it by one read of the transport).
- ``request_timeout`` bounds the time from the end of a request's head to the end of its
  exchange: its body received and its response sent (a response that waits on a client who
  does not read included). Late: 408 if no response has started, else the connection is
  aborted. uvicorn's own timers stop at the first byte of a request, so without it one body
  byte every so often held a connection for ever. And once a response is sent before its
  request's body is all in (a 404 to a POST, say), the rest of that body is read (and
  dropped) for at most ``LEFTOVER_BODY_TIMEOUT``, then the connection is closed: it would
  otherwise be waited for with no exchange left to bound it. (Closed at once, the unread
  body would make the kernel reset the connection, and the client lose its answer.)
- ``max_head_bytes`` bounds a chunked body's trailers too: more get 431. Trailers are read
  and dropped, never added to the request's headers (uvicorn would append them to the
  headers the route already saw).
- ``idle_timeout`` closes a kept-alive connection on which no request starts (uvicorn's
  ``timeout_keep_alive``, set per connection so that it may be below a second).

Every limit that bites is logged as a warning naming the API, the limit and the peer, at most
once per ``WARN_EVERY`` seconds per kind, with how often it happened meanwhile.

The HTTP side is uvicorn's httptools protocol (what the Coordinator runs; its internals are
relied on, hence the narrow uvicorn range in pyproject.toml): ``HeadLimitedProtocol`` counts
head (and trailer) bytes before feeding the parser and times the head and the exchange with
the parser's own callbacks. The accept path (``ApiListener``, ``LimitedServer``) is
``_listener``'s.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from geode.protocol import ErrorBody

__all__ = [
    "FD_RESERVE",
    "ApiGate",
    "ConnectionLimits",
    "HeadLimitedProtocol",
    "fit_fd_limit",
    "peer_name",
]

log = logging.getLogger("geode.coordinator.limits")

FD_RESERVE = 256  # descriptors kept for the store, etcd, peers, logs and the loop itself
WARN_EVERY = 10.0  # seconds between two warnings of one kind for one API
LEFTOVER_BODY_TIMEOUT = 1.0  # seconds the rest of a body may take once its request is answered
REFUSED_CLOSE_TIMEOUT = 1.0  # seconds a TLS close waits after a refusal (408, 431), then drops
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold of the Coordinator's APIs (``geode coordinator`` flags)."""

    client_max_connections: int = 1024  # --client-max-connections
    mesh_max_connections: int = 1024  # --mesh-max-connections
    head_timeout: float = 10.0  # seconds, TLS handshake included: --head-timeout
    max_head_bytes: int = 64 * 1024  # --max-head-bytes
    idle_timeout: float = 30.0  # seconds between requests on one connection: --idle-timeout
    request_timeout: float = 30.0  # seconds from a head's end to its exchange's: --request-timeout


def fit_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft open-file limit to the hard one where allowed, and return ``limits``
    with both connection budgets lowered (proportionally, with a warning) when they would not
    fit under it beside ``FD_RESERVE``: each connection takes one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # e.g. an unlimited hard limit the kernel caps
            log.debug("the open-file limit stays at %d: %s", soft, exc)
        else:
            soft = hard
    wanted = limits.client_max_connections + limits.mesh_max_connections
    if soft == resource.RLIM_INFINITY or wanted <= soft - FD_RESERVE:
        return limits
    room = max(soft - FD_RESERVE, 2)
    client = max(1, limits.client_max_connections * room // wanted)
    mesh = max(1, room - client)
    log.warning(
        "the open-file limit is %d: connections limited to %d on the client API and %d on "
        "the mesh API (not %d and %d), keeping %d descriptors for the rest",
        soft,
        client,
        mesh,
        limits.client_max_connections,
        limits.mesh_max_connections,
        FD_RESERVE,
    )
    return replace(limits, client_max_connections=client, mesh_max_connections=mesh)


class ApiGate:
    """One API's limits, its connection count, and its rate-limited warnings."""

    def __init__(
        self, name: str, limits: ConnectionLimits, max_connections: int, flag: str
    ) -> None:
        self.name = name  # "client API", "mesh API"
        self.limits = limits
        self.max_connections = max_connections
        self.flag = flag  # the option that sets max_connections
        self.open = 0  # connections accepted and not yet lost, handshakes included
        self._warned: dict[str, float] = {}  # kind: when last logged
        self._unwarned: dict[str, int] = {}  # kind: times since then

    def admit(self) -> Callable[[], None] | None:
        """A place for one more connection: its release, to call exactly once (``None``:
        the API is full)."""
        if self.open >= self.max_connections:
            return None
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1

        return release

    def warn(self, kind: str, peer: str) -> None:
        """Log ``kind`` (the limit that bit) at most every ``WARN_EVERY`` seconds."""
        now = time.monotonic()
        count = self._unwarned.get(kind, 0) + 1
        if now - self._warned.get(kind, -WARN_EVERY) < WARN_EVERY:
            self._unwarned[kind] = count
            return
        self._warned[kind], self._unwarned[kind] = now, 0
        log.warning(
            "%s: %s; peer %s (%d time(s) since the last such warning)",
            self.name,
            kind,
            peer,
            count,
        )


def peer_name(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address) if address else "unknown"


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head in time and size, holding
    its API's place from accept until the connection is lost (``admitted``; a protocol never
    admitted behaves as uvicorn's)."""

    _gate: ApiGate | None = None
    _release: Callable[[], None] | None = None
    _deadline = 0.0  # loop time by which the first head must be complete
    _head_timer: asyncio.TimerHandle | None = None
    _in_head = True  # between a message's end (or the start) and its next head's end
    _head_bytes = 0  # bytes fed to the parser in the current head (or trailers)
    _in_trailers = False  # after a chunk's size line, until its first body byte
    _request_timer: asyncio.TimerHandle | None = None  # the exchange under way's
    _leftover_timer: asyncio.TimerHandle | None = None  # an answered request's unread body's
    _refused = False

    def admitted(self, gate: ApiGate, release: Callable[[], None], deadline: float) -> None:
        self._gate, self._release, self._deadline = gate, release, deadline
        # uvicorn.Config takes whole seconds; the timer itself (call_later) takes any.
        self.timeout_keep_alive = gate.limits.idle_timeout  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._gate is not None:
            self._head_timer = self.loop.call_at(self._deadline, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_request_timer()
        self._stop_leftover_timer()
        try:
            super().connection_lost(exc)
        finally:
            if self._release is not None:
                self._release()

    def data_received(self, data: bytes) -> None:
        gate = self._gate
        if gate is None:
            super().data_received(data)
            return
        if self._refused:
            return
        if self._in_head and self._head_timer is None:
            # A kept-alive connection's next head starts (even with bytes the parser skips):
            # uvicorn's idle timer stops here, so the head's starts.
            self._head_timer = self.loop.call_later(gate.limits.head_timeout, self._head_late)
        limit = gate.limits.max_head_bytes
        while data:
            # Fed at most ``limit`` bytes at a time, so that trailers, which start in the
            # middle of what was read, are counted from at most that far past their start.
            counted = self._in_head or self._in_trailers
            room = limit - self._head_bytes if counted else limit
            if room <= 0:
                what = "request head" if self._in_head else "chunked body's trailers"
                message = f"{what} larger than {limit} bytes"
                self._refuse(431, "http_error", message, "--max-head-bytes", own=not self._in_head)
                return
            chunk, data = data[:room], data[room:]
            if counted:
                self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self.transport.is_closing() or self._refused:
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._gate is not None and self._head_timer is None:  # pipelined after a body
            self._head_timer = self.loop.call_later(self._gate.limits.head_timeout, self._head_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # else a trailer: dropped (and counted, in data_received)
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._stop_head_timer()
        super().on_headers_complete()
        if self._gate is not None and self._request_timer is None:
            # (Else an exchange before it is under way: its own timer starts at that one's end.)
            self._start_request_timer()

    def on_chunk_header(self) -> None:
        """A chunk's size line: the trailers follow if it was the last (size 0), else the
        chunk's data (``on_body``) does."""
        self._in_trailers, self._head_bytes = True, 0

    def on_body(self, body: bytes) -> None:
        self._in_trailers = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head, self._in_trailers, self._head_bytes = True, False, 0
        super().on_message_complete()
        if self._leftover_timer is not None:  # the answered request's body is all in
            self._stop_leftover_timer()
            if not self.transport.is_closing() and not self.pipeline:
                # uvicorn stopped its idle timer at the body's bytes: it restarts here.
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._gate is None:
            return
        self._stop_request_timer()
        cycle = self.cycle
        if cycle is None or self.transport.is_closing():
            return
        if cycle.response_complete:
            if cycle.more_body:  # answered before its body was all in
                self._leftover_timer = self.loop.call_later(
                    LEFTOVER_BODY_TIMEOUT, self._leftover_late
                )
        else:  # a pipelined request's exchange starts now
            self._start_request_timer()

    def _start_request_timer(self) -> None:
        assert self._gate is not None
        self._request_timer = self.loop.call_later(
            self._gate.limits.request_timeout, self._request_late
        )

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _stop_leftover_timer(self) -> None:
        if self._leftover_timer is not None:
            self._leftover_timer.cancel()
            self._leftover_timer = None

    def _leftover_late(self) -> None:
        self._leftover_timer = None
        if self._gate is None or self.transport is None or self.transport.is_closing():
            return
        self._gate.warn(
            f"request body unfinished {LEFTOVER_BODY_TIMEOUT:g} s after its answer: closed",
            peer_name(self.client),
        )
        self._refused = True
        self._stop_head_timer()
        self._close_refused()

    def _request_late(self) -> None:
        self._request_timer = None
        if self._gate is None or self.transport is None or self.transport.is_closing():
            return
        message = f"request not done within {self._gate.limits.request_timeout:g} s"
        cycle = self.cycle
        # A queued (pipelined) ``cycle`` waits for an exchange before it, whose response
        # may have started: then, as when ``cycle``'s own has, too late for a 408.
        started = bool(self.pipeline) or (cycle is not None and cycle.response_started)
        self._refuse(
            408, "request_timeout", message, "--request-timeout", own=None if started else True
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._gate is None or self.transport is None or self.transport.is_closing():
            return
        timeout = self._gate.limits.head_timeout
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits, unread, for the answer before it: not the client's fault.
            self._head_timer = self.loop.call_later(timeout, self._head_late)
            return
        if self._head_bytes:
            message = f"request head not received within {timeout:g} s"
            self._refuse(408, "request_timeout", message, "--head-timeout", own=False)
        else:  # nothing came: nobody to answer
            self._gate.warn(
                f"no request within {timeout:g} s (--head-timeout)", peer_name(self.client)
            )
            self._refused = True
            self._close_refused()

    def _refuse(self, status: int, code: str, message: str, flag: str, *, own: bool | None) -> None:
        """Answer ``status`` and close; ``own``: whether ``self.cycle`` is the refused
        request's (answered unless its response has started), ``False``: it is the exchange
        before a refused head (answered once that one is complete), ``None``: no answer
        can be given (the response under way is aborted)."""
        assert self._gate is not None
        self._gate.warn(f"{message} ({flag})", peer_name(self.client))
        self._refused = True
        self._stop_head_timer()
        self._stop_request_timer()
        cycle = self.cycle
        if own is None:
            self._end_exchange()
            self.transport.abort()
            return
        if own:
            answer = cycle is None or not cycle.response_started
            self._end_exchange()
        else:
            answer = cycle is None or cycle.response_complete
        if answer:
            self._write_error(status, code, message)
        self._close_refused()

    def _end_exchange(self) -> None:
        """Tell the route under way that its client is gone: its receive() ends, its
        send()s are dropped (uvicorn does so too once the connection is lost)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (bad framing, a NUL in the path, ...) gets the
        protocol's typed JSON error like every other refusal, not uvicorn's plain text."""
        self._write_error(400, "http_error", "not a valid HTTP/1.1 request")
        self.transport.close()

    def _write_error(self, status: int, code: str, message: str) -> None:
        body = ErrorBody(error=code, message=message).model_dump_json().encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)

    def _close_refused(self) -> None:
        """Close, and drop the connection if its TLS close takes longer than
        ``REFUSED_CLOSE_TIMEOUT`` (an attacker's place is not held for the full close)."""
        transport = self.transport
        transport.close()
        self.loop.call_later(REFUSED_CLOSE_TIMEOUT, transport.abort)
