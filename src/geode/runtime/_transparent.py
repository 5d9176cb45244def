"""Runs an instance's transparent TLS proxy beside its command, on an event loop of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

from geode.errors import LaunchError
from geode.proxy import TransparentProxy
from geode.runtime._credentials import Credentials

__all__ = ["ProxyRunner"]

log = logging.getLogger("geode.runtime")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on CPython
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class ProxyRunner:
    """A ``Companion`` for ``run_command``: binds every listener before the command starts
    (so the app never races its own proxy), serves until stopped, and reloads renewed
    certificates."""

    def __init__(
        self, credentials: Credentials, *, listen_host: str = "0.0.0.0", watch: float = 2.0
    ) -> None:
        self.proxy = TransparentProxy(credentials, listen_host=listen_host)
        self.credentials = credentials
        self.watch = watch
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="geode-proxy", daemon=True
        )
        self._stop_watch: threading.Event | None = None

    def start(self) -> ProxyRunner:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        try:
            started.result(timeout=30)
        except (LaunchError, OSError, concurrent.futures.TimeoutError) as exc:
            self.stop()
            if isinstance(exc, LaunchError):
                raise
            raise LaunchError(f"the transparent TLS proxy did not start: {exc}") from None
        self._stop_watch = self.credentials.watch(self.watch, loop=self._loop)
        mesh = self.proxy.mesh
        for route in mesh.ingress:
            log.info(
                "transparent TLS in: :%d (mTLS, %s) -> 127.0.0.1:%d",
                route.port,
                route.protocol,
                route.app_port,
            )
        for out in mesh.egress:
            log.info(
                "transparent TLS out: 127.0.0.1:%d -> %s:%d (mTLS, %s)",
                out.local_port,
                out.host,
                out.port,
                ", ".join(out.peers) or "no peer: refused",
            )
        return self

    def stop(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch.set()
        if self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop)
            try:
                closing.result(timeout=10)
            except (concurrent.futures.TimeoutError, OSError) as exc:
                log.warning("the proxy did not close cleanly: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
