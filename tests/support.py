"""Helpers shared by the tests: real Coordinator processes, the real CLI, a sample manifest."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until something listens on 127.0.0.1:``port``, failing early if ``process`` dies."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()}")


def geode_run_argv(
    mesh_addr: str, service: str, bundle: Path, root_ca: Path, *command: str, listen_host: str = ""
) -> list[str]:
    """The real ``geode run`` command line for ``service``, pinned to ``root_ca``."""
    options = ["--listen-host", listen_host] if listen_host else []
    return [
        sys.executable, "-m", "geode", "run", "--service", service,
        "--coordinator", mesh_addr, "--bundle", str(bundle), "--root-ca", str(root_ca),
        *options, "--", *command,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CoordinatorProcess:
    """A real ``geode coordinator --simulation`` process on free loopback ports."""

    def __init__(self, data_dir: Path, env: dict[str, str], log: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.env = env
        self.log_path = log
        self.args = args
        self.client_port = free_port()
        self.mesh_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_addr(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def mesh_addr(self) -> str:
        return f"127.0.0.1:{self.mesh_port}"

    def start(self, timeout: float = 30.0) -> CoordinatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geode",
                "coordinator",
                "--simulation",
                "--data-dir",
                str(self.data_dir),
                "--client-addr",
                self.client_addr,
                "--mesh-addr",
                self.mesh_addr,
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited early:\n{self.log()}")
            try:
                httpx.get(f"https://{self.client_addr}/api/v1/status", verify=False, timeout=2)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"coordinator did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, object]:
        response = httpx.get(f"https://{self.client_addr}/api/v1/status", verify=False)
        result: dict[str, object] = response.json()
        return result

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def sample_manifest(measurement: str, **service: object) -> str:
    """A manifest with one package and services 'web' (templated) and 'worker'."""
    web = {
        "package": "app",
        "dns_names": ["web", "localhost"],
        "env": {
            "API_TOKEN": "{{ secrets.api_token | hex }}",
            "GREETING": "hello",
        },
        "files": {
            "db.key": "{{ secrets.db_key | raw }}",
            "ca-bundle.pem": "{{ geode.root_ca | pem }}",
            "tls.key": "{{ secrets.tls.private | pem }}",
        },
        "argv": ["--token={{ secrets.api_token | hex }}"],
        **service,
    }
    manifest = {
        "version": 1,
        "trust_domain": "test.geode.local",
        "packages": {"app": {"tee": "simulated", "measurement": measurement}},
        "services": {"web": web, "worker": {"package": "app"}},
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "api_token": {"type": "symmetric-key", "size": 128, "shared": True},
            "tls": {"type": "cert-ecdsa", "shared": True, "subject": {"common_name": "web"}},
        },
    }
    return json.dumps(manifest, indent=2)


def geode_cli(
    *args: str, env: dict[str, str], check: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``geode`` command."""
    result = subprocess.run(
        [sys.executable, "-m", "geode", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"geode {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result
