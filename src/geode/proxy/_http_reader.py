"""Reading requests with httptools (llhttp) for the HTTP ingress: each request built as far as
it has been read, its head and trailers held to ``max_header_bytes``, its framing checked, and
parsing done a step at a time so that it can stop once enough requests wait.

What becomes of a request (queued, forwarded, answered, refused) is its connection's business,
told through ``RequestSink``; the reader only reads.

**Framing.** A request whose framing two parsers could read two ways is refused, and the
connection closed after the answer, as for any malformed request (the refusal is logged):

- by llhttp, with 400: ``Content-Length`` with ``Transfer-Encoding`` (either first), two
  ``Content-Length`` fields (equal or not) or a list in one, a ``Transfer-Encoding`` whose
  last coding is not ``chunked`` (tests pin these);
- here, with 400: ``Transfer-Encoding`` in HTTP/1.0; more than one ``Transfer-Encoding``
  field (``identity`` then ``chunked``); a value that is not a list of codings ending in one
  ``chunked`` (``,chunked``); a body (``Content-Length`` over 0, or chunked) on a request with
  an ``Upgrade`` field, whether llhttp takes it as an upgrade or not (the body would be held
  back until a 101, or read as the new protocol);
- here, with 417: an ``Expect`` other than one ``100-continue`` (RFC 9110 10.1.1);
- here, with 501: codings other than ``chunked`` before it (``gzip, chunked``), which the
  proxy does not implement (RFC 9112 6.1); 505 for a version other than 1.0 and 1.1.

A request the app may leave partly unread is marked ``Request.app_may_skip`` (its app
connection then serves no other: see ``_http_ingress``): any body (unless the manifest says the
app reads every body in full: ``IngressRoute.app_reads_bodies``), any ``Expect``, any
``Upgrade``. The app gets the ingress's own ``Connection`` field (``_own_connection_field``):
``close`` after a body or an ``Expect`` (``Request.app_close``), so that an app that skips the
body does not read it as its next request; else only the options ``close``, ``keep-alive`` and
``upgrade`` of the client's.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from geode.proxy._http_message import Request, Stop

__all__ = ["RequestReader", "RequestSink"]

# How much is parsed at once, so that parsing can stop near the sink's bound even when one read
# holds thousands of tiny requests: at most a step's worth of them more. A body of known length
# is parsed in one go, a chunked one in larger steps, none far past a line that may be its end.
_PARSE_STEP = 1024
_CHUNKED_STEP = 16 * 1024


def _transfer_coding_refusal(values: list[bytes]) -> tuple[int, str] | None:
    """The status and reason to refuse a request with these ``Transfer-Encoding`` values,
    unless they are exactly one field holding the one coding ``chunked`` (in any case, with
    optional whitespace). Several fields are ambiguous (which did the app read?): 400; so is a
    value that is no list of codings ending in one ``chunked`` (llhttp lets ``,chunked``
    through). A list of other codings before ``chunked`` (``gzip, chunked``) is well formed
    but not implemented here: 501, as RFC 9112 6.1 asks for a coding the server does not
    understand. Either way the connection is closed, as for any malformed request."""
    if len(values) > 1:
        return 400, "more than one Transfer-Encoding field"
    codings = [coding.strip(b" \t").lower() for coding in values[0].split(b",")]
    if codings == [b"chunked"]:
        return None
    if all(codings) and codings[-1] == b"chunked" and b"chunked" not in codings[:-1]:
        return 501, "transfer codings other than chunked are not implemented"
    return 400, "malformed Transfer-Encoding"


# The connection options the app may be told, of those a client's ``Connection`` field holds.
_CONNECTION_OPTIONS = (b"close", b"keep-alive", b"upgrade")


def _own_connection_field(request: Request, options: list[bytes] | None) -> None:
    """Replace the client's ``Connection`` fields (whose options are ``options``; ``None``:
    there is none) by the ingress's own. The app gets the options it must act on (``close``,
    ``keep-alive``, ``upgrade``), never the names of other fields (``Connection: X-Geode-Peer``
    would have an app that is itself a proxy drop the identity the ingress adds); and ``close``
    alone after a request it may leave partly unread (``Request.app_close``: a body, or an
    ``Expect``), so that an app that skips the body (an error answered first, a handler that
    never reads it) does not read it as its next request, one the policy never judged."""
    if options is None and not request.app_close:
        return  # no Connection field: nothing to do (the common case)
    if request.app_close:
        own = b"close"
    else:
        assert options is not None
        own = b", ".join(o for o in _CONNECTION_OPTIONS if o in options)
    request.headers = [h for h in request.headers if h[0].lower() != b"connection"]
    if own:
        request.headers.append((b"Connection", own))


class RequestSink(Protocol):
    """What the reader tells the connection it reads for."""

    def full(self) -> bool:
        """As many requests wait as may: parse nothing more for now."""

    def begun(self, request: Request) -> None:
        """A request has begun (its head is still to come)."""

    def body(self, request: Request, piece: bytes) -> None:
        """A piece of ``request``'s body (de-chunked)."""

    def complete(self, request: Request) -> None:
        """``request`` has been read to its end, trailers included."""

    def upgraded(self, rest: bytes) -> None:
        """The last request switches protocols: ``rest`` (and all after it) is no request."""

    def failed(self, request: Request | None, status: int, reason: str) -> None:
        """Nothing more is read: the request being read (``None``: between requests) is to be
        answered ``status`` unless it has an error already, and the connection closed."""


