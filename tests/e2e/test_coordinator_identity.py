"""Only the Coordinator passes for the Coordinator: a service's or a secret's certificate does
not, even though the deployment root issued it and its DNS name matches."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ClientError
from geode.pki import certificate_pem
from geode.runtime import activate, simulated_evidence_provider
from tests.support import CoordinatorProcess, sample_manifest

pytestmark = pytest.mark.e2e


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"state": "active", "root": "x", "mesh_ca": "x", "chain": "x"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _impostor(cert_pem: str, key_pem: bytes, tmp: Path) -> Iterator[int]:
    (tmp / "impostor.crt").write_text(cert_pem)
    (tmp / "impostor.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "impostor.crt", tmp / "impostor.key")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_service_and_secret_certificates_cannot_impersonate_the_coordinator(
    coordinator: CoordinatorProcess, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    manifest = json.loads(sample_manifest(measure_bundle(bundle).hex()))
    manifest["secrets"]["tls"]["dns_names"] = ["localhost"]
    with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
        root = x509.load_pem_x509_certificate(client.certificates().root.encode())
    with CoordinatorClient(coordinator.client_addr, root=root) as client:
        client.set_manifest(json.dumps(manifest).encode())
        assert client.status().state == "active"  # the real Coordinator passes

    platform = SimulatedPlatform.load(Path(geode_env["GEODE_PLATFORM_KEY"]))
    web = activate(
        coordinator.mesh_addr,
        "web",
        simulated_evidence_provider(platform, measure_bundle(bundle)),
        root=root,
    )
    impostors = {
        # A service instance: its leaf has DNS SAN "localhost" and chains to the root.
        "service": (
            "".join(certificate_pem(c) for c in web.certificate_chain),
            web.private_key_pem(),
        ),
        # A certificate secret's holder: issued by the root itself, for "localhost".
        "secret": (
            web.secrets["tls"].certificate,
            web.secrets["tls"].private_key.encode(),
        ),
    }
    for cert_pem, key_pem in impostors.values():
        for port in _impostor(cert_pem, key_pem, tmp_path):
            with (
                CoordinatorClient(f"localhost:{port}", root=root) as client,
                pytest.raises(ClientError, match="not the Coordinator's"),
            ):
                client.status()
