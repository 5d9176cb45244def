"""The policy decision of the HTTP ingress: may this request, from this verified peer, reach
the app? Judged once per request head, apart from how the connection moves bytes
(``_http_ingress``): the method, a path the app cannot resolve differently from the policy
(``policy_path``), no switch to HTTP/2 over cleartext, and the service's ``PolicyEngine``, which
matches the rules, caches allowed decisions and counts every decision."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import httptools

from geode.pki import SpiffeId
from geode.proxy._connection import log
from geode.proxy._http_message import Request
from geode.proxy._policy import PolicyEngine

__all__ = [
    "HttpGate",
    "Refusal",
    "asks_for_http2",
    "cached_policy_path",
    "log_refusal",
    "policy_path",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: the status and the JSON body it gets."""

    status: int
    payload: Mapping[str, str | None]


class HttpGate:
    """The decision for the requests of one HTTP ingress route (``port``). ``judge`` gives
    ``None`` for a request the app may see (the common case allocates nothing), else the
    ``Refusal`` to answer. Refusals for the request's own shape are logged here; policy denials
    are logged, and every decision counted, by the engine."""

    __slots__ = ("engine", "port")

    def __init__(self, engine: PolicyEngine, port: int) -> None:
        self.engine = engine
        self.port = port

    def judge(self, peer: SpiffeId | None, request: Request) -> Refusal | None:
        if request.method == "CONNECT":
            return Refusal(405, {"error": "method_not_allowed", "reason": "CONNECT is not proxied"})
        path = cached_policy_path(bytes(request.url))
        if path is None:
            return self._bad(peer, request, "unusable request path")
        if request.headers and asks_for_http2(request):
            return self._bad(peer, request, "no upgrade to HTTP/2 (h2c)")
        decision = self.engine.authorize_http(peer, request.method, path)
        if decision:
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


def policy_path(url: bytes) -> str | None:
    """The percent-decoded path the policy judges (as ASGI's ``scope["path"]``), or ``None``
    when it cannot be judged safely, because the app might resolve it into a path the policy
    never saw: no path; a ``#`` anywhere (never sent by a client: the policy would judge the
    path before it, and an app that takes the rest as path too resolves its dot segments); a
    backslash in the path, raw or ``%5C`` (WHATWG URL parsers, Node's ``new URL`` among them,
    read it as ``/``); or a segment that is ``.`` or ``..`` once decoded and cut at its first
    ``;`` (Tomcat and Spring drop such path parameters: ``/public/..;/admin`` is ``/admin``)."""
    if url == b"*":
        return "*"
    if b"#" in url:
        return None
    raw_path = url.partition(b"?")[0]
    if b"\\" in raw_path or b"%5c" in raw_path.lower():
        return None
    try:
        raw = httptools.parse_url(url).path or b"/"
    except httptools.HttpParserInvalidURLError:
        return None
    path = unquote(raw.decode("latin-1"))
    if (
        not path.startswith("/")
        or "\\" in path
        or any(s.partition(";")[0] in (".", "..") for s in path.split("/"))
    ):
        return None
    return path


@functools.lru_cache(maxsize=1024)
def _cached_policy_path(url: bytes) -> str | None:
    return policy_path(url)


def cached_policy_path(url: bytes) -> str | None:
    """``policy_path``, remembered for short targets (a client asks for the same few)."""
    return _cached_policy_path(url) if len(url) <= 256 else policy_path(url)


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
