"""The ASGI TLS extension: a real uvicorn server over real mutual TLS hands the peer to the app."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from geode.manifest import HttpRule, MeshConfig, MeshPolicy, MeshRule
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)
from geode.runtime import Credentials, TLSExtensionProtocol, peer_certificate, serve_asgi
from tests.support import free_port


async def whoami(request: Request) -> JSONResponse:
    cert = peer_certificate(request.scope)
    if cert is None:
        return JSONResponse({"peer": None})
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    tls = request.scope["extensions"]["tls"]
    return JSONResponse({"peer": uris, "version": tls["tls_version"]})


APP = Starlette(routes=[Route("/whoami", whoami)])


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = CertificateAuthority.create_root()
        self.mesh = self.root.create_intermediate("mesh")

    def leaf(self, name: str, *, server: bool = False) -> tuple[str, str]:
        key = generate_private_key()
        cert = self.mesh.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name=name,
                spiffe_id=SpiffeId.for_service("t.local", name),
                dns_names=["localhost"] if server else [],
                ip_addresses=["127.0.0.1"] if server else [],
                lifetime=datetime.timedelta(hours=1),
            )
        )
        chain = certificate_pem(cert) + certificate_pem(self.mesh.certificate)
        return (
            _write(self.tmp / f"{name}.crt", chain.encode()),
            _write(self.tmp / f"{name}.key", private_key_pem(key)),
        )

    @property
    def root_file(self) -> str:
        return _write(self.tmp / "root.pem", certificate_pem(self.root.certificate).encode())


def _serve(config: uvicorn.Config) -> Iterator[int]:
    return _serve_server(uvicorn.Server(config))


def _serve_server(server: uvicorn.Server) -> Iterator[int]:
    config = server.config
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server stopped before it started (port taken?)"
        assert time.monotonic() < deadline, "the server did not start within 10 s"
        threading.Event().wait(0.02)
    yield config.port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _server_config(pki: Pki, protocol: object) -> uvicorn.Config:
    cert, key = pki.leaf("server", server=True)
    return uvicorn.Config(
        APP,
        host="127.0.0.1",
        port=free_port(),
        http=protocol,  # type: ignore[arg-type]
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_ca_certs=pki.root_file,
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_config=None,
        lifespan="off",
    )


def _client(pki: Pki) -> httpx.Client:
    context = ssl.create_default_context(cafile=pki.root_file)
    context.load_cert_chain(*pki.leaf("client"))
    return httpx.Client(verify=context)


def test_peer_certificate_reaches_the_app(pki: Pki) -> None:
    for port in _serve(_server_config(pki, TLSExtensionProtocol)):
        with _client(pki) as client:
            body = client.get(f"https://127.0.0.1:{port}/whoami").json()
            again = client.get(f"https://127.0.0.1:{port}/whoami").json()  # keep-alive
    assert body["peer"] == ["spiffe://t.local/service/client"]
    assert body["version"] in (0x0303, 0x0304)
    assert again == body


def test_plain_uvicorn_does_not_pass_the_peer(pki: Pki) -> None:
    """Why the protocol class exists: stock uvicorn drops the client certificate."""
    for port in _serve(_server_config(pki, "httptools")):
        with _client(pki) as client:
            body = client.get(f"https://127.0.0.1:{port}/whoami").json()
    assert body["peer"] is None


# --- Coalesced writes -------------------------------------------------------------------------


async def _small(_scope: Any, _receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-a", b"1"), (b"content-length", b"12")],
        }
    )
    await send({"type": "http.response.body", "body": b"small", "more_body": True})
    await send({"type": "http.response.body", "body": b" answer"})


async def _streamed(_scope: Any, _receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(64):  # 64 x 16 KiB, no await that yields in between
        await send({"type": "http.response.body", "body": bytes([i]) * 16384, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def _records_of_one_response(port: int, pki: Pki) -> tuple[int, bytes]:
    """Send two requests on one connection over a memory-BIO TLS client; return how many TLS
    records carried the second response, and that response."""
    context = ssl.create_default_context(cafile=pki.root_file)
    context.load_cert_chain(*pki.leaf("client"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:

        def pump() -> None:
            if outgoing.pending:
                sock.sendall(outgoing.read())

        def feed() -> bytes:
            data = sock.recv(65536)
            assert data, "connection closed"
            incoming.write(data)
            return data

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                feed()
        pump()
        answers = []
        for _ in range(2):
            tls.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            pump()
            raw = b""
            answer = b""
            while not answer.endswith(b"small answer"):
                raw += feed()
                with contextlib.suppress(ssl.SSLWantReadError):
                    while True:
                        answer += tls.read(65536)
            answers.append((raw, answer))
    raw, answer = answers[1]  # the first may share its reads with session tickets
    records, offset = 0, 0
    while offset < len(raw):
        records += 1
        offset += 5 + int.from_bytes(raw[offset + 3 : offset + 5], "big")
    return records, answer


def test_a_response_written_in_pieces_leaves_as_one_tls_record(pki: Pki) -> None:
    config = _server_config(pki, TLSExtensionProtocol)
    config.app = _small
    for port in _serve(config):
        records, answer = _records_of_one_response(port, pki)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"x-a: 1\r\n" in answer
    assert records == 1


def test_a_large_streamed_response_arrives_whole(pki: Pki) -> None:
    config = _server_config(pki, TLSExtensionProtocol)
    config.app = _streamed
    for port in _serve(config):
        with _client(pki) as client:
            body = client.get(f"https://127.0.0.1:{port}/").content
    assert body == b"".join(bytes([i]) * 16384 for i in range(64))


# --- serve_asgi ---------------------------------------------------------------------------------


async def _client_address(scope: Any, _receive: Any, send: Any) -> None:
    body = f"{scope['client'][0]} {scope['geode.peer']}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _server_credentials(pki: Pki, policy: MeshPolicy) -> Credentials:
    """The server's credentials as ``geode run`` lays them out, with ``policy`` inbound."""
    cert, key = pki.leaf("server", server=True)
    (pki.tmp / "mesh-ca.pem").write_text(certificate_pem(pki.mesh.certificate))
    return Credentials(
        cert_file=Path(cert),
        key_file=Path(key),
        ca_file=pki.tmp / "mesh-ca.pem",
        spiffe_id=SpiffeId.for_service("t.local", "server"),
        mesh=MeshConfig(
            trust_domain="t.local",
            service="server",
            spiffe_id="spiffe://t.local/service/server",
            policy=policy,
        ),
    )


