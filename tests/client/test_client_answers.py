"""The client checks what the Coordinator answers before handing it on: a manifest whose text is
not what its hash says is refused, and a fresh statement is asked for a nonce of the call's own."""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from geode.client import CoordinatorClient
from geode.errors import ClientError, StatementError
from geode.pki import CertificateAuthority, certificate_pem, private_key_pem
from geode.tee import ReferenceValues

MANIFEST = "version: 1\n"


class _Coordinator(BaseHTTPRequestHandler):
    """Answers like a Coordinator would, with whatever the test put in ``server.answers``."""

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.server.queries.append(parse_qs(url.query))  # type: ignore[attr-defined]
        body = json.dumps(self.server.answers[url.path]).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadingHTTPServer]:
    root = CertificateAuthority.create_root()
    (tmp_path / "cert.pem").write_text(certificate_pem(root.certificate))
    (tmp_path / "key.pem").write_bytes(private_key_pem(root.key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Coordinator)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.answers = {}  # type: ignore[attr-defined]
    httpd.queries = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(server: ThreadingHTTPServer) -> CoordinatorClient:
    return CoordinatorClient(f"127.0.0.1:{server.server_address[1]}", insecure=True)


def test_a_manifest_that_is_not_what_its_hash_says_is_refused(
    server: ThreadingHTTPServer,
) -> None:
    good = {"manifest": MANIFEST, "sha256": hashlib.sha256(MANIFEST.encode()).hexdigest()}
    server.answers["/api/v1/manifest"] = {**good, "signature": ""}  # type: ignore[attr-defined]
    with _client(server) as client:
        assert client.get_manifest().manifest == MANIFEST
    server.answers["/api/v1/manifest"] = {**good, "manifest": "version: 2\n", "signature": ""}  # type: ignore[attr-defined]
    with _client(server) as client, pytest.raises(ClientError, match="stated sha256"):
        client.get_manifest()


def test_each_fresh_statement_is_asked_for_a_nonce_of_its_own(
    server: ThreadingHTTPServer,
) -> None:
    server.answers["/api/v1/attestation"] = {"version": 1}  # type: ignore[attr-defined]
    reference = ReferenceValues(tee="simulated", measurement="00" * 32)
    with _client(server) as client:
        for _ in range(2):
            with pytest.raises(StatementError):  # malformed: refused after the request
                client.verified_statement(reference=reference)
    nonces = [query["nonce"][0] for query in server.queries]  # type: ignore[attr-defined]
    assert len(nonces) == 2
    assert len(set(nonces)) == 2
    assert all(len(bytes.fromhex(nonce)) == 32 for nonce in nonces)
