"""A real etcd (Debian ``etcd-server``) for the tests, on free loopback ports in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from geode.testing import free_port

__all__ = ["EtcdServer", "etcd_binary"]


def etcd_binary() -> str:
    """The etcd program; fails under CI=true when it is missing (``make test`` installs it),
    skips otherwise."""
    found = shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/sbin/etcd") if os.access(p, os.X_OK)), None
    )
    if found is None:
        message = "etcd is not installed (apt-get install etcd-server; `make test` does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class EtcdServer:
    """One etcd member listening on 127.0.0.1; ``endpoint`` is HOST:PORT for clients."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    def start(self) -> EtcdServer:
        binary = etcd_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = (self.directory / "etcd.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--name",
                "test",
                "--data-dir",
                str(self.directory / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"test={peer}",
                "--initial-cluster-state",
                "new",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited early:\n{self.log()}")
            try:
                if httpx.get(f"{client}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not come up:\n{self.log()}")

    def log(self) -> str:
        return (self.directory / "etcd.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
