"""The policy decision of the HTTP ingress: may this request, from this verified peer, reach
the app? Judged once per request head, apart from how the connection moves bytes
(``_http_ingress``): the method, the request target brought to one normal form
(``normal_target``), no switch to HTTP/2 over cleartext, and the service's ``PolicyEngine``,
which matches the rules, caches allowed decisions and counts every decision.

**The normal target.** An app resolves a path its own way: it may merge ``//``, resolve
``..``, decode ``%2F`` or read ``\\`` as ``/``. Were the policy to judge the path as written,
``//secret.txt`` would pass a rule that denies ``/secret.txt`` and be served as it. So the
path is brought to one normal form, the policy judges that form, and the app gets that form
(``Request.app_target``), the query string as sent. A path the app could still resolve into
another is refused with 400 instead. In this order:

1. The target: origin-form (``/path?query``) as is; absolute-form (``http://host/path?query``,
   scheme ``http`` or ``https``) by its path (``/`` if it has none), forwarded in origin-form;
   asterisk-form ``*`` for ``OPTIONS`` only. Anything else is refused, as is a ``#`` anywhere
   (a client never sends one: the policy would judge the path before it, an app taking the
   rest as path too would resolve its dot segments).
2. Percent-escapes in the path: an escape of an unreserved character (``A-Z a-z 0-9 - . _ ~``)
   is decoded (``%7E`` is ``~``, ``%2e`` is ``.``); any other keeps its escape, hex digits
   upper-cased (``%3b`` is ``%3B``). Refused: an invalid escape (``%zz``, ``%4``); an encoded
   ``/`` or ``\\`` (``%2F``, ``%5C``: one app decodes them into separators, another does
   not, as Envoy refuses them by default); an encoded control character (``%00``-``%1F``,
   ``%7F``); a raw ``\\`` (WHATWG URL parsers, Node's ``new URL`` among them, read it as
   ``/``).
3. Runs of ``/`` are merged into one.
4. Dot segments are removed as RFC 3986 5.2.4 says (``/a/./b`` is ``/a/b``, ``/a/b/../c`` is
   ``/a/c``, ``/a/b/..`` is ``/a/``), after step 2, so ``%2e%2e`` is ``..``; ``..`` above the
   root stays at the root (``/../a`` is ``/a``).
5. Refused: a segment that is ``.`` or ``..`` once percent-decoded and cut at its first ``;``
   (``/public/..;/admin``, ``/a/.;x/b``, ``/a/..%3B/b``): Tomcat and Spring drop such path
   parameters and would resolve it as a dot segment.

The policy judges the normal path percent-decoded (UTF-8, as ASGI's ``scope["path"]``), the
path an app that decodes the forwarded one gets. Everything else is kept as sent: a trailing
``/`` (``/a/`` and ``/a`` are two paths to RFC 3986, Envoy and nginx; a rule that denies a
file to an app that drops a trailing slash must say ``/?$``), ``;`` parameters, the query,
other visible characters. A target already in normal form (no ``%``, no empty segment, no
segment beginning with ``.``) is recognised by one regular expression and forwarded as sent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote

from geode.pki import SpiffeId
from geode.proxy._connection import log
from geode.proxy._http_message import Request
from geode.proxy._policy import PolicyEngine

__all__ = [
    "HttpGate",
    "NormalTarget",
    "Refusal",
    "asks_for_http2",
    "log_refusal",
    "normal_target",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: the status and the JSON body it gets."""

    status: int
    payload: Mapping[str, str | None]


class NormalTarget(NamedTuple):
    """A request target in normal form (see the module docstring)."""

    path: str  # percent-decoded, without the query: what the policy judges
    target: bytes | None  # what the app gets, when it is not the target as sent


class HttpGate:
    """The decision for the requests of one HTTP ingress route (``port``). ``judge`` gives
    ``None`` for a request the app may see (the common case allocates nothing), with
    ``request.app_target`` set to the normal target when it differs from the client's; else the
    ``Refusal`` to answer. Refusals for the request's own shape are logged here; policy denials
    are logged, and every decision counted, by the engine."""

    __slots__ = ("engine", "port")

    def __init__(self, engine: PolicyEngine, port: int) -> None:
        self.engine = engine
        self.port = port

    def judge(self, peer: SpiffeId | None, request: Request) -> Refusal | None:
        if request.method == "CONNECT":
            return Refusal(405, {"error": "method_not_allowed", "reason": "CONNECT is not proxied"})
        normal = normal_target(bytes(request.url))
        if isinstance(normal, str):
            return self._bad(peer, request, normal)
        path, target = normal
        if path == "*" and request.method != "OPTIONS":
            return self._bad(peer, request, "the target * is for OPTIONS only")
        if request.headers and asks_for_http2(request):
            return self._bad(peer, request, "no upgrade to HTTP/2 (h2c)")
        decision = self.engine.authorize_http(peer, request.method, path)
        if decision:
            request.app_target = target
            return None
        shown = str(peer) if peer else None
        return Refusal(403, {"error": "policy_denied", "peer": shown, "reason": decision.reason})

    def _bad(self, peer: SpiffeId | None, request: Request, reason: str) -> Refusal:
        log_refusal(self.port, peer, request, 400, reason)
        return Refusal(400, {"error": "bad_request", "reason": reason})


