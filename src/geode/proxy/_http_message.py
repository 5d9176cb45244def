"""HTTP/1.1 messages as the transparent TLS proxy's HTTP ingress sees them: a request as far
as it has been read, the re-framing both directions share, what the app may see of a request's
fields, and the short cut.

**What the app sees** of a request's fields. Apps and their servers take some fields as facts
about the request that the proxy vouches for: who the client is, the scheme, the path, the
method. The policy judged none of them, so none comes from the client:

- a field whose name holds an underscore, or any character but letters, digits and hyphens,
  is dropped (as nginx does by default): CGI-style servers read ``X_Forwarded_For`` as
  ``X-Forwarded-For``, and gunicorn takes ``SCRIPT_NAME`` from a trusted front end (which the
  ingress, on 127.0.0.1, is) to move the path;
- the forwarding fields, ``Forwarded``, every ``X-Forwarded-*``, ``X-Real-IP``, ``Client-IP``,
  ``X-Client-IP``, ``True-Client-IP``, ``X-Cluster-Client-IP``, ``X-Scheme``, ``X-Url-Scheme``,
  ``Front-End-Https``, ``X-Original-Host`` and ``X-Host``, and the fields frameworks take as
  the request line, ``X-Original-URL``, ``X-Rewrite-URL``, ``X-HTTP-Method-Override``,
  ``X-HTTP-Method`` and ``X-Method-Override``, are dropped (a policy that allows GET must not
  become a DELETE);
- ``X-Geode-Peer``, which only the proxy sets, is dropped;
- a request with more than one ``Host`` gets 400 (RFC 9112 3.2: apps pick the first or the
  last); a request without one passes (the policy does not judge it, and an HTTP/1.0 request
  needs none);
- the ingress then adds, after the client's fields, ``X-Forwarded-For`` (the client's IP
  address as the ingress's socket sees it), ``X-Forwarded-Proto: https`` and ``X-Geode-Peer``
  (the verified SPIFFE ID) (``added_fields``). ``Forwarded`` is not set: the servers and
  frameworks that read it read ``X-Forwarded-*`` too, and one source cannot disagree with
  itself.

Everything else reaches the app as the client sent it, in its order (the full parser's path
rebuilds each line as ``name: value``). Trailers get the same filter (``header_lines``).

**The short cut** is a narrow exception to parsing with httptools (llhttp), there only because
most requests and responses in a mesh are this plain. It takes, with one strict regular
expression and no parser callbacks:

- a request (``simple_request``) when one read holds exactly one complete head and nothing
  after it: method GET, OPTIONS or DELETE; an origin-form target (``/`` then visible ASCII);
  ``HTTP/1.1``; single spaces in the request line; every field ``token ":" value`` with a value
  of visible characters, spaces and tabs (no obs-fold, no bare CR or LF, no NUL or DEL), its
  name of letters, digits and hyphens only; at most one ``Host``; no field that frames a
  message, changes the connection or the protocol (``_REQUEST_CAREFUL``: Content-Length,
  Transfer-Encoding, Connection, Upgrade, Expect, HTTP2-Settings, TE, Trailer, Keep-Alive,
  Proxy-Connection), nor one the app must not get from the client (``_DROPPED``, above); at
  most ``max_header_bytes``. It reaches the app as the client sent it (its request line rebuilt
  if the target is not in normal form: ``_http_gate``), the added fields appended;
- a response (``simple_response_length``) whose head arrives whole at the start of a read:
  ``HTTP/1.1``, a final status 200-599 other than 204 and 304, exactly one Content-Length of
  digits, none of ``_RESPONSE_CAREFUL`` (Transfer-Encoding, Connection, Upgrade, Trailer,
  Keep-Alive, Proxy-Connection), answering a request that was neither HEAD nor an upgrade. It
  passes to the client as the app sent it, up to that length.

Everything else (any other method or version, a body, a head split over reads or followed by
more bytes, pipelined requests, any careful or dropped field, chunked or close-delimited
responses, interim responses) takes the full parser, as does a request read while an earlier one
of the same connection is still queued or partly parsed. Either way the request gets the same
policy decision, path checks, field filter, timers and limits; tests check that llhttp reads
every head the short cut takes the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "Request",
    "Stop",
    "added_fields",
    "body_piece",
    "for_app",
    "header_lines",
    "last_chunk",
    "simple_request",
    "simple_response_length",
]

# Fields the app never gets from a client (see the module docstring), lower case; besides
# these, every ``X-Forwarded-*`` and every name with an underscore.
_DROPPED = frozenset(
    {
        b"x-geode-peer",  # set by the proxy alone
        b"forwarded",
        b"x-real-ip",
        b"client-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        # Read as the scheme, the client or the host by some servers and frameworks that trust
        # the proxy in front (Tornado's and Jupyter's X-Scheme, load balancers' others).
        b"x-scheme",
        b"x-url-scheme",
        b"front-end-https",
        b"x-cluster-client-ip",
        b"x-original-host",
        b"x-host",
    }
)
# A name the app may get: letters, digits and hyphens only (as nginx's default). Other token
# characters (``X.Forwarded.For``) are names servers may map onto the dropped ones.
_PLAIN_NAME = re.compile(rb"[-0-9A-Za-z]+")
_DROPPED_PREFIX = b"x-forwarded-"
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
    # The app may leave some of it unread (any body, any Expect, any Upgrade): its connection
    # serves no other request (``app_reusable``).
    app_may_skip: bool = False
    app_close: bool = False  # the app is told ``Connection: close`` (a body, or an Expect)
    error: int | None = None  # answer this status and close the connection
    reason: str = ""
    raw: bytes | None = None  # a simple request's head as the app gets it (see simple_request)
    app_target: bytes | None = None  # the normal target, set by the gate if it is not ``url``

    def head_for_app(self, added: bytes) -> list[bytes]:
        """The head the app gets: the request line, with the normal target (``app_target``)
        if the client's is not, the client's fields as the app may see them
        (``header_lines``), then ``added`` (``added_fields``, with the blank line)."""
        target = self.app_target
        if self.raw is not None:  # the short cut took only fields the app may see
            if target is None:  # the common case: the head as it came
                return [self.raw[:-2] + added]
            fields = self.raw.index(b"\r\n")  # a simple request's line is its method and target
            return [b"%s %s HTTP/1.1" % (self.method.encode(), target), self.raw[fields:-2] + added]
        if target is None:
            target = bytes(self.url)
        line = b"%s %s HTTP/%s\r\n" % (self.method.encode(), target, self.version.encode())
        return [line, *header_lines(self.headers, peer=False), added]

    def app_reusable(self) -> bool:
        """Whether the app connection may serve another request once this one has been
        answered in full. Not after a request whose body the app may have left unread (it
        would read it as the next request, one the policy never judged): any body, any
        ``Expect``, any ``Upgrade``. Nor after a HEAD: a late body to it would pass for the
        answer to the next request."""
        return not (self.app_may_skip or self.method == "HEAD")

    def target(self) -> str:
        """The request target for a log line (logged with ``%r``: it may hold anything)."""
        shown = bytes(self.url[:_SHOWN]).decode("latin-1")
        return shown + "..." if len(self.url) > _SHOWN else shown


def header_lines(headers: Iterable[tuple[bytes, bytes]], *, peer: bool = True) -> list[bytes]:
    """Header lines; with ``peer=False`` (a request's fields or trailers, bound for the app)
    only those the app may get from a client (``for_app``)."""
    if peer:
        return [b"%s: %s\r\n" % h for h in headers]
    lines = []
    for h in headers:
        allowed = _VERDICTS.get(h[0])
        if allowed is None:
            allowed = _judged(h[0])
        if allowed:
            lines.append(b"%s: %s\r\n" % h)
    return lines


def for_app(name: bytes) -> bool:
    """Whether the app may get a client's field of this name (see the module docstring)."""
    if _PLAIN_NAME.fullmatch(name) is None:
        return False
    lowered = name.lower()
    return lowered not in _DROPPED and not lowered.startswith(_DROPPED_PREFIX)


# ``for_app`` asked once per field name as sent: clients send the same few names, and a lookup
# here costs a fraction of the check. Only short names are kept, at most _VERDICTS_MAX of them
# (then all are forgotten), so that distinct or long names cannot make it grow.
_VERDICTS: dict[bytes, bool] = {}
_VERDICTS_MAX = 1024


def _judged(name: bytes) -> bool:
    allowed = for_app(name)
    if len(name) <= 64:
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        _VERDICTS[name] = allowed
    return allowed


def added_fields(peername: object, peer: str) -> bytes:
    """The fields the ingress adds to every request head of one client connection, and the
    blank line that ends the head: ``X-Forwarded-For`` (the client's IP address, from its
    socket's ``peername``; left out if there is none), ``X-Forwarded-Proto: https`` (clients
    reach the ingress over TLS alone) and ``X-Geode-Peer``. Built once per connection."""
    lines = []
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        lines.append(b"X-Forwarded-For: %s\r\n" % peername[0].encode("ascii", "replace"))
    lines.append(b"X-Forwarded-Proto: https\r\n")
    lines.append(b"X-Geode-Peer: %s\r\n\r\n" % peer.encode())
    return b"".join(lines)


def body_piece(data: bytes, chunked: bool) -> list[bytes]:
    # Chunked bodies are re-framed piece by piece: the receiver decodes them the same way.
    return [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data]


# Fields that mean nothing in a trailer section (RFC 9110 6.5.1: framing, routing, the
# connection, request modifiers) but that an app merging trailers into the head would act on.
_NOT_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"host",
        b"expect",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"range",
        b"authorization",
        b"cookie",
    }
)


