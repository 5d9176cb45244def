"""The transparent TLS proxy over real sockets on 127.0.0.1: HTTP and TCP ingress, egress.

A throwaway mesh PKI, a plain ``http.server`` app and a TCP echo app stand behind a proxy for
the service ``server``; a second proxy, for ``client``, carries the client's egress. A ``quick``
pair of proxies, whose inactivity timeout is short, stands beside them. The proxies run on an
event loop in a thread; the tests talk to them with blocking sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import resource
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from http.client import HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from geode.errors import LaunchError
from geode.manifest import (
    EgressRoute,
    HttpRule,
    IngressRoute,
    MeshConfig,
    MeshPolicy,
    MeshRule,
    TcpRule,
)
from geode.pki import (
    CertificateAuthority,
    utc_now,
)
from geode.proxy import ProxyLimits, TransparentProxy
from geode.proxy._http_ingress import HttpIngress
from geode.runtime import Credentials
from tests.proxy.support.mesh import (
    DOMAIN,
    LoopThread,
    Pki,
    Responses,
    serve,
    spiffe,
    tls_socket,
)
from tests.support import free_port

HEADER_TIMEOUT = 0.6
QUICK = 0.3  # inactivity_timeout of the ``quick`` proxies


# --- PKI and clients ---------------------------------------------------------------------------


def refused(talk: Any) -> bool:
    """Whether a connection attempt ended without an HTTP answer."""
    try:
        data: bytes = talk()
    except (OSError, ssl.SSLError):
        return True
    return not data.startswith(b"HTTP/")


# --- Apps behind the proxy ---------------------------------------------------------------------


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]
    finished_at = 0.0  # when the last response was written
    reading_at = 0.0  # when a slow upload began to be read

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client (the proxy) that went away while the app wrote


class App(BaseHTTPRequestHandler):
    """Answers every request with what it saw, as JSON."""

    protocol_version = "HTTP/1.1"
    server: AppServer

    def handle_request(self) -> None:
        if getattr(self, "drop_next", False):  # close this connection without an answer
            self.close_connection = True
            return
        if self.path == "/api/stall":  # never answers
            time.sleep(1.5)
            self.close_connection = True
            return
        if self.path == "/api/sleep":  # answers late
            time.sleep(0.3)
        if self.path == "/api/slow-upload":  # reads the body late, and drops it
            time.sleep(0.5)
            self.server.reading_at = time.monotonic()
            remaining = int(self.headers["Content-Length"])
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
            self.send_response(204)
            self.end_headers()
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen = {
            "method": self.command,
            "path": self.path,
            "peer": self.headers.get_all("X-Geode-Peer"),
            "body": body.decode(),
            "app_port": self.client_address[1],
        }
        self.server.seen.append(seen)
        payload = json.dumps(seen).encode()
        if self.path.startswith("/api/big/"):
            payload = b"b" * int(self.path.rsplit("/", 1)[1])
        self.drop_next = self.path.endswith("/drop-next")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.endswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (payload[:10], payload[10:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.endswith("/until-close"):  # HTTP/1.0 style: the body ends when we close
            self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.server.finished_at = time.monotonic()

    do_GET = do_POST = do_PUT = do_HEAD = handle_request

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Echo(socketserver.BaseRequestHandler):
    """Echoes until EOF; with an HTTP upgrade request first, answers 101 before echoing."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.connections += 1  # type: ignore[attr-defined]
        first = sock.recv(65536)
        if first.startswith(b"GET "):
            first = first.partition(b"\r\n\r\n")[2]
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            )
            first = first or sock.recv(65536)
        while first:
            sock.sendall(first)
            first = sock.recv(65536)
        self.server.finished += 1  # type: ignore[attr-defined]


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    connections = 0
    finished = 0


