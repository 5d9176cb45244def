"""What a network attacker can hold of a real Coordinator's two APIs: slow and never-finished
TLS handshakes and request heads are cut after the head timeout, an oversized head is refused
after the size limit without being buffered, a flood of the client API is closed beyond its
cap while the mesh API (activations) still answers, idle connections are closed, and a request
whose body or answer drags on (one byte at a time, or never read) is cut after the request
timeout, as are a chunked body's oversized trailers after the head size limit."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import CoordinatorProcess, wait_until

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 2.0  # --head-timeout of the Coordinator under test
IDLE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 3.0  # below the routes' own body timeout (10 s): which one bit shows
CLIENT_CAP = 20
MAX_HEAD = 64 * 1024


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    base = tmp_path_factory.mktemp("limits")
    env = {
        **os.environ,
        "GEODE_SEALING_KEY": str(base / "sealing.key"),
        "GEODE_PLATFORM_KEY": str(base / "platform.key"),
        "GEODE_CONFIG_DIR": str(base / "config"),
    }
    proc = CoordinatorProcess(
        base / "data", env, base / "coordinator.log",
        "--head-timeout", f"{HEAD_TIMEOUT:.0f}s", "--idle-timeout", f"{IDLE_TIMEOUT:.0f}s",
        "--client-max-connections", str(CLIENT_CAP), "--max-head-bytes", str(MAX_HEAD),
        "--request-timeout", f"{REQUEST_TIMEOUT:.0f}s",
    )  # fmt: skip
    proc.start()
    yield proc
    proc.stop()


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what is attacked, not who: no checks
_CONTEXT.check_hostname = False
_CONTEXT.verify_mode = ssl.CERT_NONE


def _tls(addr: str) -> ssl.SSLSocket:
    """A TLS connection with its handshake done (no client certificate)."""
    raw = socket.create_connection(("127.0.0.1", _port(addr)), timeout=5)
    return _CONTEXT.wrap_socket(raw)


def _read_all(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything until the server closes (or ``timeout``: ``TimeoutError``), and when."""
    conn.settimeout(timeout)
    start = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLEOFError):
        while chunk := conn.recv(65536):
            received += chunk
    return received, time.monotonic() - start


def _response(conn: socket.socket) -> bytes:
    """One whole response (with a Content-Length) from a kept-alive connection."""
    conn.settimeout(5)
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return received


def _ready(conn: ssl.SSLSocket) -> bytes:
    """What the server has sent already (not waiting; TLS session tickets are no answer)."""
    if not select.select([conn], [], [], 0)[0]:
        return b""
    conn.setblocking(False)
    try:
        return conn.recv(65536)
    except ssl.SSLWantReadError:
        return b""
    finally:
        conn.settimeout(5)


def _flood(
    conn: ssl.SSLSocket, start: bytes, block: bytes, total: int, end: bytes
) -> tuple[bytes, int]:
    """Send ``start``, then ``block`` until ``total`` bytes or an early answer, then ``end``:
    everything the server answered (until it closed), and how much was sent."""
    conn.sendall(start)
    sent, early = 0, b""
    with contextlib.suppress(OSError):  # the server may be gone before all is sent
        while sent < total and not early:
            conn.sendall(block)
            sent += len(block)
            early = _ready(conn)
        if sent >= total:
            conn.sendall(end)
    answer, _ = _read_all(conn, 10)
    return early + answer, sent


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _answers(addr: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"https://{addr}/api/v1/status", verify=False).status_code == 200
    return False


def _warnings(coordinator: CoordinatorProcess, words: str) -> list[str]:
    return [line for line in coordinator.log().splitlines() if "WARNING" in line and words in line]