def last_chunk(trailers: list[tuple[bytes, bytes]], *, peer: bool = True) -> bytes:
    """The last chunk with ``trailers``; with ``peer=False`` (a request's, bound for the app)
    only those ``header_lines`` lets through and that may be trailers (``_NOT_TRAILERS``)."""
    if not peer:
        trailers = [t for t in trailers if t[0].lower() not in _NOT_TRAILERS]
    return b"".join([b"0\r\n", *header_lines(trailers, peer=peer), b"\r\n"])


# The fast path of the HTTP ingress (see ``simple_request``): a head the full parser would read
# the same way and that needs none of its care. Request line with single spaces, origin-form
# target, HTTP/1.1; fields ``token ":" value`` with visible characters, spaces and tabs only
# (no obs-fold, no bare CR or LF, no NUL or DEL); nothing after the blank line. Fields that
# frame a message, change the connection or the protocol, that the app must not get from a
# client (``_DROPPED``; and names of other characters than letters, digits and hyphens: a
# request's names here have none), and a second Host, are left to the full parser (the
# lookaheads; a response's one ``Content-Length`` and a request's one ``Host`` are read apart).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_NAME_CHAR = rb"[\-0-9A-Za-z]"  # a name the app may get (``_PLAIN_NAME``)
_NAME = _NAME_CHAR + rb"+"
_VALUE = rb":[\t !-~\x80-\xff]*\r\n"
_REQUEST_CAREFUL = (
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"expect",
    b"http2-settings",
    b"te",
    b"trailer",
    b"keep-alive",
    b"proxy-connection",
)
_RESPONSE_CAREFUL = rb"transfer-encoding|connection|upgrade|trailer|keep-alive|proxy-connection"


