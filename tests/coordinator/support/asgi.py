"""Both of a Coordinator's APIs in-process, over ASGI: what the route handlers answer, without
sockets or TLS (the tests of those start a real Coordinator)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.types import ASGIApp

from geode.coordinator import Coordinator, GroupCommit, build_apps

__all__ = ["in_process_apis"]


def in_process_apis(
    coordinator: Coordinator,
    persist: GroupCommit,
    *,
    wrap_client: Callable[[ASGIApp], ASGIApp] = lambda app: app,
) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """Clients of the client API and of the mesh API of ``coordinator``, saving through
    ``persist``; ``wrap_client`` wraps the client API (to present a user's certificate, say)."""
    client, mesh = build_apps(coordinator, persist)
    return (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=wrap_client(client)), base_url="https://client"
        ),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=mesh), base_url="https://mesh"),
    )
