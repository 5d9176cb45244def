"""What the app behind the HTTP ingress sees of a request's fields: no field the client named
with an underscore, no forwarding or method-override field from the client, the ingress's own
``X-Forwarded-For``/``X-Forwarded-Proto``/``X-Geode-Peer``, and never a request with two Hosts
(see ``geode.proxy._http_message``).

A real ``TransparentProxy`` over real TLS on 127.0.0.1 stands in front of real app servers run
as processes, with their default settings, which trust such fields from 127.0.0.1, where the
ingress connects from: gunicorn serving a Flask app, and uvicorn serving an ASGI app; and in
front of a socket app that records each request byte for byte. The client connects from
127.0.0.2, so that the address the app is told is the client's, not the ingress's. Each request
is sent as a simple head (the ingress's fast path) and with a field that sends it to the full
parser.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.manifest import HttpRule, IngressRoute, MeshConfig, MeshPolicy, MeshRule
from geode.proxy import TransparentProxy, _http_message
from geode.proxy._http_message import added_fields, for_app, header_lines, simple_request
from tests.proxy.support.mesh import DOMAIN, LoopThread, Pki, Responses, spiffe
from tests.support import free_port, wait_for_port

CLIENT_HOST = "127.0.0.2"  # the client's address: not the ingress's (127.0.0.1)
PATHS = ["fast", "parser"]
PARSER_FIELD = b"Connection: keep-alive\r\n"  # a careful field: the full parser reads the head

# Flask behind gunicorn: two routes, and a method-override middleware of the usual kind.
WSGI_APP = """
from flask import Flask, jsonify, request

flask_app = Flask(__name__)


@flask_app.route("/admin", methods=["GET", "DELETE"])
def admin():
    return report("admin")


@flask_app.route("/files/<path:name>", methods=["GET", "DELETE"])
def files(name):
    return report("files")


def report(route):
    env = request.environ
    return jsonify(
        route=route,
        method=env["REQUEST_METHOD"],
        script_name=env["SCRIPT_NAME"],
        path_info=env["PATH_INFO"],
        remote_addr=env["REMOTE_ADDR"],
        scheme=env["wsgi.url_scheme"],
        forwarded_for=env.get("HTTP_X_FORWARDED_FOR"),
        fields=sorted(key for key in env if key.startswith("HTTP_")),
    )


def method_override(wsgi):
    def wrapped(environ, start_response):
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE")
        if override:
            environ["REQUEST_METHOD"] = override.upper()
        return wsgi(environ, start_response)
    return wrapped


app = method_override(flask_app)
"""

ASGI_APP = """
import json


