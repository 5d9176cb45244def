"""One writer among Coordinators on one etcd store: the others forward activations to it, so a
stream of activations through all of them meets no conflict; when the writer dies, the others
handle requests themselves at once and one of them takes over (real processes, real etcd)."""

from __future__ import annotations

import base64
import http.server
import json
import re
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.runtime import Activation
from tests.conftest import StartCoordinator
from tests.e2e.test_etcd_coordinators import _activate, _set_manifest
from tests.support import CoordinatorProcess, wait_until
from tests.support.etcd import EtcdServer, own_sealing_key

pytestmark = pytest.mark.e2e


def _metric(c: CoordinatorProcess, name: str) -> float:
    text = httpx.get(f"https://{c.client_addr}/metrics", verify=False).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _wait_for(condition: Callable[[], object]) -> None:
    wait_until(condition, 15, lambda: "not within 15 s")


def _three(
    start: StartCoordinator, etcd: EtcdServer, tmp_path: Path, bundle: Path, **service: object
) -> list[CoordinatorProcess]:
    """a, b and c on one etcd, each with its own sealing key, a's manifest set, all three
    serving it (b and c started on the empty store too: they adopt a's state within a poll)."""
    started = []
    for name in "abc":
        key = own_sealing_key(tmp_path, name)
        started.append(start(tmp_path / f"data-{name}", "--store", etcd.url, *key))
    a = started[0]
    assert f"the writer of activations is now {a.mesh_addr}" in a.log()
    _set_manifest(a, bundle, **service)
    sha = a.status()["manifest_sha256"]
    _wait_for(lambda: all(x.status()["manifest_sha256"] == sha for x in started))
    return started


def test_activations_through_any_coordinator_are_written_by_one(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    a, b, c = _three(start_coordinator, etcd, tmp_path, bundle, max_activations=24)
    _wait_for(lambda: f"the writer of activations is now {a.mesh_addr}" in c.log())

    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(lambda i: _activate((b, c)[i % 2], bundle, geode_env), range(24)))
    assert len({d.certificate.serial_number for d in done}) == 24
    # All 24 were decided by a, on one line of writes: no compare-and-swap was lost anywhere.
    assert _metric(a, 'geode_activations_total{outcome="ok",service="web"}') == 24
    for coordinator in (a, b, c):
        assert _metric(coordinator, "geode_store_retries_total") == 0
    assert "another Coordinator changed the shared state" not in a.log()
    _wait_for(lambda: b.status()["activations"] == c.status()["activations"] == {"web": 24})


def test_when_the_writer_dies_the_others_go_on_and_one_takes_over(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    a, b, c = _three(start_coordinator, etcd, tmp_path, bundle)
    _wait_for(lambda: f"the writer of activations is now {a.mesh_addr}" in b.log())
    assert a.process is not None
    a.process.kill()
    a.process.wait()

    # At once: b cannot reach the writer and decides the activation itself.
    _activate(b, bundle, geode_env)
    assert f"the writer {a.mesh_addr} is unreachable" in b.log()
    # Within the lease's time to live (3 s), b or c holds the writer key, and the other
    # forwards to it.
    _wait_for(
        lambda: any(
            f"the writer of activations is now {x.mesh_addr}" in y.log()
            for x in (b, c)
            for y in (b, c)
        )
    )
    for _ in range(4):
        _activate(c, bundle, geode_env)
        _activate(b, bundle, geode_env)
    _wait_for(lambda: b.status()["activations"] == c.status()["activations"] == {"web": 9})


class _ForgedWriter:
    """An HTTPS server with a certificate that chains to the deployment's root (a service's
    leaf) but is no Coordinator's, answering every request with a forged 200."""

    def __init__(self, activation: Activation, directory: Path) -> None:
        cert, key = directory / "leaf.pem", directory / "leaf.key"
        cert.write_bytes(
            b"".join(c.public_bytes(Encoding.PEM) for c in activation.certificate_chain)
        )
        key.write_bytes(activation.private_key_pem())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                requests.append(self.path)
                body = json.dumps({"forged": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_writer_that_is_not_a_coordinator_gets_no_say(
    start_coordinator: StartCoordinator,
    etcd: EtcdServer,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The host (it controls etcd) names as the writer a server holding a service's
    certificate, valid under the deployment's root for the name used: its answers are not
    relayed, and the request is decided where it arrived."""
    _, b, _ = _three(start_coordinator, etcd, tmp_path, bundle, dns_names=["localhost"])
    forged = _ForgedWriter(_activate(b, bundle, geode_env), tmp_path)
    writer_key = base64.b64encode(b"/geode/writer").decode()
    httpx.post(f"http://{etcd.endpoint}/v3/kv/deleterange", json={"key": writer_key})
    name = base64.b64encode(f"localhost:{forged.port}".encode()).decode()
    httpx.post(f"http://{etcd.endpoint}/v3/kv/put", json={"key": writer_key, "value": name})
    _wait_for(lambda: f"the writer of activations is now localhost:{forged.port}" in b.log())
    try:
        genuine = _activate(b, bundle, geode_env)  # verified against the root by the runtime
        assert genuine.spiffe_id.endswith("/service/web")
        assert forged.requests == ["/api/v1/mesh/activate"]
        assert f"the writer localhost:{forged.port} is not a Coordinator" in b.log()
    finally:
        forged.server.shutdown()
    assert b.status()["activations"] == {"web": 2}