@dataclasses.dataclass
class Mesh:
    pki: Pki
    loop: LoopThread
    app: AppServer
    echo: EchoServer
    http_port: int
    tcp_port: int
    dead_port: int  # ingress whose app is not listening
    upgrade_port: int  # http ingress in front of the echo app
    egress_port: int
    wrong_egress_port: int  # expects a SPIFFE id the server does not have
    refusing_egress_port: int  # no peers
    client: Credentials
    stranger: Credentials
    server: TransparentProxy

    def context(self, who: Credentials | None) -> ssl.SSLContext:
        return self.pki.client_context(who)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def mesh(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Mesh]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    app = AppServer(("127.0.0.1", 0), App)
    app.seen = []
    echo = EchoServer(("127.0.0.1", 0), Echo)
    serve(app)
    serve(echo)
    app_port, echo_port = app.server_address[1], echo.server_address[1]
    ports = [free_port() for _ in range(7)]
    http_port, tcp_port, dead_port, upgrade_port, egress, wrong, refusing = ports
    server_mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(
            rules=[
                MeshRule(
                    name="api", sources=[str(spiffe("client"))], http=[HttpRule(path="/api/.*")]
                ),
                MeshRule(
                    name="echo", sources=[str(spiffe("client"))], tcp=[TcpRule(ports=[tcp_port])]
                ),
            ]
        ),
        ingress=[
            IngressRoute(port=http_port, app_port=app_port, protocol="http"),
            IngressRoute(port=tcp_port, app_port=echo_port, protocol="tcp"),
            IngressRoute(port=dead_port, app_port=free_port(), protocol="http"),
            IngressRoute(port=upgrade_port, app_port=echo_port, protocol="http"),
        ],
    )
    client_mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="client",
        spiffe_id=str(spiffe("client")),
        egress=[
            EgressRoute(
                host="127.0.0.1", port=tcp_port, local_port=egress, peers=[str(spiffe("server"))]
            ),
            EgressRoute(
                host="127.0.0.1", port=tcp_port, local_port=wrong, peers=[str(spiffe("impostor"))]
            ),
            EgressRoute(host="127.0.0.1", port=tcp_port, local_port=refusing, peers=[]),
        ],
    )
    loop = LoopThread(request.param)
    limits = ProxyLimits(header_timeout=HEADER_TIMEOUT)
    server = TransparentProxy(
        pki.credentials("server", server_mesh), listen_host="127.0.0.1", limits=limits
    )
    client_credentials = pki.credentials("client", client_mesh)
    client = TransparentProxy(client_credentials, listen_host="127.0.0.1")
    loop.run(server.start())
    loop.run(client.start())
    yield Mesh(
        pki=pki,
        loop=loop,
        app=app,
        echo=echo,
        http_port=http_port,
        tcp_port=tcp_port,
        dead_port=dead_port,
        upgrade_port=upgrade_port,
        egress_port=egress,
        wrong_egress_port=wrong,
        refusing_egress_port=refusing,
        client=client_credentials,
        stranger=pki.credentials("stranger"),
        server=server,
    )
    loop.run(client.close())
    loop.run(server.close())
    loop.close()
    app.shutdown()
    echo.shutdown()


def https(mesh: Mesh, who: Credentials | None = None, port: int | None = None) -> HTTPSConnection:
    return HTTPSConnection(
        "127.0.0.1",
        port or mesh.http_port,
        context=mesh.context(who or mesh.client),
        timeout=5,
    )


def permissive(port: int, app_port: int) -> MeshConfig:
    """The mesh view of a server with one HTTP ingress, open to every mesh peer."""
    return MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(mode="permissive"),
        ingress=[IngressRoute(port=port, app_port=app_port, protocol="http")],
    )


def http_ingresses(mesh: Mesh, proxy: TransparentProxy) -> list[dict[str, int]]:
    """The queue length and write buffer of each client connection of a proxy's HTTP ingress,
    read on the proxy's loop."""

    async def inspect() -> list[dict[str, int]]:
        return [
            {"queued": len(p._queue), "buffered": t.get_write_buffer_size()}
            for t in list(proxy._connections.transports)
            if isinstance(p := t.get_protocol(), HttpIngress)
        ]

    found: list[dict[str, int]] = mesh.loop.run(inspect())
    return found


@dataclasses.dataclass
class Quick:
    """Ports of a server proxy and a client proxy whose inactivity_timeout is QUICK."""

    http_port: int  # to the app, permissive
    upgrade_port: int  # http, to the echo app
    tcp_port: int  # tcp, to the echo app
    egress_port: int  # to tcp_port


