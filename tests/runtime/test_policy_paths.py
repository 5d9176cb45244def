"""``PolicyMiddleware`` judges the path the app serves: ``serve_asgi`` (uvicorn, mutual TLS)
in front of Starlette's ``StaticFiles``, which drops empty and dot segments before it looks a
file up. The policy allows every path but ``/secret.txt``, by regex."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.staticfiles import StaticFiles

from geode.manifest import HttpRule, MeshPolicy, MeshRule
from geode.pki import SpiffeId
from geode.proxy import PolicyEngine
from geode.runtime import PolicyMiddleware, serve_asgi
from tests.runtime.test_asgi_tls import Pki, _serve_server, _server_credentials
from tests.support import free_port

SECRET = b"the secret"


class Site:
    def __init__(self, pki: Pki, port: int) -> None:
        self.context = ssl.create_default_context(cafile=pki.root_file)
        self.context.load_cert_chain(*pki.leaf("client"))
        self.port = port
        self.seen: list[tuple[str, bytes]] = []  # (path, raw_path) as the app got them

    def get(self, target: bytes) -> tuple[int, bytes]:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        with self.context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n" % target)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


def serve_site(tmp: Path, path_rule: str) -> Iterator[Site]:
    root = tmp / "files"
    (root / "files").mkdir(parents=True)
    (root / "secret.txt").write_bytes(SECRET)
    (root / "files" / "a.txt").write_bytes(b"a")
    pki = Pki(tmp)
    rule = MeshRule(
        name="no-secret",
        sources=["spiffe://t.local/service/client"],
        http=[HttpRule(methods=["GET"], path=path_rule)],
    )
    credentials = _server_credentials(pki, MeshPolicy(mode="strict", rules=[rule]))
    files = StaticFiles(directory=root)
    site = Site(pki, free_port())

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        site.seen.append((scope["path"], scope["raw_path"]))
        await files(scope, receive, send)

    server = serve_asgi(recorded, credentials, host="127.0.0.1", port=site.port, watch=None)
    server.config.log_config = None
    for _ in _serve_server(server):
        yield site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from serve_site(tmp_path_factory.mktemp("site"), r"^/(?!secret\.txt$).*$")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/secret.txt", 403),
        (b"//secret.txt", 403),
        (b"/./secret.txt", 403),
        (b"/x/../secret.txt", 403),
        (b"/files//../secret.txt", 403),
        (b"/%73ecret.txt", 403),
        (b"/%2e%2e/secret.txt", 403),
        (b"/%2Fsecret.txt", 400),
        (b"/x/..;/secret.txt", 400),
    ],
)
def test_the_secret_is_never_served(site: Site, target: bytes, status: int) -> None:
    before = len(site.seen)
    answer = site.get(target)
    assert (answer[0], SECRET in answer[1]) == (status, False)
    assert site.seen[before:] == []


@pytest.mark.parametrize(
    ("target", "path", "raw_path"),
    [
        (b"/files/a.txt", "/files/a.txt", b"/files/a.txt"),
        (b"//files/./a.txt", "/files/a.txt", b"/files/a.txt"),
        (b"/x/../files/%61.txt?q=1", "/files/a.txt", b"/files/a.txt"),
    ],
)
def test_the_app_gets_the_path_that_was_judged(
    site: Site, target: bytes, path: str, raw_path: bytes
) -> None:
    before = len(site.seen)
    assert site.get(target) == (200, b"a")
    assert site.seen[before:] == [(path, raw_path)]


def test_a_trailing_slash_is_a_path_of_its_own(tmp_path: Path) -> None:
    # StaticFiles serves /secret.txt/ as /secret.txt: a rule that denies a file to such an
    # app says so with "/?".
    for site in serve_site(tmp_path, r"^/(?!secret\.txt/?$).*$"):
        assert site.get(b"/secret.txt/")[0] == 403
        assert site.get(b"//secret.txt//")[0] == 403
        assert site.get(b"/files/a.txt/") == (200, b"a")


@pytest.mark.parametrize(
    ("path", "raw_path", "status", "served"),
    [
        ("/secret.txt", b"/files/a.txt", 403, None),  # a middleware before changed the path only
        ("/files/a.txt", b"/secret.txt", 200, "/files/a.txt"),
        ("/files//a.txt", b"/files//a.txt", 200, "/files/a.txt"),
        ("/files/a.txt", None, 200, "/files/a.txt"),
    ],
    ids=["path-changed", "raw-path-changed", "both-normalised", "no-raw-path"],
)
def test_the_path_judged_is_the_path_the_app_routes_on(
    path: str, raw_path: bytes | None, status: int, served: str | None
) -> None:
    """The app routes on ``scope["path"]``; a middleware in front of ``PolicyMiddleware`` may
    have changed it without ``raw_path`` (a prefix stripped, a rewrite)."""
    rule = MeshRule(
        name="no-secret",
        sources=["spiffe://t.local/service/client"],
        http=[HttpRule(methods=["GET"], path=r"^/(?!secret\.txt$).*$")],
    )
    engine = PolicyEngine(MeshPolicy(mode="strict", rules=[rule]), "server", trust_domain="t.local")
    routed: list[tuple[str, bytes]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        routed.append((scope["path"], scope["raw_path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "extensions": {"tls": {"geode_peer": SpiffeId.for_service("t.local", "client")}},
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    asyncio.run(PolicyMiddleware(app, engine)(scope, receive, send))
    assert sent[0]["status"] == status
    if served is None:
        assert routed == []
    else:
        assert routed == [(served, served.encode())]