class RequestReader:
    """The requests of one client connection, fed as they are read."""

    def __init__(
        self, sink: RequestSink, max_header_bytes: int, *, app_reads_bodies: bool = False
    ) -> None:
        self._sink = sink
        self._max = max_header_bytes
        # The manifest says the app reads every body in full (``IngressRoute``): a body leaves
        # its connection in a known state.
        self._app_reads_bodies = app_reads_bodies
        self._parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None  # begun, not yet read to its end
        self.stopped = False  # no more requests are read (malformed input, or an upgrade)
        self._ended_in_read = False  # a request ended in the piece being parsed

    def feed(self, data: bytes) -> bytes:
        """Parse a step at a time, until ``data`` is used up, reading stops, or the sink is
        full; what is left (only then) is returned, for the connection to feed again later."""
        view = memoryview(data)
        start = 0
        while start < len(view) and not self.stopped:
            if self._sink.full():
                return bytes(view[start:])
            request = self.parsing
            step = _PARSE_STEP
            if request is not None and request.head_done:
                if request.remaining:  # all body: no request can begin in it
                    step = request.remaining
                elif request.chunked and data[start : start + 1] != b"0":
                    # The last chunk is a line "0": no further than a step past the first
                    # line that begins with 0.
                    last = data.find(b"\n0", start, start + _CHUNKED_STEP)
                    step = _CHUNKED_STEP if last < 0 else last + 2 - start + _PARSE_STEP
            piece = view[start : start + step]
            partial = request if request is not None and not request.head_done else None
            trailing = request if request is not None and request.maybe_trailers else None
            self._ended_in_read = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                self.stopped = True
                self._sink.upgraded(bytes(view[start + int(exc.args[0]) :]))
                return b""
            except httptools.HttpParserError as exc:
                self.stop(400, f"malformed request: {exc}")
                return b""
            start += len(piece)
            self._check_head_size(self.parsing, partial, len(piece))
            if trailing is not None and trailing is self.parsing and trailing.maybe_trailers:
                # The whole piece was trailers (or the CRLFs around them): llhttp reports a
                # trailer field only once complete, and httptools holds it until then.
                trailing.trailer_read += len(piece)
                if trailing.trailer_read > self._max:
                    self.stop(431, "request trailers too large")
        return b""

    def stop(self, status: int, reason: str) -> None:
        """Read no more; the request being read gets ``status`` (see ``RequestSink.failed``)."""
        self.stopped = True
        request, self.parsing = self.parsing, None
        self._sink.failed(request, status, reason)

    def _check_head_size(self, request: Request | None, partial: Request | None, n: int) -> None:
        """Refuse a head that has grown too large before it is complete. The read in which it
        began counts only if it began there at the start: after another message, where it
        began is unknown (its exact size is checked once complete)."""
        if request is None or request.head_done:
            return
        if request is partial or not request.began_mid_read:
            request.head_read += n
            if request.head_read > self._max:
                self.stop(431, "request head too large")

    # Parser callbacks (httptools).

    def on_message_begin(self) -> None:
        self.parsing = Request(began_mid_read=self._ended_in_read)
        self._sink.begun(self.parsing)

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.url += url
        self.parsing.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        if request.head_done:
            request.trailers.append((name, value))
            request.trailer_size += len(name) + len(value) + 4
            if request.trailer_size > self._max:
                request.error, request.reason = 431, "request trailers too large"
                raise Stop
        else:
            if len(name) == 4 and name.lower() == b"host" and _has_host(request.headers):
                # RFC 9112 3.2: apps take the first or the last.
                request.error, request.reason = 400, "more than one Host"
                raise Stop
            request.headers.append((name, value))
            request.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.head_done = True
        if request.head_size > self._max:
            request.error, request.reason = 431, "request head too large"
            raise Stop
        parser = self._parser
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        codings: list[bytes] = []  # the Transfer-Encoding values
        options: list[bytes] | None = None  # the Connection options, if there is the field
        expect = upgrade = False
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == b"transfer-encoding":  # llhttp has checked that chunked comes last
                codings.append(value)
                if request.version == "1.0":
                    # RFC 9112 6.1: faulty framing. An HTTP/1.0 app might ignore it and read
                    # the chunks as the next request, one the policy never saw.
                    request.error, request.reason = 400, "Transfer-Encoding in HTTP/1.0"
                    raise Stop
            elif lowered == b"content-length":  # llhttp has checked it: one, digits only
                request.remaining = int(value)
            elif lowered == b"expect":
                if expect or value.strip(b" \t").lower() != b"100-continue":
                    # RFC 9110 10.1.1: the one expectation defined; anything else (or two
                    # fields) would be met, or not, by the app as it pleases.
                    request.error, request.reason = 417, "only Expect: 100-continue is supported"
                    raise Stop
                expect = request.expects_continue = True
            elif lowered == b"upgrade":
                upgrade = True
            elif lowered == b"connection":
                if options is None:
                    options = []
                options.extend(o.strip(b" \t").lower() for o in value.split(b","))
        if codings:
            refusal = _transfer_coding_refusal(codings)
            if refusal is not None:
                request.error, request.reason = refusal
                raise Stop
            request.chunked = True
            request.remaining = None
        body = request.chunked or bool(request.remaining)
        if request.version not in ("1.0", "1.1"):
            request.error, request.reason = 505, f"HTTP/{request.version} is not supported"
            raise Stop
        if upgrade and body:
            # The body would be held back until the app switches protocols (or be read as the
            # new protocol): ambiguous either way.
            request.error, request.reason = 400, "a body on an Upgrade request"
            raise Stop
        skippable = body and not self._app_reads_bodies
        request.app_may_skip = skippable or expect or upgrade
        request.app_close = skippable or expect
        _own_connection_field(request, options)
        request.replayable = not body and request.method in ("GET", "HEAD", "OPTIONS")

    def on_chunk_header(self) -> None:
        if self.parsing is not None:
            self.parsing.maybe_trailers = True  # until data follows: the last chunk has none

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.maybe_trailers = False
        if request.remaining:
            request.remaining -= len(body)
        self._sink.body(request, body)

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.done = True
        self.parsing = None
        self._ended_in_read = True
        self._sink.complete(request)


def _has_host(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"host" for name, _ in headers)
