"""One etcd member (Debian's ``etcd-server``) on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from geode.testing._coordinator import free_port

__all__ = ["EtcdProcess", "find_etcd"]


def find_etcd() -> str | None:
    """The etcd program, on PATH or where Debian puts it; ``None`` when it is not installed."""
    return shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/sbin/etcd") if os.access(p, os.X_OK)), None
    )


class EtcdProcess:
    """An etcd member listening on 127.0.0.1, its data and log under ``directory``.

    ``tls_args`` are etcd's own server TLS options (clients then speak https), and ``verify``
    the context the readiness check connects with.
    """

    def __init__(
        self,
        directory: Path,
        binary: str,
        *,
        name: str = "geode",
        tls_args: Sequence[str] = (),
        verify: ssl.SSLContext | bool = False,
    ) -> None:
        self.directory = directory
        self.binary = binary
        self.name = name
        self.tls_args = tuple(tls_args)
        self.verify = verify
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """HOST:PORT for clients."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """What ``geode coordinator --store`` takes."""
        return f"etcd://{self.endpoint}"

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        """Start it; ``RuntimeError`` with its log's end if it exits or does not come up."""
        self.directory.mkdir(parents=True, exist_ok=True)
        client = f"{'https' if self.tls_args else 'http'}://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            self.binary, "--name", self.name, "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
            *self.tls_args,
        ]  # fmt: skip
        with (self.directory / "etcd.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited early:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                health = httpx.get(f"{client}/health", timeout=1, verify=self.verify)
                if health.status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not come up:\n{self.log()}")

    def log(self, chars: int = 4000) -> str:
        try:
            return (self.directory / "etcd.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
