"""Mesh-side HTTP for Python apps: policy middleware for ASGI, a server, and mTLS clients.

``PolicyMiddleware`` authorises each request's verified peer against the service's policy
before the app sees it, puts the peer's SPIFFE id in ``scope["geode.peer"]``, and answers
denials with 403 and ``{"error": "policy_denied", "peer": ..., "reason": ...}``. As the
proxy's HTTP ingress does, it brings the path to one normal form first (``normal_target``:
``//x``, ``/a/../x`` and ``/%78`` are ``/x``), judges that, and gives the app that path in
``scope["path"]`` and ``scope["raw_path"]``: an app that resolves paths itself (Starlette's
``StaticFiles`` drops empty and dot segments) serves what was judged. A path that no normal
form makes safe (an encoded ``/`` or ``\\``, ``..;``) gets 400. ``serve_asgi``
runs any ASGI app on uvicorn with mutual TLS, handing the peer certificate to the middleware.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote, unquote

import httpx
import uvicorn

from geode.pki import SpiffeId, peer_spiffe_id
from geode.proxy import PolicyEngine, normal_target
from geode.runtime._asgi_tls import (
    TLSExtensionProtocol,
    TLSExtensionWSProtocol,
    peer_certificate,
)
from geode.runtime._credentials import Credentials

__all__ = [
    "PolicyMiddleware",
    "mesh_async_client",
    "mesh_client",
    "peer_identity",
    "policy_engine",
    "serve_asgi",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def peer_identity(scope: Scope) -> SpiffeId | None:
    """The verified SPIFFE id of the peer, as ``PolicyMiddleware`` recorded it."""
    peer = scope.get("geode.peer")
    return peer if isinstance(peer, SpiffeId) else None


def policy_engine(credentials: Credentials) -> PolicyEngine:
    """The policy engine for this instance's service, from its mesh view."""
    if credentials.mesh is None:
        raise ValueError("no mesh view (GEODE_MESH_FILE): cannot build a policy engine")
    return PolicyEngine.for_mesh(credentials.mesh)


class PolicyMiddleware:
    def __init__(self, app: ASGIApp, engine: PolicyEngine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        tls = scope.get("extensions", {}).get("tls") or {}
        if "geode_peer" in tls and tls.get("client_cert_error") is None:
            peer = tls["geode_peer"]  # derived once per connection by TLSExtensionProtocol
        else:
            peer = peer_spiffe_id(peer_certificate(scope))
        method = scope.get("method", "GET")
        path = scope.get("path", "/")
        raw_path = scope.get("raw_path")
        if not raw_path or unquote(raw_path.decode("latin-1")) != path:
            # No raw path, or one that a middleware before this one did not follow when it
            # changed the path: the path is what the app routes on.
            raw_path = quote(path).encode("ascii")
        normal = normal_target(raw_path)
        if isinstance(normal, str):
            await _refuse(scope, send, 400, {"error": "bad_request", "reason": normal})
            return
        # The app gets the path judged, both ways it may read it.
        scope["path"] = normal.path
        scope["raw_path"] = raw_path if normal.target is None else normal.target
        decision = self.engine.authorize_http(peer, method, normal.path)
        if not decision:
            shown = str(peer) if peer else None
            payload = {"error": "policy_denied", "peer": shown, "reason": decision.reason}
            await _refuse(scope, send, 403, payload)
            return
        scope["geode.peer"] = peer
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, payload: Mapping[str, str | None]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_asgi(
    app: ASGIApp,
    credentials: Credentials,
    *,
    host: str = "0.0.0.0",
    port: int,
    engine: PolicyEngine | None = None,
    watch: float | None = 5.0,
    **uvicorn_options: Any,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with mutual TLS and the service's policy in front.

    Call ``.run()`` (blocking) or ``await .serve()``. While it serves, renewed certificates are
    picked up every ``watch`` seconds, on the server's own loop.
    """
    context = credentials.server_ssl_context()
    guarded = PolicyMiddleware(app, engine or policy_engine(credentials))
    # In the mesh a peer is its SPIFFE id: X-Forwarded-* from a loopback peer (uvicorn's
    # default trust) would let any local process claim another client address.
    uvicorn_options.setdefault("proxy_headers", False)
    uvicorn_options.setdefault("server_header", False)
    config = uvicorn.Config(
        guarded,
        host=host,
        port=port,
        http=TLSExtensionProtocol,
        ws=uvicorn_options.pop("ws", TLSExtensionWSProtocol),
        ssl_context_factory=lambda _config, _default: context,
        lifespan=uvicorn_options.pop("lifespan", "off"),
        **uvicorn_options,
    )
    return _MeshServer(config, credentials, watch)


class _MeshServer(uvicorn.Server):
    """uvicorn's server, reloading renewed certificates on its own loop while it serves."""

    def __init__(self, config: uvicorn.Config, credentials: Credentials, watch: float | None):
        super().__init__(config)
        self._credentials = credentials
        self._watch = watch

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        stop = None
        if self._watch:
            stop = self._credentials.watch(self._watch, loop=asyncio.get_running_loop())
        try:
            await super().serve(sockets)
        finally:
            if stop is not None:
                stop.set()


def mesh_client(
    credentials: Credentials, peers: Iterable[str | SpiffeId] | None, **options: Any
) -> httpx.Client:
    """An httpx client with the instance's certificate that talks only to ``peers``."""
    return httpx.Client(verify=credentials.client_ssl_context(peers), **options)


def mesh_async_client(
    credentials: Credentials, peers: Iterable[str | SpiffeId] | None, **options: Any
) -> httpx.AsyncClient:
    """The async twin of ``mesh_client``."""
    return httpx.AsyncClient(verify=credentials.client_ssl_context(peers), **options)
