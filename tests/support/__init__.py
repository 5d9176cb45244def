"""Helpers shared by several test directories. Here, what nearly every one uses: real
Coordinator processes, the real CLI, a sample manifest; beside it, one module per concept:
``bookstore`` (the example under ``geode up``), ``etcd`` (a real etcd), ``governance`` (users,
recovery parties and their manifests)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from geode import testing
from geode.runtime import LOCK_FILE, BundleLock, LockedExecutable, read_lock, write_lock
from geode.testing import free_port

__all__ = [
    "REPO",
    "CoordinatorProcess",
    "free_port",
    "geode_cli",
    "geode_run_argv",
    "make_bundle",
    "native_executable",
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


def native_executable(path: Path, tag: str = "") -> Path:
    """A native (ELF) executable of its own content, ``/bin/true`` with ``tag`` appended (only
    native programs can be locked), replacing whatever was at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_bytes(Path("/bin/true").read_bytes() + tag.encode())
    path.chmod(0o755)
    return path


def make_bundle(
    path: Path, files: Mapping[str, str | bytes], lock: Sequence[str] = ("python3",)
) -> Path:
    """A bundle at ``path`` holding ``files`` (relative path: content; ``*.sh`` executable)
    whose ``geode.lock`` pins the executables ``lock``: ``python3`` is the interpreter the tests
    run with, ``sys.executable`` by its un-resolved path (so ``python3 app.py`` and
    ``sys.executable app.py`` both run it), the others as found on ``$PATH``."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if name.endswith(".sh"):
            target.chmod(0o755)
    others = [name for name in lock if name != "python3"]
    if others:  # found as geode db serve finds MariaDB's programs: PATH, then the system's
        search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/bin"])
        write_lock(path, others, path=search)
    if "python3" in lock:
        python = Path(sys.executable)
        digest = hashlib.sha256(python.resolve().read_bytes()).hexdigest()
        pinned = dict(read_lock(path).executables)
        pinned["python3"] = LockedExecutable(
            "python3", python, digest, interpreter=True, target=python.resolve()
        )
        text = json.dumps(BundleLock(pinned).to_json(), indent=2) + "\n"
        (path / LOCK_FILE).write_text(text)
    return path


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
