"""The app side of the HTTP ingress: the plaintext connection to the app behind one client
connection, each response parsed only to re-frame it and find its end.

Bytes the app sends outside an expected response are never forwarded, and the connection then
serves no other request: bytes past the end of a final response in the same read (a simple
response longer than its ``Content-Length``; on the parser path, llhttp beginning another
message after the final one, or failing on what follows it), in a later read while no response
is due (the connection is closed), or waiting unread when the next request would go out
(``idle``). A HEAD's response ends with its head; the ingress does not reuse the connection
after it. Not caught: bytes that arrive after the next request went out on a reused connection
pass for its answer (see ``_http_ingress``). The blank lines llhttp skips between messages are
ignored, as they can begin no message.

When the ingress told the app ``Connection: close`` (``Request.app_close``), the app's own
``Connection`` field in an HTTP/1.1 answer is dropped: the close was the ingress's, for this
hop, and the client's connection goes on unless the response ends only when the app closes."""

from __future__ import annotations

import asyncio
import fcntl
import termios
from typing import Protocol, cast

import httptools

from geode.proxy._connection import ConnectionOwner
from geode.proxy._http_message import (
    Request,
    Stop,
    body_piece,
    header_lines,
    last_chunk,
    simple_response_length,
)

__all__ = ["ClientSide", "HttpApp"]

_NONE_UNREAD = bytes(4)  # FIONREAD's answer (a C int) when no byte waits


class ClientSide(Protocol):
    """What the app side may ask of the client connection it serves (``HttpIngress``): its
    transport and owner, flow control, and to be told how the response goes."""

    transport: asyncio.Transport
    owner: ConnectionOwner

    def touch(self) -> None:
        """A byte moved: the exchange is making progress."""

    def pause(self, reason: str) -> None:
        """Stop reading the client, for ``reason``, until resumed for it."""

    def resume(self, reason: str) -> None:
        """Read the client again, once no other reason holds it."""

    def response_started(self) -> None:
        """The final response (or 101) has begun to reach the client."""

    def response_done(self, app: HttpApp, keep_alive: bool, reusable: bool) -> None:
        """The response is complete. ``keep_alive``: the response lets its connection persist
        (as the client saw it); ``reusable``: besides, the app connection may serve another
        request (nothing came past the response's end, and the request left the app in a
        known state: ``Request.app_reusable``)."""

    def unasked_switch(self, app: HttpApp) -> None:
        """The app answered 101 to a request that may not switch protocols."""

    def tunnel(self, app: HttpApp, rest: bytes) -> None:
        """The app switched protocols; ``rest`` followed its 101 in the same read."""

    def app_lost(self, app: HttpApp, reason: str) -> None:
        """The app connection is gone."""