async def app(scope, receive, send):
    body = json.dumps(
        {
            "client": scope["client"],
            "scheme": scope["scheme"],
            "fields": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
    ).encode()
    length = str(len(body)).encode()
    start = {"type": "http.response.start", "status": 200}
    start["headers"] = [(b"content-type", b"application/json"), (b"content-length", length)]
    await send(start)
    await send({"type": "http.response.body", "body": body})
"""


# --- The recording app ---------------------------------------------------------------------


class Recorder(socketserver.BaseRequestHandler):
    """Records each request as it arrived (head, then the chunked body with its trailers) and
    answers it with 200."""

    server: RecorderServer

    def handle(self) -> None:
        reader = self.request.makefile("rb")
        while head := self._head(reader):
            body = b""
            if b"\r\ntransfer-encoding: chunked\r\n" in head.lower():
                while (line := reader.readline()) != b"0\r\n":
                    body += line + reader.read(int(line, 16) + 2)
                body += line
                while (line := reader.readline()) not in (b"\r\n", b""):
                    body += line
                body += line
            self.server.seen.append((head, body))
            self.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    @staticmethod
    def _head(reader: Any) -> bytes:
        head = b""
        while (line := reader.readline()) not in (b"\r\n", b""):
            head += line
        return head + line if line else b""


class RecorderServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    seen: list[tuple[bytes, bytes]]


# --- Fixtures ------------------------------------------------------------------------------


@dataclass
class Servers:
    gunicorn: int
    uvicorn: int
    recorder: RecorderServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("apps")
    (tmp / "wsgi_app.py").write_text(WSGI_APP)
    (tmp / "asgi_app.py").write_text(ASGI_APP)
    gunicorn, uvicorn = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        for port, command in (
            (gunicorn, ["gunicorn", "--bind", f"127.0.0.1:{gunicorn}", "wsgi_app:app"]),
            (uvicorn, ["uvicorn", "--port", str(uvicorn), "--lifespan", "off", "asgi_app:app"]),
        ):
            stack.enter_context(_app_server(tmp, port, command))
        recorder = RecorderServer(("127.0.0.1", 0), Recorder)
        recorder.seen = []
        threading.Thread(target=recorder.serve_forever, daemon=True).start()
        stack.callback(recorder.server_close)
        stack.callback(recorder.shutdown)
        yield Servers(gunicorn, uvicorn, recorder)


@contextlib.contextmanager
def _app_server(tmp: Path, port: int, command: list[str]) -> Iterator[None]:
    """An app server process with its default settings (whatever the environment says)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("FORWARDED_ALLOW_IPS", "GUNICORN_CMD_ARGS")
    }
    log = tmp / f"{command[0]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *command], cwd=tmp, env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port, process, log)
        yield
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Ingress:
    pki: Pki
    client: ssl.SSLContext
    gunicorn: int
    uvicorn: int
    recorder: int
    seen: list[tuple[bytes, bytes]]

    def exchange(self, port: int, request: bytes) -> tuple[int, Any]:
        """One request from CLIENT_HOST over a fresh connection: the status and, for JSON, the
        body read as such."""
        raw = socket.create_connection(("127.0.0.1", port), 5, source_address=(CLIENT_HOST, 0))
        with self.client.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(request)
            response = Responses(sock).read()
        ok = response.headers.get("content-type") == "application/json"
        return response.status, json.loads(response.body) if ok else response.body


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def ingress(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Ingress]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    ports = {free_port(): app for app in (servers.gunicorn, servers.uvicorn)}
    recorder = free_port()
    ports[recorder] = servers.recorder.server_address[1]
    client = [str(spiffe("client"))]
    config = MeshConfig(
        trust_domain=DOMAIN,
        service="server",
        spiffe_id=str(spiffe("server")),
        policy=MeshPolicy(
            rules=[
                MeshRule(
                    name="files",
                    sources=client,
                    http=[HttpRule(methods=["GET"], path="^/files/.*$")],
                ),
                MeshRule(name="record", sources=client, http=[HttpRule(path="^/record/.*$")]),
            ]
        ),
        ingress=[IngressRoute(port=p, app_port=a, protocol="http") for p, a in ports.items()],
    )
    loop = LoopThread(request.param)
    proxy = TransparentProxy(pki.credentials("server", config), listen_host="127.0.0.1")
    loop.run(proxy.start())
    gunicorn, uvicorn = list(ports)[:2]
    try:
        yield Ingress(
            pki,
            pki.client_context(pki.credentials("client")),
            gunicorn,
            uvicorn,
            recorder,
            servers.recorder.seen,
        )
    finally:
        loop.run(proxy.close())
        loop.close()


def get(path: bytes, fields: bytes, way: str) -> bytes:
    """A GET head with ``fields``, as a simple head or one the full parser must read."""
    extra = PARSER_FIELD if way == "parser" else b""
    return b"GET %s HTTP/1.1\r\nHost: server\r\n%s%s\r\n" % (path, fields, extra)


# --- Real app servers ----------------------------------------------------------------------


@pytest.mark.parametrize("way", PATHS)
def test_gunicorn_does_not_take_the_path_apart_on_a_clients_script_name(
    ingress: Ingress, way: str
) -> None:
    """The policy allows GET ^/files/.*$ only; gunicorn, trusting SCRIPT_NAME from 127.0.0.1,
    would serve /files/admin as /admin."""
    fields = b"SCRIPT_NAME: /files\r\nX_Forwarded_Proto: http\r\n"
    status, seen = ingress.exchange(ingress.gunicorn, get(b"/files/admin", fields, way))
    assert status == 200
    assert (seen["route"], seen["script_name"], seen["path_info"]) == ("files", "", "/files/admin")
    assert "HTTP_SCRIPT_NAME" not in seen["fields"]


@pytest.mark.parametrize("way", PATHS)
def test_gunicorn_gets_the_scheme_and_client_from_the_ingress(ingress: Ingress, way: str) -> None:
    fields = b"X-Forwarded-Proto: http\r\nX-Forwarded-For: 203.0.113.7\r\n"
    status, seen = ingress.exchange(ingress.gunicorn, get(b"/files/a", fields, way))
    assert status == 200
    assert (seen["scheme"], seen["forwarded_for"]) == ("https", CLIENT_HOST)
    assert seen["remote_addr"] == "127.0.0.1"  # gunicorn's own: the ingress's socket


