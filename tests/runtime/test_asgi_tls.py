"""The ASGI TLS extension: a real uvicorn server over real mutual TLS hands the peer to the app."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)
from geode.runtime import TLSExtensionProtocol, peer_certificate
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
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
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
