"""HTTP/1.1 messages as the transparent TLS proxy's HTTP ingress sees them: a request as far
as it has been read, the re-framing both directions share, and the short cut.

**The short cut** is a narrow exception to parsing with httptools (llhttp), there only because
most requests and responses in a mesh are this plain. It takes, with one strict regular
expression and no parser callbacks:

- a request (``simple_request``) when one read holds exactly one complete head and nothing
  after it: method GET, OPTIONS or DELETE; an origin-form target (``/`` then visible ASCII);
  ``HTTP/1.1``; single spaces in the request line; every field ``token ":" value`` with a value
  of visible characters, spaces and tabs (no obs-fold, no bare CR or LF, no NUL or DEL); no
  field that frames a message, changes the connection or the protocol, or that only the proxy
  sets (``_REQUEST_CAREFUL``: Content-Length, Transfer-Encoding, Connection, Upgrade, Expect,
  HTTP2-Settings, TE, Trailer, Keep-Alive, Proxy-Connection, X-Geode-Peer in either spelling);
  at most ``max_header_bytes``. It reaches the app as the client sent it, ``X-Geode-Peer``
  appended;
- a response (``simple_response_length``) whose head arrives whole at the start of a read:
  ``HTTP/1.1``, a final status 200-599 other than 204 and 304, exactly one Content-Length of
  digits, none of ``_RESPONSE_CAREFUL`` (Transfer-Encoding, Connection, Upgrade, Trailer,
  Keep-Alive, Proxy-Connection), answering a request that was neither HEAD nor an upgrade. It
  passes to the client as the app sent it, up to that length.

Everything else (any other method or version, a body, a head split over reads or followed by
more bytes, pipelined requests, any careful field, chunked or close-delimited responses,
interim responses) takes the full parser, as does a request read while an earlier one of the
same connection is still queued or partly parsed. Either way the request gets the same policy
decision, path checks, timers and limits; tests check that llhttp reads every head the short
cut takes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "Request",
    "Stop",
    "body_piece",
    "header_lines",
    "last_chunk",
    "simple_request",
    "simple_response_length",
]

_PEER_HEADER = b"x-geode-peer"  # set by the proxy alone: a client's own is dropped
_SHOWN = 256  # how much of a request target a log line shows


class Stop(Exception):
    """Raised in a parser callback to stop parsing where a message ends."""


@dataclass(eq=False, slots=True)
class Request:
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
    remaining: int | None = None  # body bytes still to come, when Content-Length gives them
    maybe_trailers: bool = False  # after a chunk header with no data yet: perhaps the trailers
    trailer_size: int = 0  # bytes of the complete trailer fields
    trailer_read: int = 0  # bytes of the reads that began within the trailers
    may_upgrade: bool = False  # flagged as an upgrade by llhttp, and passed every check
    error: int | None = None  # answer this status and close the connection
    reason: str = ""
    raw: bytes | None = None  # a simple request's head as the app gets it (see simple_request)
    app_target: bytes | None = None  # the normal target, set by the gate if it is not ``url``

    def head_for_app(self, peer: bytes) -> list[bytes]:
        """The head the app gets: the client's, with the normal target (``app_target``) if the
        client's is not, without any ``X-Geode-Peer``, with ours."""
        target = self.app_target
        if self.raw is not None:
            if target is None:  # the common case: the head as it came
                return [self.raw[:-2] + peer]
            fields = self.raw.index(b"\r\n")  # a simple request's line is its method and target
            return [b"%s %s HTTP/1.1" % (self.method.encode(), target), self.raw[fields:-2] + peer]
        if target is None:
            target = bytes(self.url)
        line = b"%s %s HTTP/%s\r\n" % (self.method.encode(), target, self.version.encode())
        return [line, *header_lines(self.headers, peer=False), peer]

    def target(self) -> str:
        """The request target for a log line (logged with ``%r``: it may hold anything)."""
        shown = bytes(self.url[:_SHOWN]).decode("latin-1")
        return shown + "..." if len(self.url) > _SHOWN else shown


