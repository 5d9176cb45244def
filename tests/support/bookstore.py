"""The confidential bookstore in tests: ``geode up`` as a real process, its pages, relays."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import REPO

EXAMPLE = REPO / "examples" / "bookstore"
PAGES = {"bookstore": 14441, "bookwarehouse": 14442, "bookbuyer": 14443, "bookthief": 14444}
FIXED_PORTS = (14100, 14101, 14306, 14001, 14002, *PAGES.values())


def ports_in_use(ports: tuple[int, ...] = FIXED_PORTS) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


# Every port of the example, with the ports derived from them (app and egress ports).
_ALL_PORTS = (*FIXED_PORTS, 24001, 15002)


def _shift(text: str, offset: int) -> str:
    for port in _ALL_PORTS:
        text = re.sub(rf"(?<![0-9a-zA-Z]){port}(?![0-9a-zA-Z])", str(port + offset), text)
    return text


def deployment_copy(directory: Path, edit: Any = None, *, port_offset: int = 0) -> Path:
    """The example's deployment in ``directory``: bundles pointing at the example (``geode up``
    builds them and pins their measurements), every port moved by ``port_offset`` (tests run
    beside a demo), and the manifest passed through ``edit(document)``."""
    directory.mkdir(parents=True, exist_ok=True)
    deployment = yaml.safe_load(_shift((EXAMPLE / "geode-up.yaml").read_text(), port_offset))
    for service in deployment["services"]:
        service["bundle"] = str(EXAMPLE / service["bundle"])
    manifest = yaml.safe_load(_shift((EXAMPLE / "manifest.yaml").read_text(), port_offset))
    if edit is not None:
        edit(manifest)
    (directory / "manifest.yaml").write_text(json.dumps(manifest))
    deployment["manifest"] = "manifest.yaml"
    (directory / "geode-up.yaml").write_text(yaml.safe_dump(deployment))
    return directory


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` now alive."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(pid: int, known: Iterable[int] = ()) -> None:
    """SIGKILL ``pid``, its descendants (and ``known`` ones) and their process groups."""
    for target in {pid, *known, *_children(pid)}:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(target, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class GeodeUp:
    """``geode up DIRECTORY`` as a process, until ``stop()``."""

    def __init__(self, directory: Path, run_dir: Path, *options: str, port_offset: int = 0) -> None:
        self.port_offset = port_offset
        busy = ports_in_use(tuple(p + port_offset for p in _ALL_PORTS))
        if busy:
            raise RuntimeError(f"ports {busy} are in use: is a bookstore demo running here?")
        self.run_dir = run_dir
        self.log = run_dir.parent / f"{run_dir.name}-geode-up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEODE_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "geode", "up", str(directory), "--run-dir", str(run_dir),
                 "--view", "plain", *options],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.descendants: set[int] = set()

    @property
    def root_file(self) -> Path:
        return self.run_dir / "root.pem"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def raw(self, service: str) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.root_file))
        port = PAGES[service] + self.port_offset
        answer = httpx.get(f"https://localhost:{port}/raw", verify=context, timeout=5)
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document

    def wait_until(self, what: str, check: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"geode up exited ({self.process.returncode}):\n{self.output()}"
                )
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g} s: {what}\n{self.output()}")
            time.sleep(0.5)

    def stop(self) -> int:
        """SIGINT, as Ctrl-C; the exit status. Remembers the processes it had started; if it
        does not stop in time, they and it are killed (later tests need the ports)."""
        self.descendants = _children(self.process.pid)
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            kill_tree(self.process.pid, self.descendants)
            self.process.wait(10)
            raise

    def left_behind(self) -> list[int]:
        return sorted(pid for pid in self.descendants if _alive(pid))


class Relay:
    """A TCP relay on a free port (``port``) to ``target``, keeping every byte it carries,
    both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.carried = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.carried += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
