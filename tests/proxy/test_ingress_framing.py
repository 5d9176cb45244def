"""The HTTP ingress's framing rules over real TLS on 127.0.0.1: ambiguous framing refused, the
app connection not reused after a request the app may not have read in full, and no byte the
app sends outside an expected response reaching the client.

A ``TransparentProxy`` for ``server`` allows ``client`` ``/api/.*`` only, in front of two apps
in threads: a raw socket app that records every request head with the number of the
connection it came on, and misbehaves on some paths; and stock ``http.server`` in HTTP/1.1
mode, which leaves the body of a GET unread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from geode.manifest import HttpRule, IngressRoute, MeshConfig, MeshPolicy, MeshRule
from geode.proxy import ProxyLimits, TransparentProxy
from geode.proxy._http_app import HttpApp
from geode.proxy._http_ingress import HttpIngress
from tests.proxy.support.mesh import (
    DOMAIN,
    LoopThread,
    Pki,
    Response,
    Responses,
    serve,
    spiffe,
    tls_socket,
)
from tests.support import free_port

# What a misbehaving app sends outside the response it was asked for.
FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
SMUGGLED = b"GET /secret HTTP/1.1\r\nHost: a\r\n\r\n"  # denied by the policy


# --- Apps ---------------------------------------------------------------------------------------


class RawApp(socketserver.BaseRequestHandler):
    """Answers each request with ``true <path>`` and records ``(connection, method, path)``.
    ``/api/late``: the fake response 100 ms after the true one (``/api/later``: 500 ms);
    ``/api/same-write``: the fake in the same write; HEAD ``/api/head-body``: a head, then
    50 ms later a body that is the fake; ``/api/chunked``: a chunked answer."""

    server: RawServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
            number = self.server.connections
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = self.request.recv(65536)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            method, path = head.split(b" ")[:2]
            length, end, close = 0, b"", False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    end = b"0\r\n\r\n"  # these tests send no trailers
                elif name.strip().lower() == b"connection":
                    close = value.strip().lower() == b"close"
            while len(data) < length or end not in data:
                data += self.request.recv(65536)
            data = data[length:] if not end else data.partition(end)[2]
            self.server.seen.append((number, method.decode(), path.decode()))
            if close:  # answered as asked, and the connection ends
                self.server.told_to_close.append(path.decode())
                body = b"true " + path
                with contextlib.suppress(OSError):
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                return
            with contextlib.suppress(OSError):
                self._answer(method, path)

    def _answer(self, method: bytes, path: bytes) -> None:
        body = b"true " + path
        true = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        send = self.request.sendall
        if path in (b"/api/late", b"/api/later"):
            send(true)
            time.sleep(0.1 if path == b"/api/late" else 0.5)
            send(FAKE)
        elif path == b"/api/same-write":
            send(true + FAKE)
        elif method == b"HEAD":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE))
            time.sleep(0.05)
            send(FAKE)
        elif path == b"/api/chunked":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            send(true)


class RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RawApp)
        self.lock = threading.Lock()
        self.connections = 0
        self.seen: list[tuple[int, str, str]] = []
        self.told_to_close: list[str] = []  # paths of requests that came with Connection: close


class IgnoringApp(BaseHTTPRequestHandler):
    """Stock ``http.server`` in HTTP/1.1 mode: a GET, DELETE or OPTIONS body is left unread;
    a POST to ``/api/refuse`` is answered 400 before its body is read, one to ``/api/noread``
    200 without reading it."""

    protocol_version = "HTTP/1.1"
    server: IgnoringServer

    def answer(self) -> None:
        self.server.seen.append((self.client_address[1], self.command, self.path))
        if self.command == "POST" and self.path not in ("/api/refuse", "/api/noread"):
            self.rfile.read(int(self.headers["Content-Length"]))
        status = 400 if self.path == "/api/refuse" else 200
        body = b"ok " + self.path.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = do_OPTIONS = do_POST = answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class IgnoringServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), IgnoringApp)
        self.seen: list[tuple[int, str, str]] = []  # (app connection's port, method, path)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the proxy closed the connection while the app wrote


@dataclasses.dataclass
class Framing:
    pki: Pki
    loop: LoopThread
    proxy: TransparentProxy
    context: ssl.SSLContext
    raw: RawServer
    raw_port: int  # ingress to the raw app
    ignoring: IgnoringServer
    ignoring_port: int  # ingress to http.server
    reading_port: int  # ingress to the raw app, which the manifest says reads every body

    def connect(self, port: int) -> ssl.SSLSocket:
        return tls_socket(self.context, port)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def framing(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Framing]:
    loop = LoopThread(request.param)
    pki = Pki(tmp_path_factory.mktemp("pki"))
    raw, ignoring = RawServer(), IgnoringServer()
    serve(raw)
    serve(ignoring)
    raw_port, ignoring_port, reading_port = free_port(), free_port(), free_port()
    config = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(
            rules=[
                MeshRule(
                    name="api", sources=[str(spiffe("client"))], http=[HttpRule(path="/api/.*")]
                )
            ]
        ),
        ingress=[
            IngressRoute(port=raw_port, app_port=raw.server_address[1], protocol="http"),
            IngressRoute(port=ignoring_port, app_port=ignoring.server_address[1], protocol="http"),
            IngressRoute(
                port=reading_port,
                app_port=raw.server_address[1],
                protocol="http",
                app_reads_bodies=True,
            ),
        ],
    )
    proxy = TransparentProxy(
        pki.credentials("server", config),
        listen_host="127.0.0.1",
        limits=ProxyLimits(header_timeout=2.0),
    )
    loop.run(proxy.start())
    yield Framing(
        pki=pki,
        loop=loop,
        proxy=proxy,
        context=pki.client_context(pki.credentials("client")),
        raw=raw,
        raw_port=raw_port,
        ignoring=ignoring,
        ignoring_port=ignoring_port,
        reading_port=reading_port,
    )
    loop.run(proxy.close())
    loop.close()
    for server in (raw, ignoring):
        server.shutdown()
        server.server_close()


def nothing_more(sock: ssl.SSLSocket, seconds: float = 0.3) -> bool:
    """Whether the connection stays open and silent for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    return False


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (path.encode(), extra)