class HttpApp(asyncio.Protocol):
    """The plaintext connection to the app behind one client connection: each response is
    parsed only to re-frame it and find its end."""

    transport: asyncio.Transport

    def __init__(self, ingress: ClientSide) -> None:
        self.ingress = ingress
        self._parser: httptools.HttpResponseParser | None = None
        self._expecting = False  # a response is due and none of it has arrived
        self._passing = 0  # bytes still to come of a simple response passed as it comes
        self._request: Request | None = None
        self._reason = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._in_body = False
        self._chunked = False
        self._until_close = False  # the response ends when the app closes
        self._keep_alive = False
        self._complete = False  # the final response has ended: any byte more is past its end
        self._forced = False  # the app's Connection field was dropped (see on_headers_complete)
        self._tunnel = False
        self._unasked = False  # a 101 that no upgrade request asked for
        self._deadline: asyncio.TimerHandle | None = None
        self.reused = False  # an earlier exchange completed on this connection
        self.received = False  # the app has sent something for the current exchange
        self._fd = -1  # the socket's, to see whether bytes wait unread (``idle``)
        # What one read of the app produces for the client goes out as one write: the TLS
        # transport makes a record of every write, so head and body pieces would each cost one.
        self._out: list[bytes] = []

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.ingress.transport.write(data)

    def expect(self, request: Request) -> None:
        """The next response answers ``request``."""
        self.reused = self._request is not None
        self.received = False
        self._parser = None  # made, and the fields it fills reset, when the response needs it
        self._expecting = True
        self._passing = 0
        self._request = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ingress.owner.track(self.transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()

    def idle(self) -> bool:
        """Whether the connection may carry the next request: not closing, and no byte waiting
        in the kernel unread (bytes nobody asked for, that would pass for the next answer).
        Asked before each request on a reused connection: one ioctl, about 1.3 microseconds
        on asyncio and uvloop alike (a loaded 2-core VM, best of 7 x 20,000 calls)."""
        if self.transport.is_closing() or self._fd < 0:
            return False
        try:
            return fcntl.ioctl(self._fd, termios.FIONREAD, _NONE_UNREAD) == _NONE_UNREAD
        except OSError:
            return False

    def close(self) -> None:
        """Close once flushed; an app that does not take what is left within
        ``inactivity_timeout`` is cut off."""
        if self._deadline is None:
            self.transport.close()
            timeout = self.ingress.owner.limits.inactivity_timeout
            self._deadline = asyncio.get_running_loop().call_later(timeout, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        self.ingress.touch()
        if self._tunnel:
            self.ingress.transport.write(data)
            return
        self.received = True
        if self._parser is None:
            if self._passing:
                self._pass(data)
                return
            if not self._expecting:  # bytes nobody asked for
                self.transport.close()
                return
            self._expecting = False
            assert self._request is not None
            length = simple_response_length(data, self._request)
            if length is not None and length >= len(data):
                # The common case: a simple response whose head came whole. It goes to the
                # client as it comes, without the parser's callbacks.
                self._status = int(data[9:12])
                self._passing = length
                self.ingress.response_started()
                self._pass(data)
                return
            self._parser = httptools.HttpResponseParser(self)
            self._reason.clear()
            self._headers, self._trailers = [], []
            self._status, self._in_body, self._chunked, self._until_close = 0, False, False, False
            self._complete = self._forced = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            self._parser = None
            self._tunnel = True
            self.ingress.tunnel(self, data[int(exc.args[0]) :])
        except httptools.HttpParserError as exc:
            self._flush()
            if self._unasked:
                self._parser = None
                self.ingress.unasked_switch(self)
            elif self._complete:  # another message began, or bytes that are none: dropped
                self._finish(clean=False)
            elif isinstance(exc.__context__, Stop):
                self._finish(clean=True)
            else:
                self._parser = None
                self.transport.close()
                self.ingress.app_lost(self, f"malformed response: {exc}")
        else:
            self._flush()
            if self._complete:
                self._finish(clean=True)
            elif self._status == 101 and not self._tunnel:  # llhttp did not switch: no tunnel
                self._parser = None
                self.ingress.unasked_switch(self)

    def _pass(self, data: bytes) -> None:
        """Part of a simple response: to the client as it came. Bytes past its end (nothing
        asked for them) are dropped with the app connection; the client's goes on."""
        if len(data) < self._passing:
            self._passing -= len(data)
            self.ingress.transport.write(data)
            return
        self.ingress.transport.write(data[: self._passing] if len(data) > self._passing else data)
        clean = len(data) == self._passing
        self._passing = 0
        self._done(True, clean)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ingress.owner.forget(self.transport)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._until_close and self._parser is not None:
            self._keep_alive = False
            self._finish(clean=True)
        self._parser = None
        self.ingress.app_lost(self, "the app closed the connection")

    def pause_writing(self) -> None:
        self.ingress.pause("app")

    def resume_writing(self) -> None:
        self.ingress.touch()
        self.ingress.resume("app")

    # Parser callbacks (httptools).

    def on_message_begin(self) -> None:
        if self._complete:  # a message after the final response, in the same read
            raise Stop

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        (self._trailers if self._in_body else self._headers).append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self._request is not None
        status = self._status = self._parser.get_status_code()
        if status == 101 and not (self._request.may_upgrade and self._parser.should_upgrade()):
            self._unasked = True  # nothing of it reaches the client
            raise Stop
        head = b"HTTP/%s %d %s\r\n" % (
            self._parser.get_http_version().encode(),
            status,
            bytes(self._reason),
        )
        fields = self._headers
        if self._request.app_close and self._parser.get_http_version() == "1.1":
            # The ingress told the app to close, not the client: the app's answer to that
            # (``Connection: close``) is for this hop alone, and the client's connection goes on.
            self._forced = True
            fields = [f for f in fields if f[0].lower() != b"connection"]
        lines = [head, *header_lines(fields), b"\r\n"]
        if status >= 200 or status == 101:
            self.ingress.response_started()
        elif self._request.version == "1.0":
            return  # HTTP/1.0 clients do not know interim responses
        self._out.extend(lines)
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
            raise Stop

    def on_body(self, body: bytes) -> None:
        self._out.extend(body_piece(body, self._chunked))

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._status < 200:  # interim (100, 103) or 101: the parser carries on
            self._reason.clear()
            self._headers = []
            return
        self._keep_alive = self._parser.should_keep_alive()
        # Parsing goes on: should the read hold more, llhttp begins another message (or fails
        # on bytes that are none), and the connection is not used again.
        self._complete = True

    def _finish(self, *, clean: bool) -> None:
        """The response has ended; ``clean``: no byte came past its end."""
        self._parser = None
        if self._chunked:
            self._out.append(last_chunk(self._trailers))
        self._flush()
        self._done(self._keep_alive, clean)

    def _done(self, keep_alive: bool, clean: bool) -> None:
        assert self._request is not None
        reusable = keep_alive and clean and self._request.app_reusable()
        if self._forced and not self._until_close:
            keep_alive = True  # as the client saw it: no Connection field, HTTP/1.1
        self.ingress.response_done(self, keep_alive, reusable)
