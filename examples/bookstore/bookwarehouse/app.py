"""bookwarehouse: ships books to the bookstore from stock kept in the confidential database.

Written with Geode's library: ``serve_asgi`` serves the restock API with mutual TLS and the
manifest's policy in front (only the bookstore may ``POST /restock-books``). The stock lives in
the Geode database (``geode db serve``: MariaDB encrypted at rest, TLS with the certificate
secret the manifest gives this service); where MariaDB is not installed, in an SQLCipher file
keyed by a manifest secret, and the page says so.
"""

from __future__ import annotations

import asyncio
import html
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from geode.runtime import Credentials, peer_identity, serve_asgi

COUNTS = {"shipped": 0, "restock_requests": 0, "db_errors": 0}
LAST: dict[str, str] = {}
STARTED = time.time()


class Stock:
    """The stock table, in the Geode database or in SQLCipher. Calls run in a worker thread."""

    def __init__(self, secrets: Path, state: Path, embedded: bool) -> None:
        self._lock = threading.Lock()
        if not embedded:  # geode up says when the database is not there (--embedded-db)
            self.mode = "Geode database (MariaDB, encrypted at rest, TLS)"
            self._conn = self._mariadb(secrets)
            self._style = "%s"
        else:
            self.mode = "embedded SQLCipher (the database service is not running here)"
            self._conn = self._sqlcipher(secrets, state)
            self._style = "?"
        print(f"bookwarehouse: stock kept in the {self.mode}", flush=True)

    @staticmethod
    def _mariadb(secrets: Path) -> Any:
        import pymysql

        from geode.db import client_ssl_context

        context = client_ssl_context(
            secrets / "db-client.pem",
            secrets / "db-client.key",
            ca_file=os.environ["GEODE_CA_FILE"],
            servers=[os.environ["DB_SERVER_ID"]],
        )
        host, port = os.environ["DB_ADDR"].rsplit(":", 1)
        deadline = time.monotonic() + 60
        while True:  # the database may still be starting
            try:
                return pymysql.connect(
                    host=host, port=int(port), user="bookwarehouse", ssl=context,
                    database="bookstore", autocommit=False,
                )  # fmt: skip
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def _sqlcipher(secrets: Path, state: Path) -> Any:
        from geode.db import connect_embedded

        state.mkdir(parents=True, exist_ok=True)
        conn = connect_embedded(state / "stock.db", (secrets / "stock.key").read_bytes())
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stock (title TEXT PRIMARY KEY, copies INTEGER NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS shipments (id INTEGER PRIMARY KEY, title TEXT NOT NULL)"
        )
        conn.commit()
        return conn

    def _sql(self, query: str) -> str:
        """``query`` (written with ``?``) in the driver's parameter style."""
        return query.replace("?", self._style)

    def ship(self, title: str, copies: int) -> int:
        sql = self._sql
        with self._lock:
            cursor = self._conn.cursor()
            try:
                cursor.execute(sql("SELECT copies FROM stock WHERE title = ?"), (title,))
                row = cursor.fetchone()
                if row is None:  # a new title arrives at the warehouse with a fresh supply
                    cursor.execute(sql("INSERT INTO stock VALUES (?, ?)"), (title, 1000))
                    have = 1000
                else:
                    have = int(row[0])
                shipped = min(have, copies)
                cursor.execute(
                    sql("UPDATE stock SET copies = copies - ? WHERE title = ?"), (shipped, title)
                )
                for _ in range(shipped):
                    cursor.execute(sql("INSERT INTO shipments (title) VALUES (?)"), (title,))
                self._conn.commit()
            except Exception:
                self._conn.rollback()
                raise
            finally:
                cursor.close()
        return shipped

    def in_stock(self) -> int:
        with self._lock:
            cursor = self._conn.cursor()
            try:
                cursor.execute("SELECT COALESCE(SUM(copies), 0) FROM stock")
                total = int(cursor.fetchone()[0])
                self._conn.commit()
                return total
            finally:
                cursor.close()


STOCK: Stock


async def restock_books(request: Request) -> JSONResponse:
    COUNTS["restock_requests"] += 1
    order = await request.json()
    title, copies = str(order["title"])[:200], max(0, min(int(order.get("copies", 1)), 10))
    try:
        shipped = await asyncio.to_thread(STOCK.ship, title, copies)
    except Exception as exc:
        COUNTS["db_errors"] += 1
        LAST["db_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return JSONResponse({"error": "database_error"}, status_code=503)
    COUNTS["shipped"] += shipped
    LAST["to"] = str(peer_identity(request.scope))
    return JSONResponse({"title": title, "shipped": shipped})


async def snapshot() -> dict[str, object]:
    try:
        in_stock: int | None = await asyncio.to_thread(STOCK.in_stock)
    except Exception as exc:
        in_stock = None
        LAST["db_error"] = f"{type(exc).__name__}: {exc}"[:200]
    uptime = int(time.time() - STARTED)
    return {
        "service": "bookwarehouse",
        "uptime_s": uptime,
        **COUNTS,
        "in_stock": in_stock,
        "storage": STOCK.mode,
        "last": LAST,
    }


async def raw(_request: Request) -> JSONResponse:
    return JSONResponse(await snapshot())


async def page(_request: Request) -> HTMLResponse:
    state = await snapshot()
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in state.items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1>"
        "<title>bookwarehouse</title><h1>bookwarehouse</h1>"
        f"<p>Books shipped: <b id=shipped>{COUNTS['shipped']}</b></p><table>{rows}</table>"
    )


async def main(state: Path, embedded: bool) -> None:
    global STOCK
    credentials = Credentials.from_env()
    secrets = Path(os.environ["GEODE_SECRETS_DIR"])
    STOCK = await asyncio.to_thread(Stock, secrets, state, embedded)
    api = Starlette(routes=[Route("/restock-books", restock_books, methods=["POST"])])
    mesh = serve_asgi(
        api, credentials, host="127.0.0.1", port=int(os.environ["WAREHOUSE_PORT"]),
        log_level="warning",
    )  # fmt: skip
    context = credentials.public_ssl_context()
    pages = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/", page), Route("/raw", raw)]),
            host="127.0.0.1",
            port=int(os.environ["PAGE_PORT"]),
            ssl_context_factory=lambda _config, _default: context,
            log_level="warning",
        )
    )
    await asyncio.gather(mesh.serve(), pages.serve())


if __name__ == "__main__":
    # The working directory is the bundle's read-only measured copy: the stock lives elsewhere.
    if "--state" not in sys.argv:
        sys.exit("bookwarehouse: --state DIR is required (where the embedded stock is kept)")
    state = Path(sys.argv[sys.argv.index("--state") + 1])
    asyncio.run(main(state, embedded="--embedded-db" in sys.argv))
