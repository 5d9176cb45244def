"""bookstore: sells books to whoever the mesh lets through, and restocks from the warehouse.

An unmodified app: no Geode import, no certificate handling in its API. It serves its API in
plaintext on loopback (``BOOKSTORE_API_PORT``, behind ``geode run``'s transparent TLS ingress,
which enforces the manifest's policy per request and names the caller in ``X-Geode-Peer``), and
reaches the warehouse in plaintext through the egress on loopback (``WAREHOUSE_EGRESS``), which
originates mutual TLS. Its page is HTTPS with the certificate files ``geode run`` wrote, as any
app configured with a certificate and key would use them (and reloads them when they change:
``geode run`` renews them at half their lifetime).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import os
import ssl
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

TITLES = [
    "Pride and Prejudice",
    "Moby-Dick",
    "Middlemarch",
    "War and Peace",
    "The Count of Monte Cristo",
    "Great Expectations",
    "Anna Karenina",
    "Don Quixote",
]
COPIES_PER_RESTOCK = 3
SHELF = dict.fromkeys(TITLES, 0)
COUNTS = {"sold": 0, "restocks": 0, "restock_errors": 0}
BUYERS: dict[str, int] = {}  # X-Geode-Peer: books sold to it
LAST: dict[str, str] = {}
STARTED = time.time()
_next_title = itertools.cycle(TITLES)
_lock = asyncio.Lock()


async def restock(title: str) -> bool:
    url = f"http://{os.environ['WAREHOUSE_EGRESS']}/restock-books"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.post(url, json={"title": title, "copies": COPIES_PER_RESTOCK})
    except httpx.HTTPError as exc:
        COUNTS["restock_errors"] += 1
        LAST["restock_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return False
    if answer.status_code != 200:
        COUNTS["restock_errors"] += 1
        LAST["restock_error"] = f"{answer.status_code} {answer.text[:200]}"
        return False
    SHELF[title] += int(answer.json()["shipped"])
    COUNTS["restocks"] += 1
    return True


async def buy(request: Request) -> JSONResponse:
    async with _lock:
        title = next(_next_title)
        if SHELF[title] == 0 and not await restock(title):
            return JSONResponse({"error": "out_of_stock", "title": title}, status_code=503)
        SHELF[title] -= 1
        COUNTS["sold"] += 1
        buyer = request.headers.get("x-geode-peer", "unknown")
        BUYERS[buyer] = BUYERS.get(buyer, 0) + 1
    return JSONResponse({"title": title, "sold": COUNTS["sold"]})


async def books_bought(request: Request) -> JSONResponse:
    return JSONResponse({"buyer": request.headers.get("x-geode-peer"), "sold": COUNTS["sold"]})


def snapshot() -> dict[str, object]:
    uptime = int(time.time() - STARTED)
    return {
        "service": "bookstore",
        "uptime_s": uptime,
        **COUNTS,
        "on_shelf": sum(SHELF.values()),
        "sold_to": BUYERS,
        "last": LAST,
    }


async def raw(_request: Request) -> JSONResponse:
    return JSONResponse(snapshot())


async def page(_request: Request) -> HTMLResponse:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in snapshot().items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1>"
        "<title>bookstore</title><h1>bookstore</h1>"
        f"<p>Books sold: <b id=sold>{COUNTS['sold']}</b></p><table>{rows}</table>"
    )


class ReloadingCertificate:
    """A server context that picks up renewed certificate files for new connections."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.stamp: tuple[int, int] = (0, 0)
        self.current = self._load()
        self.context = self._load()
        self.context.sni_callback = self._choose  # called in every handshake

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        self.stamp = (os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns)
        return context

    def _choose(self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            stamp = (os.stat(self.cert_file).st_mtime_ns, os.stat(self.key_file).st_mtime_ns)
            if stamp != self.stamp:
                self.current = self._load()
        except (OSError, ssl.SSLError):  # caught between the two files: next time
            pass
        connection.context = self.current


async def main() -> None:
    api = Starlette(routes=[Route("/buy-a-book/new", buy), Route("/books-bought", books_bought)])
    pages = Starlette(routes=[Route("/", page), Route("/raw", raw)])
    common = {"host": "127.0.0.1", "log_level": "warning"}
    certificate = ReloadingCertificate(os.environ["GEODE_CERT_FILE"], os.environ["GEODE_KEY_FILE"])
    servers = [
        uvicorn.Server(uvicorn.Config(api, port=int(os.environ["BOOKSTORE_API_PORT"]), **common)),
        uvicorn.Server(
            uvicorn.Config(
                pages,
                port=int(os.environ["PAGE_PORT"]),
                ssl_context_factory=lambda _config, _default: certificate.context,
                **common,
            )
        ),
    ]
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
