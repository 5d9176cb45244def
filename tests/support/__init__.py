"""Helpers shared by several test directories. Here, what nearly every one uses: real
Coordinator processes, the real CLI, a sample manifest; beside it, one module per concept:
``bookstore`` (the example under ``geode up``), ``etcd`` (a real etcd), ``governance`` (users,
recovery parties and their manifests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from geode import testing
from geode.testing import free_port

__all__ = [
    "REPO",
    "CoordinatorProcess",
    "free_port",
    "geode_cli",
    "geode_run_argv",
    "sample_manifest",
    "wait_for_port",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]


class CoordinatorProcess(testing.CoordinatorProcess):
    def status(self) -> dict[str, object]:
        """The Coordinator's status, unverified (what a test looks at, not what it trusts)."""
        response = httpx.get(f"https://{self.client_addr}/api/v1/status", verify=False)
        result: dict[str, object] = response.json()
        return result


def wait_until(
    condition: Callable[[], object], timeout: float, describe: Callable[[], object] = str
) -> None:
    """Poll ``condition`` until it holds; fails after ``timeout`` seconds, saying
    ``describe()`` (a log's end, a status)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.05)


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