def _any_name(patterns: Iterable[bytes]) -> bytes:
    """Any of ``patterns`` (lower case names, or patterns beginning with a letter) in any case,
    grouped by first letter behind a plain character class: re passes over a group at its first
    byte, where each case-insensitive alternative would cost a backtracking point of its own.
    (Listing ~25 names flat made every field of a simple head ~140 ns dearer.)"""
    groups: dict[bytes, list[bytes]] = {}
    for pattern in patterns:
        groups.setdefault(pattern[:1], []).append(pattern[1:])
    return b"|".join(
        b"[%s%s](?i:%s)" % (first.upper(), first, b"|".join(rests))
        for first, rests in sorted(groups.items())
    )


# A request's fields: any but the careful, the dropped ones and Host, then at most one Host,
# then any but those again.
_REQUEST_OTHER = _any_name(
    [*_REQUEST_CAREFUL, *sorted(_DROPPED), _DROPPED_PREFIX + _NAME_CHAR + b"*", b"host"]
)
_REQUEST_FIELD = rb"(?:(?!(?:" + _REQUEST_OTHER + rb")[\t ]*:)" + _NAME + _VALUE + rb")*"
_SIMPLE_REQUEST = re.compile(
    rb"(GET|OPTIONS|DELETE) (/[!-~]*) HTTP/1\.1\r\n"
    + (_REQUEST_FIELD + rb"(?:[Hh](?i:ost)" + _VALUE + _REQUEST_FIELD + rb")?\r\n")
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
    OPTIONS or DELETE in HTTP/1.1, at most one Host, none of the fields in ``_REQUEST_CAREFUL``
    nor any the app must not get from a client): the common case, read without the full
    parser's callbacks. Anything else gives ``None``, and the full parser reads it. The head goes
    to the app as it came, with the added fields (``added_fields``)."""
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