# --- Class 5: ambiguous framing -----------------------------------------------------------------


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(SMUGGLED),
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(SMUGGLED),
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n"
            + _chunked(SMUGGLED),
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + _chunked(SMUGGLED),
            501,
        ),
        # An upgrade with a body: held back until a 101 that never comes, it hung.
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
            400,
        ),
        (
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n" + _chunked(SMUGGLED),
            400,
        ),
        # What llhttp refuses already, pinned.
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 4\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n"
            b"\r\nbody",
            400,
        ),
        (b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nbody", 400),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        # The one expectation defined is 100-continue: any other the app would meet, or not,
        # as it pleases (gunicorn answers 417 itself, http.server ignores it).
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 4\r\n\r\nbody",
            417,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
            417,
        ),
    ],
    ids=[
        "identity-then-chunked",
        "chunked-twice",
        "empty-coding",
        "gzip-then-chunked",
        "upgrade-with-content-length",
        "upgrade-header-with-chunked-body",
        "content-length-then-chunked",
        "chunked-then-content-length",
        "content-length-twice",
        "content-length-list",
        "chunked-then-identity",
        "expect-unknown",
        "expect-twice",
    ],
)
def test_ambiguous_framing_is_refused_at_once(
    framing: Framing, request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    before = len(framing.raw.seen)
    with (
        caplog.at_level(logging.INFO, logger="geode"),
        framing.connect(framing.raw_port) as sock,
    ):
        sock.settimeout(2)  # far below the inactivity timeout
        sock.sendall(request_bytes)
        responses = Responses(sock)
        response = responses.read()
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert responses.closed()
    assert framing.raw.seen[before:] == []
    # Logged as every refusal is (the method is "-" where llhttp refused the head).
    logged = f"ingress port {framing.raw_port}: {status} to {spiffe('client')} for "
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(logged) and " '/api/x': " in m for m in messages)


def test_one_chunked_coding_in_any_case_is_framing_enough(framing: Framing) -> None:
    with framing.connect(framing.raw_port) as sock:
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n"
            + _chunked(b"abc")
            + get("/api/after")
        )
        responses = Responses(sock)
        assert [responses.read().body for _ in range(2)] == [b"true /api/x", b"true /api/after"]