def log_refusal(
    port: int, peer: SpiffeId | None, request: Request, status: int, reason: str
) -> None:
    """Log a request the proxy answered itself, for a reason other than the policy."""
    log.info(
        "ingress port %d: %d to %s for %s %r: %r",
        port,
        status,
        peer,
        request.method or "-",  # a token: llhttp has checked it
        request.target(),
        reason,
    )


# A path character kept as sent: visible ASCII but the ones that end or structure a path or
# begin an escape. A segment that begins with one other than "." can be no dot segment, with
# or without parameters.
_KEPT = rb"[^\x00-\x20\x7f-\xff%/\\?#]"
_FIRST = rb"[^\x00-\x20\x7f-\xff%/\\?#.]"
_SEGMENT = _FIRST + _KEPT + b"*"
# A target in normal form: "/" or "/" segments with an optional trailing "/", then any query.
_NORMAL = re.compile(rb"(/(?:" + _SEGMENT + rb"(?:/" + _SEGMENT + rb")*/?)?)(?:\?[^#]*)?")
_ABSOLUTE = re.compile(rb"(?i:https?)://[A-Za-z0-9\-._~%!$&'()*+,;=:@\[\]]*")
_PATH = re.compile(rb"[^\x00-\x20\x7f-\xff?#]*")  # what a path may hold
_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ASTERISK = NormalTarget("*", None)


def normal_target(url: bytes) -> NormalTarget | str:
    """``url``, a request target, in normal form (see the module docstring), or why it is
    refused; remembered for short targets (a client asks for the same few)."""
    return _cached_normalise(url) if len(url) <= 256 else _normalise(url)


def _normalise(url: bytes) -> NormalTarget | str:
    if url == b"*":
        return _ASTERISK
    if b"#" in url:
        return "a '#' in the request target"
    match = _NORMAL.fullmatch(url)
    if match is not None:  # the common case: a target already in normal form
        return NormalTarget(match[1].decode("ascii"), None)
    if url.startswith(b"/"):
        rest = url
    else:
        absolute = _ABSOLUTE.match(url)
        if absolute is None:
            return "neither an origin-form nor an absolute-form request target"
        rest = url[absolute.end() :]
        if not rest.startswith(b"/"):
            if rest and not rest.startswith(b"?"):
                return "an invalid authority in the request target"
            rest = b"/" + rest
    raw_path, mark, query = rest.partition(b"?")
    path = _decode_unreserved(raw_path)
    if isinstance(path, str):
        return path
    # Empty segments go (runs of "/" merged), then dot segments, as RFC 3986 5.2.4.
    segments = path.split(b"/")
    kept: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment and segment != b".":
            kept.append(segment)
    trailing = b"/" if kept and segments[-1] in (b"", b".", b"..") else b""
    normal = b"/" + b"/".join(kept) + trailing
    decoded = unquote(normal.decode("ascii"))
    if any(s.partition(";")[0] in (".", "..") for s in decoded.split("/")):
        return "a dot segment with parameters in the path"
    target = normal + mark + query
    return NormalTarget(decoded, None if target == url else target)


def _decode_unreserved(raw_path: bytes) -> bytes | str:
    """``raw_path`` with the escapes of unreserved characters decoded, the others upper-cased;
    or why it is refused."""
    if b"\\" in raw_path:
        return "a backslash in the path"
    if not _PATH.fullmatch(raw_path):
        return "a character that no path may hold"
    pieces = raw_path.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        digits = piece[:2]
        if len(digits) < 2 or not all(c in _HEX for c in digits):
            return "an invalid percent-escape in the path"
        byte = int(digits, 16)
        if byte in _UNRESERVED:
            out.append(bytes((byte,)))
        elif byte in (0x2F, 0x5C):
            return "an encoded / or \\ in the path"
        elif byte < 0x20 or byte == 0x7F:
            return "an encoded control character in the path"
        else:
            out.append(b"%" + digits.upper())
        out.append(piece[2:])
    return b"".join(out)


@functools.lru_cache(maxsize=1024)
def _cached_normalise(url: bytes) -> NormalTarget | str:
    return _normalise(url)


def asks_for_http2(request: Request) -> bool:
    """Whether the request asks to switch to HTTP/2 over cleartext (h2c), by whatever route:
    ``Upgrade: h2c`` or an ``HTTP2-Settings`` header, whatever ``Connection`` says (Go's h2c
    server switches on ``Connection: HTTP2-Settings``, which llhttp does not flag as an
    upgrade), or, in a flagged upgrade, any ``h2``/``http/`` protocol. Requests inside an HTTP/2
    connection would reach the app unchecked."""
    for name, value in request.headers:
        lowered = name.lower()
        if lowered == b"http2-settings":
            return True
        if lowered == b"upgrade":
            value = value.lower()
            if b"h2c" in value:
                return True
            if request.upgrade and any(
                token.strip().startswith((b"h2", b"http/")) for token in value.split(b",")
            ):
                return True
    return False
