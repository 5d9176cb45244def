"""A ``geode coordinator --simulation`` process for tests and benchmarks."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CoordinatorProcess", "free_port", "isolated_env"]

_INHERITED = ("GEODE_COORDINATOR", "GEODE_COORDINATOR_MESH", "GEODE_ROOT_CA")


# Ports are picked below the kernel's ephemeral range (32768-60999 by default), so that no
# outgoing connection takes one between the pick and the bind, and clear of the bookstore demo's
# fixed ports as its tests shift them (14001-15702, and its app ports 24001-24701).
_PORT_RANGE = (16000, 24000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now, never handed out before by this process."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} on 127.0.0.1")


def isolated_env(base: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with keys and pins under ``base``: nothing touches the real home, and no
    Coordinator address or root is inherited."""
    env = dict(os.environ if environ is None else environ)
    for key in _INHERITED:
        env.pop(key, None)
    env |= {
        "GEODE_SEALING_KEY": str(base / "keys" / "sealing.key"),
        "GEODE_PLATFORM_KEY": str(base / "keys" / "platform.key"),
        "GEODE_CONFIG_DIR": str(base / "config"),
    }
    return env


class CoordinatorProcess:
    """A real Coordinator in simulation on free loopback ports; ``start()`` waits until its
    client API listens."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], log: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.env = dict(env)
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

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> CoordinatorProcess:
        """Start it; ``RuntimeError`` with its log's end if it exits or does not answer."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
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
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Coordinator exited early:\n{self.log_tail(200)}")
            try:  # uvicorn listens once it is serving
                socket.create_connection(("127.0.0.1", self.client_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the Coordinator did not come up:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; the exit code (0 if never started)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