# --- Class 2: bodies the app may not have read --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "framing_fields", "body"),
    [
        ("GET", b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        ("GET", b"Transfer-Encoding: chunked\r\n", _chunked(SMUGGLED)),
        ("DELETE", b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
        ("OPTIONS", b"Connection: keep-alive\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
    ],
    ids=["get", "get-chunked", "delete", "options-keep-alive"],
)
def test_a_body_the_app_ignores_never_becomes_a_request(
    framing: Framing, method: str, framing_fields: bytes, body: bytes
) -> None:
    app = framing.ignoring
    before = len(app.seen)
    with framing.connect(framing.ignoring_port) as sock:
        sock.sendall(
            b"%s /api/ok HTTP/1.1\r\nHost: a\r\n%s\r\n%s" % (method.encode(), framing_fields, body)
        )
        responses = Responses(sock)
        response = responses.read()
        assert (response.status, response.body) == (200, b"ok /api/ok")
        assert nothing_more(sock)  # one response to one request
        # The client's connection goes on, over a fresh app connection.
        sock.sendall(get("/api/next"))
        assert responses.read().body == b"ok /api/next"
    seen = app.seen[before:]
    assert [(m, p) for _, m, p in seen] == [(method, "/api/ok"), ("GET", "/api/next")]
    assert seen[0][0] != seen[1][0]


def test_an_app_the_manifest_says_reads_bodies_keeps_its_connection(framing: Framing) -> None:
    """``app_reads_bodies``: a body leaves the app connection in a known state; an ``Expect``
    still does not (a 100-continue answered with a final status leaves the body unsent)."""
    app = framing.raw
    before, closes = len(app.seen), len(app.told_to_close)
    with framing.connect(framing.reading_port) as sock:
        responses = Responses(sock)
        for request_bytes in (
            get("/api/a"),
            b"POST /api/c HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            b"PUT /api/d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunked(b"d"),
            b"GET /api/e HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
            get("/api/f"),
        ):
            sock.sendall(request_bytes)
            assert responses.read().body.startswith(b"true /api/")
    seen = app.seen[before:]
    assert len({number for number, _, _ in seen}) == 1, seen
    assert len(app.told_to_close) == closes


@pytest.mark.parametrize(("path", "status"), [(b"/api/refuse", 400), (b"/api/noread", 200)])
def test_a_post_body_the_app_leaves_unread_never_becomes_a_request(
    framing: Framing, path: bytes, status: int
) -> None:
    """Any body may be left unread, a POST's too: the app is told to close after it."""
    app = framing.ignoring
    before = len(app.seen)
    with framing.connect(framing.ignoring_port) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
            % (path, len(SMUGGLED), SMUGGLED)
        )
        responses = Responses(sock)
        response = responses.read()
        assert (response.status, response.body) == (status, b"ok " + path)
        assert nothing_more(sock)
        sock.sendall(get("/api/next"))
        assert responses.read().body == b"ok /api/next"
    seen = app.seen[before:]
    assert [(m, p) for _, m, p in seen] == [("POST", path.decode()), ("GET", "/api/next")]


def test_the_ingress_s_own_answer_to_a_head_has_no_body(framing: Framing) -> None:
    """A body after a refused HEAD's head would pass for the answer to the next request."""
    with framing.connect(framing.raw_port) as sock:
        sock.sendall(b"HEAD /secret HTTP/1.1\r\nHost: a\r\n\r\n" + get("/api/after"))
        responses = Responses(sock)
        refused = responses.read(head=True)
        assert refused.status == 403
        assert int(refused.headers["content-length"]) > 0
        assert responses.read().body == b"true /api/after"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/refuse HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
        b"POST /api/ok HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["error-before-the-body", "expect"],
)
def test_after_a_body_the_app_may_have_skipped_the_app_connection_is_not_reused(
    framing: Framing, head: bytes
) -> None:
    app = framing.ignoring
    before = len(app.seen)
    with framing.connect(framing.ignoring_port) as sock:
        sock.sendall(head)
        responses = Responses(sock)
        if b"Expect" in head:
            assert responses.read().status == 100
        sock.sendall(b"xxxxx")  # left unread by /api/refuse: the start of a request line
        response = responses.read()
        assert response.status == (400 if b"refuse" in head else 200)
        assert nothing_more(sock)
        sock.sendall(get("/api/next"))
        assert responses.read().body == b"ok /api/next"
    seen = app.seen[before:]
    assert [(m, p) for _, m, p in seen] == [
        ("POST", head.split(b" ")[1].decode()),
        ("GET", "/api/next"),
    ]
    assert seen[0][0] != seen[1][0]


def test_an_ordinary_keep_alive_sequence_reuses_the_app_connection(framing: Framing) -> None:
    app = framing.raw
    before = len(app.seen)
    with framing.connect(framing.raw_port) as sock:
        responses = Responses(sock)
        exchanges = [
            get("/api/a"),  # the short cut both ways
            get("/api/b", b"Connection: keep-alive\r\n"),  # the parser
            get("/api/chunked"),  # a chunked response
            b"OPTIONS /api/d HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            get("/api/e"),
        ]
        for request_bytes in exchanges:
            sock.sendall(request_bytes)
            assert responses.read().body.startswith(b"true /api/")
    assert len({number for number, _, _ in app.seen[before:]}) == 1, app.seen[before:]


