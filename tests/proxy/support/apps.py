"""Real app servers that record every request they see, for the differential corpus.

Each runs in a process of its own on 127.0.0.1, with the server's defaults where they matter to
an ingress (uvicorn trusts proxy headers from 127.0.0.1; gunicorn trusts ``SCRIPT_NAME`` and
the scheme headers from there; ``http.server`` ignores the body of a GET, as stock handlers do).
Every request is appended to ``$CORPUS_LOG`` as one JSON line (``Seen``): the method, the raw
target, the path the app routes on and the path it serves (``served``, the way a static-file
app resolves it: empty and dot segments collapsed), every header, the client address and
scheme the server reports, the body. The answer echoes the method, the served path and the
request's ``X-Req`` in ``X-Echo-*`` headers, so that even the answer to a HEAD says what it
answers.

Run one with ``python -m tests.proxy.support.apps stdlib PORT``, or through ``AppServer``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["KINDS", "AppServer", "Seen", "echo_headers", "served", "target_path"]

KINDS = ("uvicorn-httptools", "uvicorn-h11", "http.server", "gunicorn")


def served(path: str) -> str:
    """The path a static-file app serves for the decoded ``path``: ``\\`` read as ``/``, empty
    and ``.`` segments dropped, ``..`` removing the segment before it; a trailing slash kept."""
    out: list[str] = []
    trailing = False
    for segment in path.replace("\\", "/").split("/")[1:]:
        trailing = segment in ("", ".", "..")
        if segment == "..":
            if out:
                out.pop()
        elif not trailing:
            out.append(segment)
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def target_path(target: str) -> str:
    """The decoded path of a request target (origin- or absolute-form), without the query."""
    path = target.partition("?")[0].partition("#")[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return unquote(path)


def echo_headers(method: str, path: str, req: str | None) -> list[tuple[str, str]]:
    return [
        ("X-Echo-Method", method),
        ("X-Echo-Path", quote(path, safe="/")),
        ("X-Echo-Req", req if req is not None else "-"),
    ]


@dataclass(frozen=True)
class Seen:
    """One request as an app saw it."""

    server: str
    method: str
    target: str
    route: str  # the path the app routes on (decoded; after SCRIPT_NAME for WSGI)
    served: str
    headers: list[tuple[str, str]]
    client: str
    port: int
    scheme: str | None  # None: the server reports none
    body: str

    @property
    def req(self) -> str | None:
        values = self.values("x-req")
        return values[0] if len(values) == 1 else None

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    @classmethod
    def load(cls, line: str) -> Seen:
        raw = json.loads(line)
        raw["headers"] = [tuple(h) for h in raw["headers"]]
        return cls(**raw)


def _record(seen: dict[str, Any]) -> None:
    with open(os.environ["CORPUS_LOG"], "a") as log:
        log.write(json.dumps(seen) + "\n")


# --- uvicorn (ASGI) ----------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    if scope["type"] == "http":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    else:
        await receive()  # websocket.connect
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    method = scope.get("method", "GET")
    seen: dict[str, Any] = {
        "server": os.environ.get("CORPUS_SERVER", "uvicorn"),
        "method": method,
        "target": raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
        "route": scope["path"],
        "served": served(scope["path"]),
        "headers": headers,
        "client": scope["client"][0] if scope.get("client") else "",
        "port": scope["client"][1] if scope.get("client") else 0,
        "scheme": scope["scheme"],
        "body": body.decode("latin-1"),
    }
    _record(seen)
    req = next((v for n, v in headers if n.lower() == "x-req"), None)
    answer = [(n.encode(), v.encode()) for n, v in echo_headers(method, seen["served"], req)] + [
        (b"content-type", b"text/plain"),
        (b"content-length", b"4"),
    ]
    prefix = "http" if scope["type"] == "http" else "websocket.http"
    await send({"type": f"{prefix}.response.start", "status": 200, "headers": answer})
    await send({"type": f"{prefix}.response.body", "body": b"echo"})


# --- gunicorn (WSGI, Flask) --------------------------------------------------------------------


def flask_app() -> Any:
    """A Flask app that records and echoes every request before routing it."""
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.before_request
    def echo() -> Any:
        environ = request.environ
        headers = [
            (key[5:].replace("_", "-").title(), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers.append((key.replace("_", "-").title(), environ[key]))
        if environ.get("SCRIPT_NAME"):  # from a SCRIPT_NAME header: gunicorn trusts it
            headers.append(("SCRIPT_NAME", environ["SCRIPT_NAME"]))
        body = request.get_data() if request.method in ("POST", "PUT", "PATCH") else b""
        path = environ.get("PATH_INFO", "")
        seen: dict[str, Any] = {
            "server": "gunicorn",
            "method": request.method,
            "target": environ.get("RAW_URI", ""),
            "route": path,
            "served": served(path),
            "headers": headers,
            "client": environ.get("REMOTE_ADDR", ""),
            "port": int(environ.get("REMOTE_PORT") or 0),
            "scheme": environ["wsgi.url_scheme"],
            "body": body.decode("latin-1"),
        }
        _record(seen)
        req = environ.get("HTTP_X_REQ")
        return Response(b"echo", headers=echo_headers(request.method, seen["served"], req))

    return app


# --- http.server -------------------------------------------------------------------------------


class StdlibHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; a body is read (by Content-Length) only for POST, PUT and PATCH."""

    protocol_version = "HTTP/1.1"

    def handle_any(self) -> None:
        body = b""
        if self.command in ("POST", "PUT", "PATCH"):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = target_path(self.path)
        seen: dict[str, Any] = {
            "server": "http.server",
            "method": self.command,
            "target": self.path,
            "route": path,
            "served": served(path),
            "headers": list(self.headers.items()),
            "client": self.client_address[0],
            "port": self.client_address[1],
            "scheme": None,
            "body": body.decode("latin-1"),
        }
        _record(seen)
        self.send_response(200)
        for name, value in echo_headers(self.command, seen["served"], self.headers.get("X-Req")):
            self.send_header(name, value)
        self.send_header("Content-Length", "4")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"echo")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # not 5: the corpus connects 16 at a time

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


