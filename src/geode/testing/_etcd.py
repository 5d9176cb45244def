"""etcd (Debian's ``etcd-server``) on free loopback ports, for tests and benchmarks: one member on
its own, or a cluster of several whose members can be killed one by one."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from geode.testing._coordinator import free_port

__all__ = ["EtcdCluster", "EtcdProcess", "find_etcd"]


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

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls_args else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        """Start it; ``RuntimeError`` with its log's end if it exits or does not come up."""
        self.launch()
        self.wait_ready(time.monotonic() + timeout)
        return self

    def launch(self, initial_cluster: str | None = None) -> None:
        """Start the process without waiting for it. ``initial_cluster`` is etcd's
        ``--initial-cluster`` (``name=peer-url,...``) when this is one member of several."""
        self.directory.mkdir(parents=True, exist_ok=True)
        client, peer = self.client_url, self.peer_url
        command = [
            self.binary, "--name", self.name, "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            *self.tls_args,
        ]  # fmt: skip
        with (self.directory / "etcd.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, deadline: float) -> None:
        """Until ``/health`` says healthy (the member sees a leader), by ``deadline``
        (``time.monotonic()``); ``RuntimeError`` with its log's end if it exits or is late."""
        if self.process is None:
            raise RuntimeError("etcd was not launched")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited early:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError, ValueError):
                health = httpx.get(f"{self.client_url}/health", timeout=1, verify=self.verify)
                if health.status_code == 200 and health.json().get("health") == "true":
                    return
            time.sleep(0.1)
        raise RuntimeError(f"etcd {self.name} did not come up:\n{self.log()}")

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

    def kill(self) -> None:
        """SIGKILL: the member dies as in a crash, with no chance to hand over leadership."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster, each under ``directory/<name>``."""

    def __init__(self, directory: Path, binary: str, size: int = 3, *, name: str = "geode") -> None:
        if size < 1:
            raise ValueError("an etcd cluster has at least one member")
        self.members = [
            EtcdProcess(directory / f"{name}-{i}", binary, name=f"{name}-{i}") for i in range(size)
        ]

    def __iter__(self) -> Iterator[EtcdProcess]:
        return iter(self.members)

    @property
    def endpoints(self) -> list[str]:
        """HOST:PORT of every member, for clients."""
        return [member.endpoint for member in self.members]

    @property
    def url(self) -> str:
        """What ``geode coordinator --store`` takes: every member, tried in turn."""
        return "etcd://" + ",".join(self.endpoints)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member, then wait until each sees a leader (no member can come up alone:
        each waits for a quorum of the others). ``RuntimeError`` with the failing member's log;
        then none is left running."""
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        deadline = time.monotonic() + timeout
        try:
            for member in self.members:
                member.launch(initial_cluster)
            for member in self.members:
                member.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> EtcdProcess:
        """SIGKILL member ``index``; the member."""
        member = self.members[index]
        member.kill()
        return member

    def stop(self) -> None:
        for member in self.members:
            member.stop()
