"""What the proxy tests share: a throwaway mesh PKI, TLS client sockets, a reader of raw
HTTP/1.1 responses, an event loop in a thread for the proxies, and servers run in threads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from geode.manifest import MeshConfig
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
    utc_now,
)
from geode.runtime import Credentials

DOMAIN = "t.local"


def spiffe(name: str) -> SpiffeId:
    return SpiffeId.for_service(DOMAIN, name)


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = CertificateAuthority.create_root()
        self.mesh = self.root.create_intermediate("mesh")
        self.ca_file = tmp / "ca.pem"
        self.ca_file.write_text(certificate_pem(self.root.certificate))

    def credentials(
        self,
        name: str,
        mesh: MeshConfig | None = None,
        *,
        issuer: CertificateAuthority | None = None,
        clock: Any = utc_now,
        tag: str = "",
    ) -> Credentials:
        issuer = issuer or self.mesh
        key = generate_private_key()
        cert = issuer.issue(
            LeafParams(
                public_key=key.public_key(),
                common_name=name,
                spiffe_id=spiffe(name),
                dns_names=["localhost"],
                ip_addresses=["127.0.0.1"],
            ),
            clock=clock,
        )
        stem = self.tmp / f"{name}{tag}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_text(certificate_pem(cert) + certificate_pem(issuer.certificate))
        key_file.write_bytes(private_key_pem(key))
        key_file.chmod(0o600)
        return Credentials(
            cert_file=cert_file,
            key_file=key_file,
            ca_file=self.ca_file,
            spiffe_id=spiffe(name),
            mesh=mesh,
        )

    def client_context(self, credentials: Credentials | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.ca_file)
        if credentials is not None:
            context.load_cert_chain(credentials.cert_file, credentials.key_file)
        return context


def tls_socket(context: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Responses:
    """Reads successive HTTP/1.1 responses from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.file: BinaryIO = sock.makefile("rb")

    def read(self, *, head: bool = False) -> Response:
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if head or status < 200:
            pass
        elif "content-length" in headers:
            body = self.file.read(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while size := int(self.file.readline().split(b";")[0], 16):
                body += self.file.read(size)
                self.file.readline()
            self.file.readline()
        return Response(status, headers, body)

    def closed(self) -> bool:
        try:
            return self.file.read(1) == b""
        except (OSError, ssl.SSLError):
            return True


class LoopThread:
    """An event loop in a thread, running the proxies."""

    def __init__(self, kind: str) -> None:
        if kind == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def serve(server: socketserver.BaseServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()
