"""The path the policy judges is the path the app serves: a real ``TransparentProxy`` over real
TLS on 127.0.0.1, in front of Python's ``SimpleHTTPRequestHandler`` (HTTP/1.1), which decodes
the path, drops empty segments and resolves dot segments before it serves a file.

The policy allows every path but ``/secret.txt``, by regex. Each target is sent twice: once as
a head the ingress's short cut takes, once with a field that sends it through the full parser.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from geode.manifest import HttpRule, IngressRoute, MeshConfig, MeshPolicy, MeshRule
from geode.proxy import TransparentProxy
from geode.runtime import Credentials
from tests.proxy.support.mesh import (
    DOMAIN,
    LoopThread,
    Pki,
    Response,
    Responses,
    spiffe,
    tls_socket,
)
from tests.support import free_port

SECRET = b"the secret"
# Heads the short cut takes, and the same through the full parser (Connection is a careful field).
FORMS = {"short-cut": b"", "full-parser": b"Connection: keep-alive\r\n"}


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[bytes]  # the request lines the app got

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Files(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def parse_request(self) -> bool:
        self.server.seen.append(self.raw_requestline.rstrip(b"\r\n"))
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclasses.dataclass
class Site:
    pki: Pki
    app: FileServer
    port: int
    client: Credentials

    def ask(self, target: bytes, form: str, method: bytes = b"GET") -> Response:
        head = b"%s %s HTTP/1.1\r\nHost: server\r\n%s\r\n" % (method, target, FORMS[form])
        with tls_socket(self.pki.client_context(self.client), self.port) as sock:
            sock.sendall(head)
            return Responses(sock).read()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("files")
    (root / "secret.txt").write_bytes(SECRET)
    (root / "public.txt").write_bytes(b"public")
    (root / "files").mkdir()
    (root / "files" / "a.txt").write_bytes(b"a")
    (root / "a;b").write_bytes(b"a;b")
    app = FileServer(("127.0.0.1", 0), partial(Files, directory=str(root)))
    app.seen = []
    threading.Thread(target=app.serve_forever, daemon=True).start()
    pki = Pki(tmp_path_factory.mktemp("pki"))
    port = free_port()
    rule = HttpRule(methods=["GET", "OPTIONS"], path=r"^/(?!secret\.txt$).*$")
    mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(
            rules=[MeshRule(name="no-secret", sources=[str(spiffe("client"))], http=[rule])]
        ),
        ingress=[IngressRoute(port=port, app_port=app.server_address[1], protocol="http")],
    )
    loop = LoopThread("asyncio")
    proxy = TransparentProxy(pki.credentials("server", mesh), listen_host="127.0.0.1")
    loop.run(proxy.start())
    yield Site(pki=pki, app=app, port=port, client=pki.credentials("client"))
    loop.run(proxy.close())
    loop.close()
    app.shutdown()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/secret.txt", 403),
        (b"//secret.txt", 403),
        (b"///secret.txt", 403),
        (b"/./secret.txt", 403),
        (b"/x/../secret.txt", 403),
        (b"/../secret.txt", 403),
        (b"/files//../secret.txt", 403),
        (b"/%73ecret.txt", 403),
        (b"/secret%2Etxt", 403),
        (b"/%2e%2e/secret.txt", 403),
        (b"/x/%2E/../secret.txt?a=b", 403),
        (b"http://server//secret.txt", 403),
        (b"/%2Fsecret.txt", 400),
        (b"/x%2f..%2fsecret.txt", 400),
        (b"/x/..%5csecret.txt", 400),
        (b"/x/..;/secret.txt", 400),
        (b"/secret.txt#", 400),
        # A trailing slash is kept: a path of its own. This app has no such file.
        (b"/secret.txt/", 404),
    ],
)
def test_the_secret_is_never_served(site: Site, target: bytes, status: int, form: str) -> None:
    before = len(site.app.seen)
    response = site.ask(target, form)
    assert (response.status, SECRET in response.body) == (status, False)
    assert site.app.seen[before:] == ([b"GET /secret.txt/ HTTP/1.1"] if status == 404 else [])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("target", "forwarded", "body"),
    [
        (b"/public.txt", b"/public.txt", b"public"),
        (b"/public.txt?q=%2F..%2f", b"/public.txt?q=%2F..%2f", b"public"),
        (b"//public.txt", b"/public.txt", b"public"),
        (b"/x/../public.txt?a=1", b"/public.txt?a=1", b"public"),
        (b"/%70ublic%2Etxt", b"/public.txt", b"public"),
        (b"/files/./a.txt", b"/files/a.txt", b"a"),
        (b"/files//x/%2e%2E/a.txt", b"/files/a.txt", b"a"),
        (b"/../../files/a.txt", b"/files/a.txt", b"a"),
        (b"/a%3bb", b"/a%3Bb", b"a;b"),
        (b"http://server/files//a.txt?x", b"/files/a.txt?x", b"a"),
        (b"HTTPS://server", b"/", None),
    ],
)
def test_allowed_paths_reach_the_app_normalised(
    site: Site, target: bytes, forwarded: bytes, body: bytes | None, form: str
) -> None:
    before = len(site.app.seen)
    response = site.ask(target, form)
    assert response.status == 200
    if body is not None:
        assert response.body == body
    assert site.app.seen[before:] == [b"GET %s HTTP/1.1" % forwarded]


@pytest.mark.parametrize(
    "target",
    [
        b"/public.txt%zz",
        b"/public.txt%4",
        b"/public%2",
        b"/public.txt%00",
        b"/public.txt%0a",
        b"/public.txt%7F",
        b"/files%5Ca.txt",
        b"/files\\a.txt",
        b"/files/.;x/a.txt",
        b"/files/%2e%2e%3b/public.txt",
        b"ftp://server/public.txt",
    ],
)
def test_paths_an_app_could_read_otherwise_get_400(site: Site, target: bytes) -> None:
    before = len(site.app.seen)
    for form in FORMS:
        response = site.ask(target, form)
        assert (response.status, response.json()["error"]) == (400, "bad_request")
    assert site.app.seen[before:] == []


def test_the_asterisk_is_a_target_for_options_only(site: Site) -> None:
    before = len(site.app.seen)
    assert site.ask(b"*", "full-parser").status == 400
    # OPTIONS * is judged as "*", which this policy does not allow.
    denied = site.ask(b"*", "full-parser", method=b"OPTIONS")
    assert (denied.status, denied.json()["reason"]) == (403, "no rule allows OPTIONS *")
    assert site.app.seen[before:] == []
