"""Services written with Geode's library talk mutual TLS under the manifest's policy: real
Coordinator, real ``geode run`` processes, real sockets."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.conftest import StartCoordinator
from tests.support import (
    REPO,
    CoordinatorProcess,
    free_port,
    geode_run_argv,
    make_bundle,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

APP = REPO / "tests" / "e2e" / "apps"
DOMAIN = "mesh.geode.local"


def spiffe(service: str) -> str:
    return f"spiffe://{DOMAIN}/service/{service}"


class Mesh:
    """A Coordinator with a three-service manifest, and helpers to run and reach services."""

    def __init__(self, coordinator: CoordinatorProcess, env: dict[str, str], tmp: Path) -> None:
        self.coordinator = coordinator
        self.env = env
        self.tmp = tmp
        self.bundle = make_bundle(
            tmp / "bundle",
            {
                "mesh_app.py": (APP / "mesh_app.py").read_text(),
                "exit42.py": "raise SystemExit(42)\n",
            },
        )
        self.measurement = measure_bundle(self.bundle).hex()
        self.platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = x509.load_pem_x509_certificate(client.certificates().root.encode())
        self.root_file = tmp / "root.pem"
        self.root_file.write_bytes(certificate_pem(self.root).encode())
        self.processes: list[subprocess.Popen[bytes]] = []

    def set_manifest(self) -> None:
        manifest = {
            "version": 1,
            "trust_domain": DOMAIN,
            "packages": {"app": {"tee": "simulated", "measurement": self.measurement}},
            "services": {
                "server": {"package": "app", "dns_names": ["localhost"]},
                "client": {"package": "app"},
                "thief": {"package": "app"},
            },
            "policies": {
                "mode": "strict",
                "rules": [
                    {
                        "name": "hello",
                        "destination": "server",
                        "sources": ["client"],
                        "http": [{"methods": ["GET"], "path": "^/hello$"}],
                    }
                ],
            },
        }
        with CoordinatorClient(self.coordinator.client_addr, root=self.root) as client:
            client.set_manifest(json.dumps(manifest).encode())

    def geode_run(self, service: str, *args: str) -> list[str]:
        return geode_run_argv(
            self.coordinator.mesh_addr, service, self.bundle, self.root_file,
            "python3", "mesh_app.py", *args,
        )  # fmt: skip

    def start_server(self, port: int) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"server-{port}.log").open("wb")
        process = subprocess.Popen(
            self.geode_run("server", "serve", str(port)),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        wait_for_port(port, process, self.tmp / f"server-{port}.log")
        return process

    def call(self, service: str, port: int) -> dict[str, object]:
        result = subprocess.run(
            self.geode_run(service, "call", f"https://127.0.0.1:{port}/hello", spiffe("server")),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer

    def activate(self, service: str) -> Activation:
        provider = simulated_evidence_provider(self.platform, bytes.fromhex(self.measurement))
        return activate(self.coordinator.mesh_addr, service, provider, root=self.root)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=15)


@pytest.fixture
def mesh(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> Iterator[Mesh]:
    m = Mesh(start_coordinator(None, "--leaf-ttl", "4s"), geode_env, tmp_path)
    m.set_manifest()
    yield m
    m.close()


def _tls_client(
    tmp: Path, mesh: Mesh, cert_pem: bytes | None, key_pem: bytes | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=certificate_pem(mesh.root))
    if cert_pem is not None and key_pem is not None:
        (tmp / "c.pem").write_bytes(cert_pem)
        (tmp / "k.pem").write_bytes(key_pem)
        context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return context


def _get(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


def test_allowed_and_denied_through_the_library(mesh: Mesh) -> None:
    port = free_port()
    mesh.start_server(port)
    allowed = mesh.call("client", port)
    assert allowed == {"status": 200, "body": {"hello": spiffe("client")}}
    denied = mesh.call("thief", port)
    assert denied["status"] == 403
    assert denied["body"] == {
        "error": "policy_denied",
        "peer": spiffe("thief"),
        "reason": "no rule allows GET /hello",
    }


def test_the_client_refuses_a_server_with_another_identity(mesh: Mesh, tmp_path: Path) -> None:
    port = free_port()
    mesh.start_server(port)
    result = subprocess.run(
        mesh.geode_run("client", "call", f"https://127.0.0.1:{port}/hello", spiffe("thief")),
        env=mesh.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "is not one of" in result.stderr


@pytest.mark.parametrize("who", ["other CA", "expired", "no certificate"])
def test_handshake_fails_without_a_valid_mesh_certificate(
    mesh: Mesh, tmp_path: Path, who: str
) -> None:
    port = free_port()
    mesh.start_server(port)
    if who == "other CA":
        other = CertificateAuthority.create_root().create_intermediate("other mesh")
        key = generate_private_key()
        leaf = other.issue(
            LeafParams(key.public_key(), "x", spiffe_id=SpiffeId.parse(spiffe("client")))
        )
        context = _tls_client(
            tmp_path,
            mesh,
            (certificate_pem(leaf) + certificate_pem(other.certificate)).encode(),
            private_key_pem(key),
        )
    elif who == "expired":
        client = mesh.activate("client")
        time.sleep(4.5)  # the leaf lives 4 s in this deployment
        chain = "".join(certificate_pem(c) for c in client.certificate_chain).encode()
        context = _tls_client(tmp_path, mesh, chain, client.private_key_pem())
    else:
        context = _tls_client(tmp_path, mesh, None, None)
    try:
        answer = _get(context, port)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return  # refused in the handshake
    # TLS 1.3: the client's handshake completes before the server checks its certificate,
    # and the refusal then arrives as an alert or a bare close instead of an answer.
    assert answer == b""


def test_plaintext_client_gets_nothing(mesh: Mesh) -> None:
    port = free_port()
    mesh.start_server(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"hello" not in answer
    assert not answer.startswith(b"HTTP/1.1 200")


def test_service_keeps_serving_across_renewals(mesh: Mesh, tmp_path: Path) -> None:
    port = free_port()
    mesh.start_server(port)
    serials: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client = mesh.activate("client")  # a fresh client certificate each time (4 s leaves)
        chain = "".join(certificate_pem(c) for c in client.certificate_chain).encode()
        context = _tls_client(tmp_path, mesh, chain, client.private_key_pem())
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(True)
            assert der is not None
            serials.append(x509.load_der_x509_certificate(der).serial_number)
            tls.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        time.sleep(0.5)
    assert len(set(serials)) >= 3, "the server's certificate was renewed at least twice"


def test_killing_the_launcher_leaves_no_process(mesh: Mesh) -> None:
    port = free_port()
    launcher = mesh.start_server(port)
    children = _descendants(launcher.pid)
    assert children, "the app runs as a child of the launcher"
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=20)
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
    # And the hard way: SIGKILL the launcher; Linux kills the app with it.
    port = free_port()
    launcher = mesh.start_server(port)
    children = _descendants(launcher.pid)
    launcher.kill()
    launcher.wait(timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert [pid for pid in children if _alive(pid)] == []


def test_exit_code_comes_back(mesh: Mesh) -> None:
    result = subprocess.run(
        [*mesh.geode_run("client", "x")[:-3], "python3", "exit42.py"],
        env=mesh.env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 42


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            child = int(entry.name)
            found += [child, *_descendants(child)]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