@pytest.fixture(scope="module")
def quick(mesh: Mesh) -> Iterator[Quick]:
    http_port, upgrade_port, tcp_port, egress_port = (free_port() for _ in range(4))
    app_port, echo_port = mesh.app.server_address[1], mesh.echo.server_address[1]
    server_mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(mode="permissive"),
        ingress=[
            IngressRoute(port=http_port, app_port=app_port, protocol="http"),
            IngressRoute(port=upgrade_port, app_port=echo_port, protocol="http"),
            IngressRoute(port=tcp_port, app_port=echo_port, protocol="tcp"),
        ],
    )
    client_mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="client",
        spiffe_id=str(spiffe("client")),
        egress=[
            EgressRoute(
                host="127.0.0.1",
                port=tcp_port,
                local_port=egress_port,
                peers=[str(spiffe("server"))],
            )
        ],
    )
    limits = ProxyLimits(header_timeout=HEADER_TIMEOUT, inactivity_timeout=QUICK)
    proxies = [
        TransparentProxy(
            mesh.pki.credentials(config.service, config, tag="-quick"),
            listen_host="127.0.0.1",
            limits=limits,
        )
        for config in (server_mesh, client_mesh)
    ]
    for proxy in proxies:
        mesh.loop.run(proxy.start())
    yield Quick(http_port, upgrade_port, tcp_port, egress_port)
    for proxy in proxies:
        mesh.loop.run(proxy.close())


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer ends the connection within ``seconds``, without sending anything."""
    started = time.monotonic()
    try:
        data = sock.recv(1)
    except (ConnectionError, ssl.SSLError):
        data = b""
    except TimeoutError:
        return False
    return data == b"" and time.monotonic() - started < seconds


# --- HTTP ingress ------------------------------------------------------------------------------


def test_an_allowed_peer_reaches_the_app_over_one_keep_alive_connection(mesh: Mesh) -> None:
    conn = https(mesh)
    seen = []
    for path in ("/api/one", "/api/two?x=1", "/api/three"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        seen.append(json.loads(response.read()))
        assert not response.will_close
    conn.close()
    assert [s["path"] for s in seen] == ["/api/one", "/api/two?x=1", "/api/three"]
    assert all(s["peer"] == [str(spiffe("client"))] for s in seen)
    # One client connection, one app connection.
    assert len({s["app_port"] for s in seen}) == 1


def test_request_bodies_with_content_length_and_chunked_reach_the_app(mesh: Mesh) -> None:
    conn = https(mesh)
    big = "x" * (3 * 1024 * 1024)  # larger than every buffer on the way: flow control works
    conn.request("POST", "/api/upload", body=big.encode())
    assert json.loads(conn.getresponse().read())["body"] == big
    conn.request(
        "PUT", "/api/upload", body=iter([b"hello ", b"chunked ", b"world"]), encode_chunked=True
    )
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["body"] == "hello chunked world"
    conn.close()


def test_a_large_response_waits_for_a_slow_reader(mesh: Mesh) -> None:
    size = 32 * 1024 * 1024  # more than the kernel buffers on the way can hold
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", mesh.http_port))
    with mesh.context(mesh.client).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /api/big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        time.sleep(0.5)
        reading = time.monotonic()
        response = Responses(sock).read()
    assert len(response.body) == size
    # The proxy stopped reading the app while the client did not read: nothing buffered it all.
    assert mesh.app.finished_at > reading


def test_a_large_upload_waits_for_a_slow_app(mesh: Mesh) -> None:
    size = 32 * 1024 * 1024
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", mesh.http_port))
    with mesh.context(mesh.client).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(
            b"POST /api/slow-upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
        )
        sock.sendall(b"u" * size)
        sent = time.monotonic()
        assert Responses(sock).read().status == 204
    # The proxy stopped reading the client while the app did not read.
    assert sent > mesh.app.reading_at > 0


def test_a_response_that_ends_when_the_app_closes_ends_the_connection(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(b"GET /api/until-close HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["path"] == "/api/until-close"


def test_a_closed_idle_app_connection_is_replaced(mesh: Mesh) -> None:
    conn = https(mesh)
    conn.request("GET", "/api/drop-next")  # the app closes this connection at the next request
    assert conn.getresponse().read()
    conn.request("GET", "/api/retried")  # bodiless GET: sent again on a new app connection
    assert json.loads(conn.getresponse().read())["path"] == "/api/retried"
    conn.request("GET", "/api/drop-next")
    assert conn.getresponse().read()
    conn.request("POST", "/api/not-retried", body=b"x")  # may have had effects: not repeated
    response = conn.getresponse()
    assert response.status == 502
    assert json.loads(response.read())["error"] == "bad_gateway"
    conn.close()


def test_chunked_and_bodiless_responses_end_where_they_should(mesh: Mesh) -> None:
    conn = https(mesh)
    conn.request("GET", "/api/chunked")
    response = conn.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert json.loads(response.read())["path"] == "/api/chunked"
    conn.request("HEAD", "/api/head")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b""
    conn.request("GET", "/api/after-head")
    assert json.loads(conn.getresponse().read())["path"] == "/api/after-head"
    conn.close()


def test_a_denied_request_gets_403_and_the_connection_stays_usable(mesh: Mesh) -> None:
    before = len(mesh.app.seen)
    conn = https(mesh)
    conn.request("GET", "/secret")
    response = conn.getresponse()
    assert response.status == 403
    assert response.getheader("Connection") == "keep-alive"
    assert json.loads(response.read()) == {
        "error": "policy_denied",
        "peer": str(spiffe("client")),
        "reason": "no rule allows GET /secret",
    }
    conn.request("POST", "/secret", body=b"dropped" * 10_000)  # the body is read and dropped
    assert conn.getresponse().read().startswith(b'{"error": "policy_denied"')
    conn.request("GET", "/api/fine")
    assert conn.getresponse().status == 200
    conn.close()
    assert [s["path"] for s in mesh.app.seen[before:]] == ["/api/fine"]


def test_a_peer_without_a_rule_is_denied(mesh: Mesh) -> None:
    conn = https(mesh, mesh.stranger)
    conn.request("GET", "/api/x")
    response = conn.getresponse()
    assert response.status == 403
    assert json.loads(response.read())["peer"] == str(spiffe("stranger"))
    conn.close()


def test_the_proxy_sets_x_geode_peer_and_drops_a_forged_one(mesh: Mesh) -> None:
    conn = https(mesh)
    forged = str(spiffe("admin"))
    conn.request("GET", "/api/who", headers={"X-Geode-Peer": forged, "X_Geode_Peer": forged})
    seen = json.loads(conn.getresponse().read())
    assert seen["peer"] == [str(spiffe("client"))]
    assert forged not in json.dumps(mesh.app.seen[-1])
    conn.close()


def test_pipelined_requests_are_answered_in_order(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            b"GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde"
            b"POST /nope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nGET\r\n0\r\n\r\n"
            b"POST /api/4 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
        )
        responses = Responses(sock)
        answers = [responses.read() for _ in range(4)]
    assert answers[0].json()["path"] == "/api/1"
    assert [a.status for a in answers[1:3]] == [403, 403]
    assert answers[3].json()["body"] == "xyz"


def test_expect_100_continue_passes_through(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            b"POST /api/expect HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        responses = Responses(sock)
        assert responses.read().status == 100
        sock.sendall(b"body")
        assert responses.read().json()["body"] == "body"


def test_an_upgrade_becomes_a_tunnel(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.upgrade_port) as sock:
        sock.sendall(
            b"GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
        )
        responses = Responses(sock)
        assert responses.read().status == 101
        sock.sendall(b"ping")
        assert responses.file.read(4) == b"ping"


def test_an_unreachable_app_gets_502(mesh: Mesh) -> None:
    conn = https(mesh, port=mesh.dead_port)
    for _ in range(2):  # and the connection stays usable
        conn.request("GET", "/api/x")
        response = conn.getresponse()
        assert response.status == 502
        assert json.loads(response.read())["error"] == "bad_gateway"
    conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\x01 garbage\r\n\r\n", 400),
        (b"GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /api/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", 400),
        # Go's h2c server switches on this, which llhttp does not take as an upgrade.
        (
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: HTTP2-Settings\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            400,
        ),
        (b"GET /api/x HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: AAMAAABk\r\n\r\n", 400),
        # What Node's URL, Tomcat or Spring resolve to /secret, though the policy saw /api/...
        (b"GET /api/..\\secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/..%5csecret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/..%5Csecret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/..;/secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/%2e%2e;x=1/secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/x/.;/y HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/x#/../../secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/x HTTP/1.1\r\nHost: a\r\nBig: " + b"a" * (65 * 1024) + b"\r\n\r\n", 431),
    ],
    ids=[
        "garbage",
        "two-lengths",
        "chunked-http-1.0",
        "h2c-upgrade",
        "h2c-upgrade-without-connection-upgrade",
        "http2-settings",
        "backslash",
        "encoded-backslash",
        "encoded-backslash-upper-case",
        "dot-segment-with-parameters",
        "encoded-dot-segment-with-parameters",
        "dot-segment-with-empty-parameters",
        "fragment",
        "oversized-head",
    ],
)
def test_bad_requests_are_refused(mesh: Mesh, request_bytes: bytes, status: int) -> None:
    before = len(mesh.app.seen)
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(request_bytes)
        responses = Responses(sock)
        response = responses.read()
        assert response.status == status
        if status != 400 or b"garbage" in request_bytes:
            assert response.headers["connection"] == "close"
            assert responses.closed()
    assert len(mesh.app.seen) == before


def test_dot_segments_are_resolved_before_the_policy_judges(mesh: Mesh) -> None:
    # Once refused with 400, now resolved: judged, and forwarded, as the path they stand for.
    before = len(mesh.app.seen)
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            b"GET /api/../secret HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /api/%2e%2e/secret HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /api/x/../y?z=/../ HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        responses = Responses(sock)
        denied = [responses.read() for _ in range(2)]
        allowed = responses.read()
    assert [(r.status, r.json()["reason"]) for r in denied] == [
        (403, "no rule allows GET /secret")
    ] * 2
    assert allowed.json()["path"] == "/api/y?z=/../"
    assert [seen["path"] for seen in mesh.app.seen[before:]] == ["/api/y?z=/../"]


def test_a_backslash_in_the_query_is_not_in_the_path(mesh: Mesh) -> None:
    conn = https(mesh)
    conn.request("GET", "/api/q?dir=C:%5CUsers%5Cme")
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["path"] == "/api/q?dir=C:%5CUsers%5Cme"
    conn.close()


@pytest.mark.parametrize(
    "headers",
    [b"", b"Upgrade: echo\r\n"],
    ids=["no-upgrade-header", "upgrade-without-connection-upgrade"],
)
def test_a_101_that_no_upgrade_asked_for_ends_the_connection(mesh: Mesh, headers: bytes) -> None:
    # The echo app answers any GET with 101 and echoes: were it spliced, what follows would
    # reach the app without a policy decision.
    before = mesh.echo.connections
    with tls_socket(mesh.context(mesh.client), mesh.upgrade_port) as sock:
        sock.sendall(b"GET /api/ws HTTP/1.1\r\nHost: a\r\n%s\r\n" % headers)
        responses = Responses(sock)
        response = responses.read()
        assert response.status == 502
        assert response.headers["connection"] == "close"
        assert response.json()["reason"] == "the app switched protocols unasked"
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /secret HTTP/1.1\r\nHost: a\r\n\r\n")
        assert responses.closed()
    assert mesh.echo.connections == before + 1


def test_trailers_count_against_the_head_limit(mesh: Mesh) -> None:
    before = len(mesh.app.seen)
    trailers = b"X-Trailer: %s\r\n" % (b"t" * 1000) * 70  # 70 KiB: over 64 KiB
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n"
        )
        responses = Responses(sock)
        response = responses.read()
        assert response.status == 431
        assert response.json()["reason"] == "request trailers too large"
        assert responses.closed()
    assert len(mesh.app.seen) == before


def test_a_trailer_that_never_ends_is_refused(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Long: "
        )
        for _ in range(20):  # 160 KiB of one trailer, never finished
            try:
                sock.sendall(b"a" * 8192)
            except OSError:
                break
        assert Responses(sock).read().status == 431


def test_pipelined_requests_wait_in_a_bounded_queue(mesh: Mesh) -> None:
    count = 1000  # tiny requests: one read holds hundreds of them
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(
            # A chunked body is parsed in larger steps: none goes far past its end.
            b"POST /api/sleep HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (20_000, b"b" * 20_000)
            + b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n" * count
        )
        time.sleep(0.15)  # the app answers the first after 0.3 s
        queued = [c["queued"] for c in http_ingresses(mesh, mesh.server)]
        responses = Responses(sock)
        statuses = [responses.read().status for _ in range(count + 1)]
    assert statuses == [200] + [403] * count
    assert 1 < max(queued) <= 64


def test_a_client_that_does_not_read_is_answered_no_further(mesh: Mesh) -> None:
    # Denied requests are answered by the proxy itself: 16 KiB each way.
    request = b"GET /nope/%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"x" * 16000)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", mesh.http_port))
    with mesh.context(mesh.client).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            for _ in range(1000):  # 16 MiB
                sock.sendall(request)
        buffered = [c["buffered"] for c in http_ingresses(mesh, mesh.server)]
    assert max(buffered) < 1024 * 1024


def test_an_oversized_head_is_refused_before_it_ends(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as sock:
        sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n")
        for _ in range(20):  # 160 KiB of one header, never finished
            try:
                sock.sendall(b"X-Long: " + b"a" * 8192)
            except OSError:
                break
        assert Responses(sock).read().status == 431


def test_a_slow_head_gets_408_while_others_are_served(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.http_port) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n")
        conn = https(mesh)
        conn.request("GET", "/api/meanwhile")
        assert conn.getresponse().status == 200
        conn.close()
        responses = Responses(slow)
        assert responses.read().status == 408
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
        assert responses.closed()


@pytest.mark.parametrize("who", ["other-ca", "expired", "no-certificate"])
def test_clients_without_a_valid_mesh_certificate_fail_the_handshake(mesh: Mesh, who: str) -> None:
    if who == "other-ca":
        other = CertificateAuthority.create_root().create_intermediate("mesh")
        context = mesh.context(mesh.pki.credentials("client", issuer=other, tag="-other"))
    elif who == "expired":
        long_ago = utc_now() - datetime.timedelta(days=3)
        context = mesh.context(mesh.pki.credentials("client", clock=lambda: long_ago, tag="-old"))
    else:
        context = mesh.context(None)
    before = len(mesh.app.seen)

    def talk() -> bytes:
        with tls_socket(context, mesh.http_port) as sock:
            sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            return sock.recv(65536)

    assert refused(talk)
    assert len(mesh.app.seen) == before


def test_a_plaintext_client_gets_nothing_useful(mesh: Mesh) -> None:
    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", mesh.http_port), timeout=5) as sock:
            sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            return sock.recv(65536)

    before = len(mesh.app.seen)
    assert refused(talk)
    assert len(mesh.app.seen) == before


def test_request_targets_are_logged_escaped(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="geode"),
        tls_socket(mesh.context(mesh.client), mesh.http_port) as sock,
    ):
        sock.sendall(
            b"GET /api/..%5c%0d%0aFORGED:1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /nope%E2%80%A8FORGED:2 HTTP/1.1\r\nHost: a\r\n\r\n"  # U+2028
            b"GET /nope%0d%0aFORGED:3 HTTP/1.1\r\nHost: a\r\n\r\n"  # no control in a path
        )
        responses = Responses(sock)
        assert [responses.read().status for _ in range(3)] == [400, 403, 400]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("geode")]
    assert any("400" in m and "'/api/..%5c%0d%0aFORGED:1'" in m for m in messages)
    assert any("/nope\\u2028FORGED:2" in m for m in messages)  # the policy's denial
    assert any("400" in m and "'/nope%0d%0aFORGED:3'" in m for m in messages)
    assert not [m for m in messages if "\r" in m or "\n" in m or "\u2028" in m]


# --- Inactivity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        b"GET /api/stall HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=["body-never-comes", "app-never-answers"],
)
def test_a_stalled_exchange_gets_408(mesh: Mesh, quick: Quick, request_bytes: bytes) -> None:
    with tls_socket(mesh.context(mesh.client), quick.http_port) as sock:
        started = time.monotonic()
        sock.sendall(request_bytes)
        responses = Responses(sock)
        response = responses.read()
        assert response.status == 408
        assert response.json()["error"] == "request_timeout"
        assert QUICK * 0.9 <= time.monotonic() - started < QUICK + 2
        assert responses.closed()


def test_a_slow_but_steady_exchange_goes_on(mesh: Mesh, quick: Quick) -> None:
    with tls_socket(mesh.context(mesh.client), quick.http_port) as sock:
        sock.sendall(b"POST /api/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
        for byte in b"slow":  # longer than QUICK in all, each byte within QUICK of the last
            time.sleep(QUICK / 3)
            sock.sendall(bytes([byte]))
        assert Responses(sock).read().json()["body"] == "slow"


def test_a_client_that_does_not_read_the_response_is_cut_off(mesh: Mesh, quick: Quick) -> None:
    size = 32 * 1024 * 1024
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", quick.http_port))
    received = 0
    with mesh.context(mesh.client).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /api/big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        time.sleep(QUICK * 2)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
    assert received < size


def test_an_idle_tunnel_is_closed(mesh: Mesh, quick: Quick) -> None:
    with tls_socket(mesh.context(mesh.client), quick.upgrade_port) as sock:
        sock.sendall(
            b"GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
        )
        responses = Responses(sock)
        assert responses.read().status == 101
        for _ in range(4):  # busy for longer than QUICK: each byte moved starts it over
            sock.sendall(b"ping")
            assert responses.file.read(4) == b"ping"
            time.sleep(QUICK / 3)
        assert closed_within(sock, QUICK + 2)


@pytest.mark.parametrize("route", ["tcp-ingress", "egress"])
def test_an_idle_splice_is_closed(mesh: Mesh, quick: Quick, route: str) -> None:
    if route == "tcp-ingress":
        sock: socket.socket = tls_socket(mesh.context(mesh.client), quick.tcp_port)
    else:
        sock = socket.create_connection(("127.0.0.1", quick.egress_port), timeout=5)
    with sock:
        for _ in range(4):  # busy for longer than QUICK: each byte moved starts it over
            sock.sendall(b"tick")
            assert sock.recv(4) == b"tick"
            time.sleep(QUICK / 3)
        assert closed_within(sock, QUICK + 2)


# --- TCP ingress and egress --------------------------------------------------------------------


def test_tcp_ingress_splices_an_allowed_peer_and_closes_a_denied_one(mesh: Mesh) -> None:
    with tls_socket(mesh.context(mesh.client), mesh.tcp_port) as sock:
        sock.sendall(b"hello over tcp")
        assert sock.recv(100) == b"hello over tcp"
    before = mesh.echo.connections
    with tls_socket(mesh.context(mesh.stranger), mesh.tcp_port) as sock:
        try:
            sock.sendall(b"let me in")
            assert sock.recv(100) == b""
        except (OSError, ssl.SSLError):
            pass
    assert mesh.echo.connections == before


def test_tcp_ingress_passes_the_clients_close_on_to_the_app(mesh: Mesh) -> None:
    before = mesh.echo.finished
    with tls_socket(mesh.context(mesh.client), mesh.tcp_port) as sock:
        sock.sendall(b"bye")
        assert sock.recv(100) == b"bye"
    deadline = time.monotonic() + 5
    while mesh.echo.finished == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mesh.echo.finished == before + 1


def test_egress_answers_an_app_that_half_closed(mesh: Mesh) -> None:
    with socket.create_connection(("127.0.0.1", mesh.egress_port), timeout=5) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # TLS cannot pass this on; the answer still comes back
        received = b""
        while len(received) < 10 and (chunk := sock.recv(100)):
            received += chunk
        assert received == b"last words"


def test_egress_reaches_the_server_with_the_expected_identity(mesh: Mesh) -> None:
    with socket.create_connection(("127.0.0.1", mesh.egress_port), timeout=5) as sock:
        payload = bytes(range(256)) * 4096  # 1 MiB through egress, ingress, echo and back
        threading.Thread(target=sock.sendall, args=(payload,), daemon=True).start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
        assert received == payload


@pytest.mark.parametrize("route", ["wrong-identity", "no-peers"])
def test_egress_refuses_a_destination_it_cannot_trust(mesh: Mesh, route: str) -> None:
    port = mesh.wrong_egress_port if route == "wrong-identity" else mesh.refusing_egress_port
    before = mesh.echo.connections
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"secret")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert mesh.echo.connections == before


# --- Lifecycle ---------------------------------------------------------------------------------


def test_close_drops_connections_and_leaves_no_listener(mesh: Mesh) -> None:
    port = free_port()
    config = permissive(port, mesh.app.server_address[1])
    proxy = TransparentProxy(
        mesh.pki.credentials("server", config, tag="-2"), listen_host="127.0.0.1"
    )
    mesh.loop.run(proxy.start())
    conn = https(mesh, port=port)
    conn.request("GET", "/anything")
    assert conn.getresponse().read()
    mesh.loop.run(proxy.close())

    def ask_again() -> None:
        conn.request("GET", "/again")
        conn.getresponse()

    with pytest.raises(OSError):
        ask_again()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_port_in_use_is_a_launch_error_naming_it(mesh: Mesh) -> None:
    ingress_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        config = MeshConfig(
            trust_domain=DOMAIN,
            service="client",
            spiffe_id=str(spiffe("client")),
            ingress=[IngressRoute(port=ingress_port, app_port=1, protocol="tcp")],
            egress=[EgressRoute(host="localhost", port=1, local_port=busy_port, peers=[])],
        )
        proxy = TransparentProxy(
            mesh.pki.credentials("client", config, tag="-3"), listen_host="127.0.0.1"
        )
        with pytest.raises(LaunchError, match=f"127.0.0.1:{busy_port}"):
            mesh.loop.run(proxy.start())
    # The listener bound before the failure is gone too.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ingress_port), timeout=5)


def test_a_proxy_needs_a_mesh_view(mesh: Mesh) -> None:
    with pytest.raises(LaunchError, match="mesh view"):
        TransparentProxy(dataclasses.replace(mesh.client, mesh=None))


def test_connections_beyond_max_connections_are_closed_at_once(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proxy = TransparentProxy(
        mesh.pki.credentials("server", permissive(port, mesh.app.server_address[1]), tag="-4"),
        listen_host="127.0.0.1",
        limits=ProxyLimits(max_connections=2),
    )
    mesh.loop.run(proxy.start())
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        for _ in range(5):  # no TLS handshake needed to hold a place: these get none
            with socket.create_connection(("127.0.0.1", port), timeout=2) as extra:
                assert closed_within(extra, 1)
        idle.pop().close()  # its place comes back once the proxy sees its handshake fail
        deadline = time.monotonic() + 3
        while True:
            try:
                conn = https(mesh, port=port)
                conn.request("GET", "/api/x")
                assert conn.getresponse().status == 200
                conn.close()
                break
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
        mesh.loop.run(proxy.close())
    warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warnings) == 1  # not one per connection
    assert not [r for r in caplog.records if r.exc_info]


def test_start_raises_the_open_file_limit(mesh: Mesh) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 4096:
        pytest.skip("no hard limit above 4096 to raise the soft limit to")
    port = free_port()
    proxy = TransparentProxy(
        mesh.pki.credentials("server", permissive(port, mesh.app.server_address[1]), tag="-5"),
        listen_host="127.0.0.1",
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    try:
        mesh.loop.run(proxy.start())
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        mesh.loop.run(proxy.close())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_accept_failures_are_logged_briefly_and_retried(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proxy = TransparentProxy(
        mesh.pki.credentials("server", permissive(port, mesh.app.server_address[1]), tag="-6"),
        listen_host="127.0.0.1",
    )
    mesh.loop.run(proxy.start())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket()
    client.settimeout(5)
    fillers: list[int] = []
    try:
        # No descriptor left for the proxy to accept with: EMFILE, again and again.
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        client.connect(("127.0.0.1", port))
        time.sleep(0.3)  # more than one try
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with mesh.context(mesh.client).wrap_socket(client, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert Responses(sock).read().status == 200
    finally:
        mesh.loop.run(proxy.close())
    failures = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(failures) == 1
    assert not [r for r in caplog.records if r.exc_info]


class OneWriteApp(socketserver.BaseRequestHandler):
    """Records each request head as it arrived and answers it with one write (a head whose
    odd spacing the full parser would normalise); for ``/ok/split``, head and body apart; for
    ``/ok/head-split``, the head in two pieces; for ``/ok/extra``, head, then the body and
    bytes past it."""

    server: OneWriteServer

    def handle(self) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = self.request.recv(65536)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            self.server.heads.append(head + b"\r\n\r\n")
            body = b"seen %d" % len(self.server.heads)
            response = b"HTTP/1.1 200 OK\r\nX-Odd:   spaced  \r\ncontent-length: %d\r\n\r\n" % len(
                body
            )
            path = head.split(b" ")[1]
            # Recorded before it is sent: the client may read it before this thread runs again.
            self.server.sent.append(response + body)
            if path in (b"/ok/split", b"/ok/extra"):
                self.request.sendall(response)
                time.sleep(0.05)
                self.request.sendall(body + (b"junk" if path == b"/ok/extra" else b""))
            elif path == b"/ok/head-split":
                self.request.sendall(response[:10])
                time.sleep(0.05)
                self.request.sendall(response[10:] + body)
            else:
                self.request.sendall(response + body)


class OneWriteServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    heads: list[bytes]
    sent: list[bytes]


def test_simple_exchanges_pass_byte_for_byte_and_others_fall_back(mesh: Mesh) -> None:
    """The ingress's fast path: a simple request reaches the app as the client sent it, with
    only the ingress's own fields added (X-Forwarded-For, X-Forwarded-Proto, X-Geode-Peer),
    and a simple response reaches the client as the app sent it. A denied request, a request
    the full parser must read, and a response in two pieces still get their usual handling on
    the same connection."""
    app = OneWriteServer(("127.0.0.1", 0), OneWriteApp)
    app.heads, app.sent = [], []
    serve(app)
    port = free_port()
    config = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(
            rules=[
                MeshRule(name="ok", sources=[str(spiffe("client"))], http=[HttpRule(path="/ok/.*")])
            ]
        ),
        ingress=[IngressRoute(port=port, app_port=app.server_address[1], protocol="http")],
    )
    proxy = TransparentProxy(
        mesh.pki.credentials("server", config, tag="-fast"), listen_host="127.0.0.1"
    )
    mesh.loop.run(proxy.start())
    peer_line = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
    peer_line += b"X-Geode-Peer: %s\r\n\r\n" % str(spiffe("client")).encode()
    try:
        with tls_socket(mesh.context(mesh.client), port) as sock:
            responses = Responses(sock)
            for n, path in enumerate((b"/ok/a", b"/ok/b?x=1"), start=1):
                head = b"GET %s HTTP/1.1\r\nHost: server\r\nAccept:   */*  \r\n\r\n" % path
                sock.sendall(head)
                response = responses.read()
                assert (response.status, response.body) == (200, b"seen %d" % n)
                assert app.heads[-1] == head[:-2] + peer_line
                assert response.headers["x-odd"] == "spaced"
            # The same bytes at the client: read one whole exchange raw.
            sock.sendall(b"GET /ok/raw HTTP/1.1\r\nHost: server\r\n\r\n")
            expected = b"HTTP/1.1 200 OK\r\nX-Odd:   spaced  \r\ncontent-length: 6\r\n\r\nseen 3"
            got = b""
            while len(got) < len(expected):
                got += sock.recv(65536)
            assert got == expected == app.sent[-1]

            sock.sendall(b"GET /admin HTTP/1.1\r\nHost: server\r\n\r\n")
            denied = responses.read()
            assert denied.status == 403
            assert denied.json()["error"] == "policy_denied"
            assert len(app.heads) == 3

            # Connection: keep-alive is for the full parser, which rebuilds the head.
            sock.sendall(b"GET /ok/c HTTP/1.1\r\nHost: server\r\nConnection:  keep-alive\r\n\r\n")
            assert responses.read().status == 200
            assert b"Connection: keep-alive\r\n" in app.heads[-1]

            for n, path in enumerate((b"/ok/split", b"/ok/head-split", b"/ok/d"), start=5):
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: server\r\n\r\n" % path)
                response = responses.read()
                assert (response.status, response.body) == (200, b"seen %d" % n)
                assert response.headers["x-odd"] == "spaced"
            # Bytes past the end of a response: the client gets the response, and its
            # connection goes on; the app's is dropped, the next request opens another.
            sock.sendall(b"GET /ok/extra HTTP/1.1\r\nHost: server\r\n\r\n")
            assert responses.read().body == b"seen 8"
            sock.sendall(b"GET /ok/after HTTP/1.1\r\nHost: server\r\n\r\n")
            assert responses.read().body == b"seen 9"
    finally:
        mesh.loop.run(proxy.close())
        app.shutdown()
        app.server_close()