def header_lines(headers: Iterable[tuple[bytes, bytes]], *, peer: bool = True) -> list[bytes]:
    """Header lines; with ``peer=False`` without ``X-Geode-Peer``, which only the proxy sets
    (nor ``X_Geode_Peer``: CGI-style apps read both as ``HTTP_X_GEODE_PEER``)."""
    return [
        b"%s: %s\r\n" % h
        for h in headers
        if peer or h[0].lower().replace(b"_", b"-") != _PEER_HEADER
    ]


def body_piece(data: bytes, chunked: bool) -> list[bytes]:
    # Chunked bodies are re-framed piece by piece: the receiver decodes them the same way.
    return [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data]


def last_chunk(trailers: list[tuple[bytes, bytes]], *, peer: bool = True) -> bytes:
    return b"".join([b"0\r\n", *header_lines(trailers, peer=peer), b"\r\n"])


# The fast path of the HTTP ingress (see ``simple_request``): a head the full parser would read
# the same way and that needs none of its care. Request line with single spaces, origin-form
# target, HTTP/1.1; fields ``token ":" value`` with visible characters, spaces and tabs only
# (no obs-fold, no bare CR or LF, no NUL or DEL); nothing after the blank line. Fields that
# frame a message, change the connection or the protocol, or that only the proxy sets are left
# to the full parser (the lookaheads; a response's one ``Content-Length`` is read apart).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb":[\t !-~\x80-\xff]*\r\n"
_REQUEST_CAREFUL = (
    rb"content-length|transfer-encoding|connection|upgrade|expect|http2-settings|te|trailer|"
    rb"keep-alive|proxy-connection|x[-_]geode[-_]peer"
)
_RESPONSE_CAREFUL = rb"transfer-encoding|connection|upgrade|trailer|keep-alive|proxy-connection"
_SIMPLE_REQUEST = re.compile(
    rb"(GET|OPTIONS|DELETE) (/[!-~]*) HTTP/1\.1\r\n"
    rb"(?:(?!(?i:" + _REQUEST_CAREFUL + rb")[\t ]*:)" + _TOKEN + _VALUE + rb")*\r\n"
)
# A response's fields: any but the careful ones and Content-Length, then exactly one
# Content-Length of digits, then any but those again.
_RESPONSE_FIELD = (
    rb"(?:(?!(?i:" + _RESPONSE_CAREFUL + rb"|content-length)[\t ]*:)" + _TOKEN + _VALUE + rb")*"
)
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.1 (?!204|304)[2-5][0-9][0-9] [\t !-~\x80-\xff]*\r\n"
    + _RESPONSE_FIELD
    + rb"(?i:content-length):[\t ]*([0-9]{1,15})[\t ]*\r\n"
    + _RESPONSE_FIELD
    + rb"\r\n"
)
_METHODS = {b"GET": "GET", b"OPTIONS": "OPTIONS", b"DELETE": "DELETE"}


def simple_request(data: bytes, max_bytes: int) -> Request | None:
    """``data`` as a request, if it is exactly one complete, bodiless, simple head (a GET,
    OPTIONS or DELETE in HTTP/1.1 with none of the fields in ``_REQUEST_CAREFUL``): the common
    case, read without the full parser's callbacks. Anything else gives ``None``, and the full
    parser reads it. The head goes to the app as it came, with ``X-Geode-Peer`` added."""
    if len(data) > max_bytes or not data.endswith(b"\r\n\r\n"):
        return None
    match = _SIMPLE_REQUEST.fullmatch(data)
    if match is None:
        return None
    method = _METHODS[match[1]]
    return Request(
        url=bytearray(match[2]),
        method=method,
        keep_alive=True,
        replayable=method != "DELETE",
        head_size=len(data),
        head_done=True,
        done=True,
        raw=data,
    )


def simple_response_length(data: bytes, request: Request) -> int | None:
    """If ``data`` begins with a simple final response head to ``request`` (HTTP/1.1, status
    200-599 but 204 and 304, one ``Content-Length``, none of ``_RESPONSE_CAREFUL``; the request
    not HEAD nor an upgrade), the length of that whole response; else ``None``."""
    if request.method == "HEAD" or request.may_upgrade:
        return None
    match = _SIMPLE_RESPONSE.match(data)
    return None if match is None else match.end() + int(match[1])