@pytest.mark.parametrize("way", PATHS)
def test_no_method_override_or_routing_field_reaches_the_app(ingress: Ingress, way: str) -> None:
    """A GET the policy allowed stays a GET: the app's method-override middleware gets no
    field to act on, nor does any other routing or forwarding field from the client pass."""
    fields = (
        b"X-HTTP-Method-Override: DELETE\r\nx-http-method: DELETE\r\nX-Method-Override: DELETE\r\n"
        b"X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nForwarded: for=203.0.113.7\r\n"
        b"X-Real-IP: 203.0.113.7\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Prefix: /x\r\n"
        b"Client-IP: 203.0.113.7\r\nX-Geode-Peer: spiffe://t.local/service/admin\r\n"
    )
    status, seen = ingress.exchange(ingress.gunicorn, get(b"/files/report", fields, way))
    assert status == 200
    assert (seen["route"], seen["method"]) == ("files", "GET")
    expected = {"HTTP_HOST", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_GEODE_PEER"}
    if way == "parser":
        expected.add("HTTP_CONNECTION")
    assert set(seen["fields"]) == expected


@pytest.mark.parametrize("way", PATHS)
def test_uvicorn_reports_the_real_client_and_https(ingress: Ingress, way: str) -> None:
    """uvicorn takes X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1 by default: it must
    get the ingress's, whatever the client sent."""
    fields = (
        b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n"
        b"Forwarded: for=203.0.113.7;proto=http\r\n"
    )
    status, seen = ingress.exchange(ingress.uvicorn, get(b"/files/a", fields, way))
    assert status == 200
    assert (seen["client"][0], seen["scheme"]) == (CLIENT_HOST, "https")
    names = [name for name, _ in seen["fields"]]
    assert names.count("x-forwarded-for") == names.count("x-forwarded-proto") == 1
    assert "forwarded" not in names


# --- Byte for byte -------------------------------------------------------------------------


def _added() -> bytes:
    return added_fields((CLIENT_HOST, 1), str(spiffe("client")))


def test_a_simple_head_reaches_the_app_with_the_ingress_fields_appended(ingress: Ingress) -> None:
    head = b"GET /record/a HTTP/1.1\r\nHost: server\r\nAccept:  */* \r\n\r\n"
    assert ingress.exchange(ingress.recorder, head)[0] == 200
    assert ingress.seen[-1] == (head[:-2] + _added(), b"")
    assert _added() == (
        b"X-Forwarded-For: 127.0.0.2\r\nX-Forwarded-Proto: https\r\n"
        b"X-Geode-Peer: spiffe://t.local/service/client\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (
            b"Connection: keep-alive, X-Geode-Peer, X-Forwarded-For\r\n",
            b"Connection: keep-alive\r\n",
        ),
        (b"Connection: X-Forwarded-Proto\r\nConnection: Close\r\n", b"Connection: close\r\n"),
        (b"Connection: X-Geode-Peer\r\n", b""),
    ],
    ids=["options-kept", "fields-merged", "names-only"],
)
def test_the_app_gets_the_ingress_s_own_connection_field(
    ingress: Ingress, sent: bytes, forwarded: bytes
) -> None:
    """The client's ``Connection`` may name the fields the ingress adds: an app that is itself
    a proxy would strip them. The app gets only the options it must act on."""
    request = b"GET /record/c HTTP/1.1\r\nHost: server\r\n" + sent + b"\r\n"
    assert ingress.exchange(ingress.recorder, request)[0] == 200
    head, _ = ingress.seen[-1]
    assert head == b"GET /record/c HTTP/1.1\r\nHost: server\r\n" + forwarded + _added()


def test_fields_and_trailers_are_filtered_for_the_app(ingress: Ingress) -> None:
    request = (
        b"POST /record/upload HTTP/1.1\r\nHost: server\r\nX_Custom: 1\r\n"
        b"Transfer-Encoding: chunked\r\nx-forwarded-for: 203.0.113.7\r\nX-Keep: yes\r\n"
        b"X-Geode-Peer: forged\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX_Trailer: 1\r\nX-Forwarded-Proto: http\r\nX-Checksum: c\r\n"
        # Fields that mean nothing in trailers, which an app merging them would act on.
        b"Host: admin.internal\r\nAuthorization: Basic YTpi\r\nContent-Type: text/x\r\n\r\n"
    )
    assert ingress.exchange(ingress.recorder, request)[0] == 200
    head, body = ingress.seen[-1]
    assert head == (
        b"POST /record/upload HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n"
        b"X-Keep: yes\r\nConnection: close\r\n" + _added()  # the ingress's own, after a body
    )
    assert body == b"3\r\nabc\r\n0\r\nX-Checksum: c\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /record/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /record/a HTTP/1.1\r\nhost: a\r\nAccept: */*\r\nHOST: a\r\n\r\n",
        b"GET /record/a HTTP/1.1\r\nHost: a\r\n" + PARSER_FIELD + b"Host: b\r\n\r\n",
        b"GET /record/a HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /record/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nHost: b\r\n\r\nx",
    ],
)
def test_more_than_one_host_is_refused(ingress: Ingress, request_bytes: bytes) -> None:
    before = len(ingress.seen)
    status, body = ingress.exchange(ingress.recorder, request_bytes)
    assert (status, body["reason"]) == (400, "more than one Host")
    assert len(ingress.seen) == before


