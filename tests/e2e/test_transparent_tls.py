"""Unmodified apps behind transparent TLS: a plain ``python -m http.server`` reached through
egress and ingress proxies, under the manifest's policy; TCP routes too."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient
from geode.pki import certificate_pem
from tests.conftest import StartCoordinator
from tests.support import (
    CoordinatorProcess,
    free_port,
    geode_run_argv,
    make_bundle,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

# The unmodified app: http.server on loopback, one on each app port (argv: site, ports).
WEB = r"""
import subprocess, sys
site, tcp_port, web_port = sys.argv[1:4]
app = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", site]
subprocess.Popen([*app, tcp_port])
sys.exit(subprocess.call([*app, web_port]))
"""

# An unmodified client: plaintext HTTP to its local egress port, or a raw TCP exchange.
CALL = r"""
import json, socket, sys, urllib.request, urllib.error
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "http":
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{sys.argv[3]}", timeout=10) as r:
            print(json.dumps({"status": r.status, "body": r.read().decode()}))
    except urllib.error.HTTPError as e:
        print(json.dumps({"status": e.code, "body": e.read().decode()}))
else:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    print(json.dumps({"status": 0, "body": data.decode(errors="replace")}))
"""


class Deployment:
    def __init__(self, coordinator: CoordinatorProcess, env: dict[str, str], tmp: Path) -> None:
        self.coordinator = coordinator
        self.env = env
        self.tmp = tmp
        self.ports = {name: free_port() for name in ("web", "web_app", "tcp", "tcp_app")}
        self.local = {"web": free_port(), "tcp": free_port()}
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            root = x509.load_pem_x509_certificate(client.certificates().root.encode())
        self.root_file = tmp / "root.pem"
        self.root_file.write_text(certificate_pem(root))
        self.bundle = make_bundle(tmp / "bundle", {"web.py": WEB, "call.py": CALL})
        manifest = self.manifest(measure_bundle(self.bundle).hex())
        with CoordinatorClient(coordinator.client_addr, root=root) as client:
            client.set_manifest(json.dumps(manifest).encode())
        self.site = tmp / "site"
        self.site.mkdir()
        (self.site / "hello.txt").write_text("hello through transparent TLS\n")
        (self.site / "secret.txt").write_text("not for anyone\n")
        self.processes: list[subprocess.Popen[bytes]] = []

    def manifest(self, measurement: str) -> dict[str, object]:
        p, local = self.ports, self.local
        outgoing = [
            {"host": "localhost", "port": p["web"], "local_port": local["web"], "service": "web"},
            {"host": "localhost", "port": p["tcp"], "local_port": local["tcp"], "service": "web"},
        ]
        return {
            "version": 1,
            "trust_domain": "transparent.geode.local",
            "packages": {"app": {"tee": "simulated", "measurement": measurement}},
            "services": {
                "web": {"package": "app", "dns_names": ["localhost"], "tls": ["web-in"]},
                "caller": {"package": "app", "tls": ["to-web"]},
                "intruder": {"package": "app", "tls": ["to-web"]},
            },
            "tls": {
                "web-in": {
                    "incoming": [
                        {"port": p["web"], "app_port": p["web_app"]},
                        {"port": p["tcp"], "app_port": p["tcp_app"], "protocol": "tcp"},
                    ]
                },
                "to-web": {"outgoing": outgoing},
            },
            "policies": {
                "mode": "strict",
                "rules": [
                    {
                        "name": "read-hello",
                        "destination": "web",
                        "sources": ["caller"],
                        "http": [{"methods": ["GET"], "path": "^/hello\\.txt$"}],
                    },
                    {
                        "name": "raw",
                        "destination": "web",
                        "sources": ["caller"],
                        "tcp": [{"ports": [p["tcp"]]}],
                    },
                ],
            },
        }

    def run(self, service: str, *command: str) -> list[str]:
        return geode_run_argv(
            self.coordinator.mesh_addr, service, self.bundle, self.root_file, *command,
            listen_host="127.0.0.1",
        )  # fmt: skip

    def start_web(self) -> None:
        """The unmodified app (WEB), a script of the bundle."""
        log = (self.tmp / "web.log").open("wb")
        ports = (str(self.ports["tcp_app"]), str(self.ports["web_app"]))
        process = subprocess.Popen(
            self.run("web", "python3", "web.py", str(self.site), *ports),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        for port in (self.ports["web"], self.ports["web_app"], self.ports["tcp_app"]):
            wait_for_port(port, process, self.tmp / "web.log")

    def call(self, service: str, *args: str) -> dict[str, object]:
        result = subprocess.run(
            self.run(service, "python3", "call.py", *args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)


@pytest.fixture
def deployment(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    d = Deployment(start_coordinator(), geode_env, tmp_path)
    d.start_web()
    yield d
    d.close()


def test_allowed_service_reaches_the_unmodified_app(deployment: Deployment) -> None:
    answer = deployment.call("caller", "http", str(deployment.local["web"]), "/hello.txt")
    assert answer == {"status": 200, "body": "hello through transparent TLS\n"}


def test_route_outside_the_policy_is_refused(deployment: Deployment) -> None:
    answer = deployment.call("caller", "http", str(deployment.local["web"]), "/secret.txt")
    assert answer["status"] == 403
    body = json.loads(str(answer["body"]))
    assert body["error"] == "policy_denied"
    assert body["peer"] == "spiffe://transparent.geode.local/service/caller"


def test_attested_but_not_allowed_service_gets_403(deployment: Deployment) -> None:
    answer = deployment.call("intruder", "http", str(deployment.local["web"]), "/hello.txt")
    assert answer["status"] == 403
    assert "hello through" not in str(answer["body"])
    log = (deployment.tmp / "web.log").read_text()
    assert "policy denied spiffe://transparent.geode.local/service/intruder" in log


def test_tcp_route_allowed_and_denied(deployment: Deployment) -> None:
    allowed = deployment.call("caller", "tcp", str(deployment.local["tcp"]))
    assert "hello through transparent TLS" in str(allowed["body"])
    denied = deployment.call("intruder", "tcp", str(deployment.local["tcp"]))
    assert denied["body"] == ""  # the connection is closed, nothing comes back


def test_plaintext_to_the_ingress_gets_nothing(deployment: Deployment) -> None:
    with socket.create_connection(("127.0.0.1", deployment.ports["web"]), timeout=10) as raw:
        raw.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"hello through" not in answer