# --- processes ---------------------------------------------------------------------------------


def _argv(kind: str, port: int) -> list[str]:
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    quiet = ["--log-level", "warning", "--no-access-log"]
    app = "tests.proxy.support.apps"
    if kind == "uvicorn-httptools":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"{app}:asgi",
            *bind,
            "--http",
            "httptools",
            *quiet,
        ]
    if kind == "uvicorn-h11":
        return [sys.executable, "-m", "uvicorn", f"{app}:asgi", *bind, "--http", "h11", *quiet]
    if kind == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", "3", "--worker-class", "sync", "--log-level", "warning",
            f"{app}:flask_app()",
        ]  # fmt: skip
    if kind == "http.server":
        return [sys.executable, "-m", app, kind, str(port)]
    raise ValueError(kind)


class AppServer:
    """One app server process, recording to ``log``."""

    def __init__(self, kind: str, port: int, log: Path, repo: Path) -> None:
        self.kind, self.port, self.log = kind, port, log
        self.output = log.with_suffix(".out")
        env = dict(os.environ, CORPUS_LOG=str(log), CORPUS_SERVER=kind)
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                _argv(kind, port), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def seen(self) -> list[Seen]:
        if not self.log.exists():
            return []
        return [Seen.load(line) for line in self.log.read_text().splitlines() if line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _main(argv: Iterable[str]) -> None:
    kind, port = list(argv)
    assert kind == "http.server"
    _Server(("127.0.0.1", int(port)), StdlibHandler).serve_forever()


if __name__ == "__main__":
    _main(sys.argv[1:])
