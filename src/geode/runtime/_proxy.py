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
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from geode.errors import LaunchError
from geode.manifest import MeshConfig
from geode.runtime._credentials import Credentials
from geode.runtime._http_ingress import HttpIngress
from geode.runtime._policy import PolicyEngine
from geode.runtime._splice import APP_HOST, Egress, TcpIngress, log

__all__ = ["ProxyLimits", "TransparentProxy"]


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
                protocol = HttpIngress if ingress.protocol == "http" else TcpIngress
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
                    functools.partial(Egress, self, egress, client_context),
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