def test_after_any_body_the_app_is_told_to_close_and_the_client_goes_on(
    framing: Framing,
) -> None:
    """A handler may leave even a POST's body unread (an error answered first, a body it
    ignores): the app is told ``Connection: close``, its connection serves no other request,
    and its own ``Connection: close`` in answer does not end the client's connection."""
    app = framing.raw
    before = len(app.seen)
    with framing.connect(framing.raw_port) as sock:
        responses = Responses(sock)
        exchanges = [
            get("/api/a"),
            b"POST /api/c HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            get("/api/b"),
            b"PUT /api/d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunked(b"d"),
            get("/api/e"),
        ]
        for request_bytes in exchanges:
            sock.sendall(request_bytes)
            response = responses.read()
            assert response.body.startswith(b"true /api/")
            assert response.headers.get("connection") != "close"
    seen = app.seen[before:]
    numbers = [number for number, _, _ in seen]
    # a and c share one app connection, b and d another, e has its own.
    assert numbers[0] == numbers[1] != numbers[2] == numbers[3] != numbers[4], seen
    assert app.told_to_close[-2:] == ["/api/c", "/api/d"]


# --- Class 3: bytes after a response ------------------------------------------------------------


def _exchange(sock: ssl.SSLSocket, requests: list[bytes], pipelined: bool) -> list[Response]:
    responses = Responses(sock)
    got = []
    if pipelined:
        sock.sendall(b"".join(requests))
    for request_bytes in requests:
        if not pipelined:
            sock.sendall(request_bytes)
        got.append(responses.read(head=request_bytes.startswith(b"HEAD")))
        if not pipelined:
            time.sleep(0.3)  # what the app sends late arrives meanwhile
    return got


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "one-after-the-other"])
@pytest.mark.parametrize(
    "first",
    [get("/api/late"), get("/api/same-write"), b"HEAD /api/head-body HTTP/1.1\r\nHost: a\r\n\r\n"],
    ids=["late-bytes", "same-write", "late-body-to-head"],
)
def test_bytes_after_a_response_never_reach_the_client(
    framing: Framing, first: bytes, pipelined: bool
) -> None:
    app = framing.raw
    before = len(app.seen)
    with framing.connect(framing.raw_port) as sock:
        answers = _exchange(sock, [first, get("/api/next"), get("/api/last")], pipelined)
    assert answers[0].status == 200
    path = first.split(b" ")[1]
    assert answers[0].body == (b"" if first.startswith(b"HEAD") else b"true " + path)
    assert [a.body for a in answers[1:]] == [b"true /api/next", b"true /api/last"]
    seen = app.seen[before:]
    assert [p for _, _, p in seen] == [path.decode(), "/api/next", "/api/last"]
    # The connection that sent bytes out of turn served nothing more.
    assert seen[0][0] not in (seen[1][0], seen[2][0])


def _app_transport(framing: Framing, sock: ssl.SSLSocket) -> Any:
    """The app transport behind the proxy's end of the client connection ``sock``."""
    client = sock.getsockname()

    async def find() -> Any:
        apps = [
            p._app
            for t in list(framing.proxy._connections.transports)
            if isinstance(p := t.get_protocol(), HttpIngress)
            and t.get_extra_info("peername") == client
        ]
        assert len(apps) == 1
        assert isinstance(apps[0], HttpApp)
        return apps[0].transport

    return framing.loop.run(find())


def test_bytes_waiting_unread_on_an_idle_app_connection_retire_it(framing: Framing) -> None:
    """Bytes the app sent after a response that the proxy has not read yet (its loop busy, or
    reading paused while a client does not read) when the next request comes: that request
    goes to a fresh app connection. Here reading is paused by hand as the late bytes come."""
    app = framing.raw
    before = len(app.seen)
    with framing.connect(framing.raw_port) as sock:
        responses = Responses(sock)
        sock.sendall(get("/api/later"))
        assert responses.read().body == b"true /api/later"
        transport = _app_transport(framing, sock)
        framing.loop.loop.call_soon_threadsafe(transport.pause_reading)
        time.sleep(0.8)  # the fake response waits in the kernel
        sock.sendall(get("/api/next"))
        time.sleep(0.1)

        def resume() -> None:
            if not transport.is_closing():
                transport.resume_reading()

        framing.loop.loop.call_soon_threadsafe(resume)
        assert responses.read().body == b"true /api/next"
    seen = app.seen[before:]
    assert [p for _, _, p in seen] == ["/api/later", "/api/next"]
    assert seen[0][0] != seen[1][0]