def test_a_slow_head_is_answered_408_and_closed(coordinator: CoordinatorProcess) -> None:
    with _tls(coordinator.client_addr) as conn:
        conn.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: coordinator\r\nX-Slow: ")
        answer, waited = _read_all(conn, HEAD_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"error":"request_timeout"' in answer
    assert waited < HEAD_TIMEOUT + 1.5
    wait_until(
        lambda: _warnings(coordinator, "client API: request head not received within 2 s"),
        5,
        coordinator.log_tail,
    )
    assert "; peer 127.0.0.1:" in _warnings(coordinator, "client API: request head")[0]


@pytest.mark.parametrize("second", [b"GET /api/v1/openapi.json HTTP/1.1\r\n", b"\r\n"])
def test_a_slow_second_head_on_a_kept_alive_connection_is_cut_too(
    coordinator: CoordinatorProcess, second: bytes
) -> None:
    with _tls(coordinator.mesh_addr) as conn:
        conn.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: coordinator\r\n\r\n")
        first = _response(conn)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        conn.sendall(second)  # and no more: the idle timer stops, the head's starts
        rest, waited = _read_all(conn, HEAD_TIMEOUT + 5)
    assert b"HTTP/1.1 408 " in rest, rest[-300:]
    assert waited < HEAD_TIMEOUT + 1.5


def test_a_handshake_never_finished_is_closed(coordinator: CoordinatorProcess) -> None:
    opened = time.monotonic()
    conns = [
        socket.create_connection(("127.0.0.1", _port(addr)), timeout=5)
        for addr in (coordinator.client_addr, coordinator.mesh_addr)
    ]
    for raw in conns:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
    for raw in conns:
        with raw:
            answer, _ = _read_all(raw, HEAD_TIMEOUT + 5)
        assert b"HTTP" not in answer
    assert time.monotonic() - opened < HEAD_TIMEOUT + 1.5
    wait_until(
        lambda: _warnings(coordinator, "mesh API: TLS handshake not done within 2 s"),
        5,
        coordinator.log_tail,
    )


def test_an_oversized_head_is_refused_431_without_being_buffered(
    coordinator: CoordinatorProcess,
) -> None:
    big = 8 * 1024 * 1024
    chunk = b"a" * 65536
    before = _rss(coordinator.pid)
    with _tls(coordinator.client_addr) as conn:
        start = b"GET /api/v1/status HTTP/1.1\r\nHost: coordinator\r\nX-Big: "
        answer, sent = _flood(conn, start, chunk, big, b"\r\n\r\n")
    grown = _rss(coordinator.pid) - before
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request head larger than 65536 bytes" in answer
    # What was read is bounded by the limit, not by what was sent.
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes for {sent} sent"
    assert _warnings(coordinator, "client API: request head larger than 65536 bytes")
    assert httpx.get(f"https://{coordinator.client_addr}/api/v1/status", verify=False).is_success


def test_a_flood_of_the_client_api_leaves_the_mesh_api_reachable(
    coordinator: CoordinatorProcess,
) -> None:
    started = time.monotonic()
    flood = []
    try:
        for _ in range(CLIENT_CAP):
            conn = _tls(coordinator.client_addr)
            conn.sendall(b"GET /api/v1/status HTTP/1.1\r\n")  # never finished
            flood.append(conn)
        # (a) Beyond the cap, a new client-API connection is closed at once.
        refused_in = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionError)):  # EOF or reset in the handshake
            _tls(coordinator.client_addr).recv(1)
        assert time.monotonic() - refused_in < 1.0
        # (b) The mesh API has a budget of its own: an activation's first step is answered.
        nonce = httpx.post(f"https://{coordinator.mesh_addr}/api/v1/mesh/nonce", verify=False)
        assert nonce.status_code < 500, nonce.text
        assert nonce.headers["content-type"] == "application/json"
        # All of that while the flood still held the client API.
        assert time.monotonic() - started < HEAD_TIMEOUT
        # (c) The head timeout cuts the flood, and the client API answers again.
        for conn in flood:
            answer, _ = _read_all(conn, HEAD_TIMEOUT + 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            conn.close()
        wait_until(lambda: _answers(coordinator.client_addr), 3, coordinator.log_tail)
    finally:
        for conn in flood:
            conn.close()
    assert _warnings(coordinator, f"client API: {CLIENT_CAP} connections open: closing new ones")


def test_an_idle_kept_alive_connection_is_closed(coordinator: CoordinatorProcess) -> None:
    with _tls(coordinator.client_addr) as conn:
        conn.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: coordinator\r\n\r\n")
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        rest, waited = _read_all(conn, IDLE_TIMEOUT + 5)
    assert rest == b""
    assert waited < IDLE_TIMEOUT + 1.5


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/v1/status HTTP/1.1\r\nhost: x\r\ncontent-length: \xc2\xb2\r\n\r\n",
        b"GET /api/v1/st\x00tus HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /api/v1/manifest HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"BREW /api/v1/status HTTP/1.1\r\nhost: x\r\n\r\n",
    ],
    ids=["content-length", "nul-in-path", "length-and-chunked", "unknown-method"],
)
def test_a_request_the_parser_refuses_gets_a_typed_json_error(
    coordinator: CoordinatorProcess, request_bytes: bytes
) -> None:
    for addr in (coordinator.client_addr, coordinator.mesh_addr):
        with _tls(addr) as conn:
            conn.sendall(request_bytes)
            received, _ = _read_all(conn, 5)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), received
        assert b"content-type: application/json" in head.lower()
        assert httpx.Response(400, content=body).json() == {
            "error": "http_error",
            "message": "not a valid HTTP/1.1 request",
        }


