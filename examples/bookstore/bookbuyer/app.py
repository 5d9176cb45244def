"""bookbuyer: keeps buying books from the bookstore, over mutual TLS, as an attested service.

Written with Geode's library: ``mesh_async_client`` presents this instance's certificate and
talks only to a server whose SPIFFE id is the bookstore's. Its page (books bought, the last
title, errors) is served over HTTPS with the instance's certificate, at ``PAGE_PORT``.
"""

from __future__ import annotations

import asyncio
import html
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from geode.runtime import Credentials, mesh_async_client

COUNTS = {"bought": 0, "refused": 0, "errors": 0}
LAST: dict[str, str] = {}  # the last title bought, the last error
STARTED = time.time()


async def shop(credentials: Credentials) -> None:
    url = os.environ["BOOKSTORE_URL"] + "/buy-a-book/new"
    peers = [os.environ["BOOKSTORE_ID"]]
    interval = float(os.environ.get("BUY_INTERVAL", "0.5"))
    async with mesh_async_client(credentials, peers, timeout=5) as http:
        while True:
            try:
                answer = await http.get(url)
                if answer.status_code == 200:
                    COUNTS["bought"] += 1
                    LAST["title"] = answer.json()["title"]
                else:
                    COUNTS["refused"] += 1
                    LAST["refusal"] = answer.text[:200]
            except Exception as exc:  # the bookstore not up yet, a reset: count and go on
                COUNTS["errors"] += 1
                LAST["error"] = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(interval)


async def raw(_request: Request) -> JSONResponse:
    uptime = int(time.time() - STARTED)
    return JSONResponse({"service": "bookbuyer", "uptime_s": uptime, **COUNTS, "last": LAST})


async def page(_request: Request) -> HTMLResponse:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in {**COUNTS, **LAST}.items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1>"
        "<title>bookbuyer</title><h1>bookbuyer</h1>"
        f"<p>Books bought: <b id=bought>{COUNTS['bought']}</b></p><table>{rows}</table>"
    )


async def main() -> None:
    credentials = Credentials.from_env()
    pages = Starlette(routes=[Route("/", page), Route("/raw", raw)])
    context = credentials.public_ssl_context()
    server = uvicorn.Server(
        uvicorn.Config(
            pages,
            host="127.0.0.1",
            port=int(os.environ["PAGE_PORT"]),
            ssl_context_factory=lambda _config, _default: context,
            log_level="warning",
        )
    )
    credentials.watch(5.0, loop=asyncio.get_running_loop())
    await asyncio.gather(server.serve(), shop(credentials))


if __name__ == "__main__":
    asyncio.run(main())