def test_one_host_or_none_passes(ingress: Ingress) -> None:
    """No Host passes: the policy does not judge it, and HTTP/1.0 needs none."""
    for head in (b"GET /record/a HTTP/1.1\r\n\r\n", b"GET /record/a HTTP/1.0\r\n\r\n"):
        assert ingress.exchange(ingress.recorder, head)[0] == 200
        assert ingress.seen[-1][0].startswith(head[:-2])


# --- The fast path and the filter agree ----------------------------------------------------

DROPPED = [
    "X-Geode-Peer", "Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
    "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Ssl",
    "X-Forwarded-Protocol", "X-Real-IP", "Client-IP", "X-Client-IP", "True-Client-IP",
    "X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method",
    "X-Method-Override", "SCRIPT_NAME", "PATH_INFO", "X_Forwarded_For", "A_",
    "X-Scheme", "X-Url-Scheme", "Front-End-Https", "X-Cluster-Client-IP", "X-Original-Host",
    "X-Host", "X.Forwarded.For", "X-Forwarded~For", "X!Real!IP", "Script+Name", "X'Host",
]  # fmt: skip
KEPT = ["X-Forwarded", "Forwarded-For", "X-Real-IPv6", "X-HTTP-Methods", "Hostname", "X-Hosts"]


@pytest.mark.parametrize(
    "name", DROPPED + [n.lower() for n in DROPPED] + [n.upper() for n in DROPPED]
)
def test_a_field_the_app_must_not_get_is_dropped_and_not_taken_by_the_fast_path(name: str) -> None:
    field = name.encode()
    assert not for_app(field)
    assert header_lines([(field, b"x"), (b"Accept", b"*/*")], peer=False) == [b"Accept: */*\r\n"]
    assert simple_request(b"GET / HTTP/1.1\r\nHost: a\r\n%s: x\r\n\r\n" % field, 4096) is None


@pytest.mark.parametrize("name", KEPT)
def test_look_alikes_pass(name: str) -> None:
    assert for_app(name.encode())
    assert simple_request(b"GET / HTTP/1.1\r\nHost: a\r\n%s: x\r\n\r\n" % name.encode(), 4096)


_NAMES = st.one_of(
    st.sampled_from(DROPPED + KEPT + ["Host", "Accept", "User-Agent"]),
    st.text(alphabet="-_.~xXfFhHoOsStT", min_size=1, max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, st.booleans()), max_size=5))
def test_the_fast_path_takes_only_what_the_app_may_get(names: list[tuple[str, bool]]) -> None:
    fields = [(n.lower() if low else n).encode() for n, low in names]
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"%s: v\r\n" % f for f in fields) + b"\r\n"
    taken = simple_request(head, 4096) is not None
    hosts = sum(f.lower() == b"host" for f in fields)
    assert taken == (all(for_app(f) for f in fields) and hosts <= 1)


def test_the_added_fields_need_no_address() -> None:
    assert added_fields(None, "spiffe://t.local/service/a") == (
        b"X-Forwarded-Proto: https\r\nX-Geode-Peer: spiffe://t.local/service/a\r\n\r\n"
    )
    assert added_fields(("::1", 5, 0, 0), "p").startswith(b"X-Forwarded-For: ::1\r\n")


def test_the_remembered_verdicts_stay_bounded() -> None:
    """``header_lines`` remembers ``for_app`` per name: distinct or long names cannot make
    that grow, and a forgotten name is judged again the same way."""
    fields = [(b"X-Name-%d" % n, b"v") for n in range(3000)]
    fields += [(b"X-" + b"a" * 5000, b"v"), (b"X_Name", b"v"), (b"Forwarded", b"v")]
    assert len(header_lines(fields, peer=False)) == 3001
    assert len(_http_message._VERDICTS) <= _http_message._VERDICTS_MAX
    assert all(len(name) <= 64 for name in _http_message._VERDICTS)
    assert header_lines([(b"X_Name", b"v"), (b"Accept", b"*/*")], peer=False) == [
        b"Accept: */*\r\n"
    ]