def _trickle(conn: ssl.SSLSocket, seconds: float) -> bytes:
    """One byte every 0.2 s for ``seconds`` or until the server answers or closes: what it
    sent (``b""``: nothing yet, still open)."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            conn.sendall(b"x")
            if received := _ready(conn):
                return received
            time.sleep(0.2)
    except OSError:
        return b"closed"
    return b""


@pytest.mark.parametrize("api", ["client", "mesh"])
def test_a_body_left_unsent_after_the_answer_does_not_hold_the_connection(
    coordinator: CoordinatorProcess, api: str
) -> None:
    addr = coordinator.client_addr if api == "client" else coordinator.mesh_addr
    with _tls(addr) as conn:
        conn.sendall(
            b"POST /api/v1/nonexistent HTTP/1.1\r\nHost: coordinator\r\n"
            b"Content-Length: 100000000000\r\n\r\n"
        )
        assert _response(conn).startswith(b"HTTP/1.1 404 ")
        conn.sendall(b"x")  # one byte of the body, then quiet: uvicorn's timers are stopped
        rest, waited = _read_all(conn, REQUEST_TIMEOUT + 5)
    assert rest == b""
    assert waited < 2.5  # the rest of the body had 1 s after the answer


def test_a_body_sent_a_byte_at_a_time_is_cut_by_the_request_timeout(
    coordinator: CoordinatorProcess,
) -> None:
    with _tls(coordinator.client_addr) as conn:
        conn.sendall(  # a route that reads its body (whose own timeout is 10 s)
            b"POST /api/v1/manifest HTTP/1.1\r\nHost: coordinator\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        answer = _trickle(conn, REQUEST_TIMEOUT + 5)
        waited = time.monotonic() - started
        if answer not in (b"", b"closed"):
            answer += _read_all(conn, 5)[0]
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request not done within 3 s" in answer
    assert waited < REQUEST_TIMEOUT + 1.5
    wait_until(
        lambda: _warnings(coordinator, "client API: request not done within 3 s"),
        5,
        coordinator.log_tail,
    )


def test_answers_never_read_are_cut_by_the_request_timeout(
    coordinator: CoordinatorProcess,
) -> None:
    document = httpx.get(f"https://{coordinator.mesh_addr}/api/v1/openapi.json", verify=False)
    count = 32 * 1024 * 1024 // len(document.content) + 1  # far more than any buffer holds
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny receive window
    raw.settimeout(5)
    raw.connect(("127.0.0.1", _port(coordinator.mesh_addr)))
    with _CONTEXT.wrap_socket(raw) as conn:
        conn.sendall(  # pipelined, and never read: a response waits on the client
            b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: coordinator\r\n\r\n" * count
        )
        time.sleep(REQUEST_TIMEOUT + 1.5)
        # Reading now gets what the server sent before it gave up, not every answer.
        received, _ = _read_all(conn, 10)
    assert received.count(b"HTTP/1.1 200 ") < count
    wait_until(
        lambda: _warnings(coordinator, "mesh API: request not done within 3 s"),
        5,
        coordinator.log_tail,
    )


def test_oversized_trailers_are_refused_431_without_being_buffered(
    coordinator: CoordinatorProcess,
) -> None:
    big = 16 * 1024 * 1024
    line = b"X-Trailer: " + b"a" * 1000 + b"\r\n"
    block = line * 64
    before = _rss(coordinator.pid)
    with _tls(coordinator.client_addr) as conn:
        start = (  # a route that reads its body to the end, trailers included
            b"POST /api/v1/manifest HTTP/1.1\r\nHost: coordinator\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
        )
        answer, sent = _flood(conn, start, block, big, b"\r\n")
    grown = _rss(coordinator.pid) - before
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"chunked body's trailers larger than 65536 bytes" in answer
    assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes for {sent} sent"
    assert _warnings(coordinator, "client API: chunked body's trailers larger than 65536 bytes")