def test_serve_asgi_does_not_take_the_client_address_from_headers(pki: Pki) -> None:
    """A loopback peer is trusted by uvicorn's defaults to rewrite the client address; in the
    mesh it is not, and the peer identity is the verified certificate's."""
    credentials = _server_credentials(pki, MeshPolicy(mode="permissive"))
    port = free_port()
    server = serve_asgi(_client_address, credentials, host="127.0.0.1", port=port, watch=None)
    server.config.log_config = None
    for _ in _serve_server(server):
        with _client(pki) as client:
            answer = client.get(
                f"https://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.9"}
            )
    assert answer.text == "127.0.0.1 spiffe://t.local/service/client"


# --- WebSockets ---------------------------------------------------------------------------------


async def _echo_peer(scope: Any, receive: Any, send: Any) -> None:
    """A WebSocket that answers each message with the peer's SPIFFE id and the message."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{scope['geode.peer']} {message['text']}"})


def test_websockets_carry_the_peer_and_obey_the_policy(pki: Pki) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    rule = MeshRule(
        name="ws",
        sources=["spiffe://t.local/service/client"],
        http=[HttpRule(methods=["GET"], path="^/ws$")],
    )
    credentials = _server_credentials(pki, MeshPolicy(mode="strict", rules=[rule]))
    port = free_port()
    server = serve_asgi(_echo_peer, credentials, host="127.0.0.1", port=port, watch=None)
    server.config.log_config = None

    def context(name: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=pki.root_file)
        ctx.load_cert_chain(*pki.leaf(name))
        return ctx

    for _ in _serve_server(server):
        with connect(f"wss://localhost:{port}/ws", ssl=context("client")) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "spiffe://t.local/service/client hello"
        with pytest.raises(InvalidStatus) as refused:  # attested, but no rule allows it
            connect(f"wss://localhost:{port}/ws", ssl=context("intruder"))
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):  # allowed peer, path outside the rule
            connect(f"wss://localhost:{port}/other", ssl=context("client"))
