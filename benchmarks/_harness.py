"""What every Geode benchmark needs: a real Coordinator, a verified deployment, clients, meters.

- ``CoordinatorProcess``: ``python -m geode coordinator --simulation`` in an isolated directory,
  with its own sealing key, simulated platform key and config directory (``GEODE_SEALING_KEY``,
  ``GEODE_PLATFORM_KEY``, ``GEODE_CONFIG_DIR``), and its CPU time read from ``/proc``.
- ``set_up_deployment``: first contact as ``geode verify`` makes it (the deployment statement,
  its evidence and its root signatures), its root pinned as the only trust anchor, a manifest set
  over TLS to that root, and a fresh statement that vouches for that manifest.
- ``RawConnection`` / ``HttpxConnection``: one keep-alive HTTPS connection each, verified against
  the pinned root and refused unless the peer is the Coordinator itself (``COORDINATOR_URI``).
- ``HttpClient``: one keep-alive HTTP/1.1 connection to any server, plaintext or TLS, for
  data-plane benchmarks (the peer check, if any, is the TLS context's own).
- ``WorkerPool``: client processes (asyncio + uvloop) that start their timed phase together.
- Meters: the sign+verify floor, percentiles, sealed-state writes counted with inotify, CPU time
  of a process tree, and a description of the machine.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import math
import multiprocessing
import os
import platform
import queue
import signal
import socket
import ssl
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Generic, TypeVar, cast

import cryptography
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode import testing
from geode.attestation import ReferenceValues, SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient, statement_manifest, verify_statement
from geode.coordinator import coordinator_measurement
from geode.pki import COORDINATOR_URI, certificate_pem, uri_sans
from geode.protocol import check_coordinator_peer
from geode.testing import free_port

__all__ = [
    "CONNECTIONS",
    "REQUEST_TIMEOUT",
    "STATE_FILE",
    "Connection",
    "CoordinatorProcess",
    "Deployment",
    "EtcdProcess",
    "HarnessError",
    "HttpClient",
    "HttpxConnection",
    "Machine",
    "NotTheCoordinator",
    "ProtocolError",
    "RawConnection",
    "RenameCounter",
    "WorkerPool",
    "command_line",
    "exit_on_sigterm",
    "free_port",
    "latency_summary_ms",
    "make_bundle",
    "open_rename_counter",
    "percentile",
    "process_tree_cpu_seconds",
    "require_coordinator_certificate",
    "run_event_loop",
    "set_up_deployment",
    "sign_verify_per_second",
    "split_evenly",
    "wait_for_port",
]

STATE_FILE = "state.sealed"  # the Coordinator's DirectoryStore writes this name
REQUEST_TIMEOUT = 60.0


class HarnessError(Exception):
    """The root of the harness's errors.

    - ``ProtocolError``: an HTTP answer the raw client does not understand.
    - ``NotTheCoordinator``: the TLS peer chains to the root but is not the Coordinator.
    """


class ProtocolError(HarnessError):
    pass


class NotTheCoordinator(HarnessError):
    def __init__(self) -> None:
        super().__init__(
            "the server's certificate chains to the deployment root but is not the "
            f"Coordinator's (no URI SAN {COORDINATOR_URI})"
        )


# -- the Coordinator process --------------------------------------------------------------------


class CoordinatorProcess(testing.CoordinatorProcess):
    """``geode.testing.CoordinatorProcess`` with keys, config, data and log under ``base``."""

    def __init__(self, base: Path, *args: str, name: str = "") -> None:
        """Keys and config under ``base`` (shared by every Coordinator given the same ``base``);
        data directory and log named after ``name`` (``data``/``coordinator.log`` without one)."""
        suffix = f"-{name}" if name else ""
        super().__init__(
            base / f"data{suffix}",
            testing.isolated_env(base),
            base / f"coordinator{suffix}.log",
            *args,
        )
        self.base = base
        self.platform_key = base / "keys" / "platform.key"

    def start(self, timeout: float = 60.0) -> CoordinatorProcess:
        try:
            super().start(timeout)
        except RuntimeError as exc:
            raise HarnessError(str(exc)) from None
        return self


class EtcdProcess(testing.EtcdProcess):
    """``geode.testing.EtcdProcess`` under ``directory``, with the harness's errors."""

    def __init__(self, directory: Path) -> None:
        binary = testing.find_etcd()
        if binary is None:
            raise HarnessError("etcd is not installed (apt-get install etcd-server)")
        super().__init__(directory, binary, name="bench")

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        try:
            super().start(timeout)
        except RuntimeError as exc:
            raise HarnessError(str(exc)) from None
        return self

    def cpu_seconds(self) -> float:
        return 0.0 if self.process is None else process_tree_cpu_seconds(self.process.pid)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log(chars)


# -- the deployment ------------------------------------------------------------------------------


def make_bundle(directory: Path) -> bytes:
    """A one-file service bundle in ``directory``; its measurement, for a simulated package."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text("print('hello from a benchmarked service')\n")
    return measure_bundle(directory)


@dataclass(frozen=True)
class Deployment:
    """A Coordinator whose statement was verified, with the root it vouches for pinned."""

    root: x509.Certificate
    manifest_sha256: bytes

    @property
    def root_pem(self) -> str:
        return certificate_pem(self.root)


def set_up_deployment(coordinator: CoordinatorProcess, manifest: bytes) -> Deployment:
    """Verify the Coordinator, pin its root, set ``manifest``, and check that it is in force.

    The first statement must carry simulated evidence of this installation's Coordinator, quoted
    with the platform key the process created and bound to a fresh nonce, and verify under the
    root it names (``verify_statement`` checks the statement and manifest signatures). Every
    later call goes over TLS to that root, and only to a peer that is the Coordinator itself.
    """
    platform_key = SimulatedPlatform.load(coordinator.platform_key)
    nonce = os.urandom(32)
    with CoordinatorClient(coordinator.client_addr, insecure=True) as first_contact:
        statement = first_contact.attestation(nonce)
    verified = verify_statement(
        statement,
        reference=ReferenceValues(tee="simulated", measurement=coordinator_measurement().hex()),
        platform_keys=[platform_key.public_key],
        nonce=nonce,
    )
    expected = hashlib.sha256(manifest).digest()
    with CoordinatorClient(coordinator.client_addr, root=verified.root) as client:
        answer = client.set_manifest(manifest)
        nonce = os.urandom(32)
        vouched = statement_manifest(client.attestation(nonce), root=verified.root, nonce=nonce)
    if answer.sha256 != expected.hex() or vouched != expected:
        raise HarnessError("the Coordinator does not vouch for the manifest it was given")
    return Deployment(verified.root, expected)


# -- clients ------------------------------------------------------------------------------------


def require_coordinator_certificate(der: bytes | None) -> None:
    """Refuse a peer whose (already verified) certificate lacks ``COORDINATOR_URI``.

    The root also issues certificates to services and secret holders; only the Coordinator's
    carries that URI. Geode's own clients make the same check (``check_coordinator_peer``).
    """
    if not der or COORDINATOR_URI not in uri_sans(x509.load_der_x509_certificate(der)):
        raise NotTheCoordinator()


class Connection(abc.ABC):
    """One keep-alive HTTPS connection to a Coordinator API; ``request`` gives status and body."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host = host
        self.port = port
        self.context = context

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]: ...

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    @abc.abstractmethod
    async def close(self) -> None: ...


class RawConnection(Connection):
    """A minimal HTTP/1.1 client on one TLS stream: ``Content-Length`` requests and answers only.

    It costs the client a fraction of httpx's CPU, which matters when clients and Coordinator
    share two cores. The peer is checked once, after the handshake. Anything it does not
    understand (chunked answers, ``Connection: close``) is an error, not a silent retry.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._headers = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host
        )
        ssl_object = self.writer.get_extra_info("ssl_object")
        require_coordinator_certificate(
            ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        )

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            raise ConnectionError("not connected")
        head = f"{method} {path} HTTP/1.1\r\n{self._headers}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        answer = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        status_line, *header_lines = answer.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length: int | None = None
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" or (
                name == "connection" and value.strip().lower() == "close"
            ):
                raise ProtocolError(f"unsupported answer header {line!r}")
        if length is None:
            raise ProtocolError("answer without Content-Length")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.writer.wait_closed()


class HttpxConnection(Connection):
    """The same over ``httpx.AsyncClient`` limited to one keep-alive connection."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context)
        self.http = httpx.AsyncClient(
            base_url=f"https://{host}:{port}",
            verify=context,
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self._checked: object = None  # the network stream whose peer was checked

    async def connect(self) -> None:
        pass  # the first request opens the connection

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self.http.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
        stream = response.extensions.get("network_stream")
        if stream is None or stream is not self._checked:  # a new connection: check its peer
            check_coordinator_peer(response)
            self._checked = stream
        return response.status_code, response.content

    async def close(self) -> None:
        await self.http.aclose()


CONNECTIONS: dict[str, type[Connection]] = {"raw": RawConnection, "httpx": HttpxConnection}


class HttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to any server, for data-plane benchmarks.

    Plaintext, or TLS when a context is given; any peer check is the context's own (a
    ``MeshSSLContext`` checks the SPIFFE id in the handshake). One request at a time, answers
    with ``Content-Length`` only, as ``RawConnection``; anything else is a ``ProtocolError``.
    It is an ``asyncio.Protocol`` rather than streams with a timeout per request because on two
    shared cores every microsecond the client spends is taken from the servers it measures
    (about 20 µs of CPU per request here against about 30 µs for ``RawConnection``); callers
    bound a whole phase with one timeout instead.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._body_at = -1  # where the body of the answer being read starts, once known
        self._length = 0

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext | None) -> HttpClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            cls, host, port, ssl=context, server_hostname=host if context is not None else None
        )
        return client

    def request(self, message: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one complete request; the future gives the answer's status and body."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("not connected")
        if self._waiter is not None:
            raise ProtocolError("one request at a time")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclasses

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            answer = self._answer()
        except ProtocolError as exc:
            self._fail(exc)
            return
        if answer is None:
            return
        waiter, self._waiter = self._waiter, None
        if waiter is None or self._buffer:
            self._fail(ProtocolError("bytes from the server that answer no request"))
        elif not waiter.done():
            waiter.set_result(answer)

    def _answer(self) -> tuple[int, bytes] | None:
        """The complete answer at the front of the buffer, taken from it; None if incomplete."""
        buffer = self._buffer
        if self._body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            status_line, *header_lines = buffer[:end].decode("latin-1").split("\r\n")
            length: int | None = None
            for line in header_lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" or (
                    name == "connection" and value.strip().lower() == "close"
                ):
                    raise ProtocolError(f"unsupported answer header {line!r}")
            if length is None:
                raise ProtocolError("answer without Content-Length")
            self._status = int(status_line.split(" ", 2)[1])
            self._body_at, self._length = end + 4, length
        end = self._body_at + self._length
        if len(buffer) < end:
            return None
        body = bytes(buffer[self._body_at : end])
        del buffer[:end]
        self._body_at = -1
        return self._status, body

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the server closed the connection: {exc}"))


# -- client processes ---------------------------------------------------------------------------

JobT = TypeVar("JobT")
Outcome = dict[str, Any]  # what a worker sends back: a plain dict crosses processes as is
Body = Callable[[JobT, Barrier], Coroutine[Any, Any, Outcome]]


def run_event_loop(main: Coroutine[Any, Any, Outcome]) -> Outcome:
    """``main`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: Outcome = uvloop.run(main)
    return result


def _worker_main(
    body: Body[JobT], job: JobT, index: int, barrier: Barrier, results: Queue[Outcome]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        outcome = {"index": index, "result": run_event_loop(body(job, barrier))}
    except BaseException as exc:
        barrier.abort()  # releases everybody waiting for this worker to get ready
        outcome = {"index": index, "fatal": f"{type(exc).__name__}: {exc}"}
    results.put(outcome)


class WorkerPool(Generic[JobT]):
    """One spawned process per job, each running ``body(job, barrier)`` on its own event loop.

    ``body`` does its untimed set-up, calls ``barrier.wait()``, runs its timed phase and returns
    a dict (a plain dict: classes of the benchmark script live in ``__mp_main__`` over there).
    ``body`` must be a module-level function. The parent calls ``wait_ready()``, which returns
    when every worker is past its set-up, then ``results()``. Leaving the ``with`` block before
    all results are in terminates the workers.
    """

    def __init__(self, body: Body[JobT], jobs: Sequence[JobT]) -> None:
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(len(jobs) + 1)
        self._results: Queue[Outcome] = context.Queue()
        self._processes = [
            context.Process(
                target=_worker_main,
                args=(body, job, index, self._barrier, self._results),
                daemon=True,
            )
            for index, job in enumerate(jobs)
        ]
        self._finished = False

    def __enter__(self) -> WorkerPool[JobT]:
        for process in self._processes:
            process.start()
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        # A worker that fails during its set-up breaks the barrier; its result says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(timeout=timeout)

    def results(self) -> list[Outcome]:
        """Every worker's dict, in job order; raises if a worker failed or died."""
        collected: dict[int, Outcome] = {}
        while len(collected) < len(self._processes):
            try:
                outcome = self._results.get(timeout=1.0)
            except queue.Empty:  # check that every worker still owing a result is alive
                owing = set(range(len(self._processes))) - collected.keys()
                if all(self._processes[i].is_alive() for i in owing):
                    continue
                try:  # it may have exited right after sending its result
                    outcome = self._results.get(timeout=5.0)
                except queue.Empty:
                    raise HarnessError("a client worker died without a result") from None
            collected[outcome["index"]] = outcome
        self._finished = True
        fatal = [o["fatal"] for o in collected.values() if "fatal" in o]
        if fatal:
            raise HarnessError(f"client worker failed: {fatal[0]}")
        return [collected[i]["result"] for i in range(len(self._processes))]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in self._processes:
            if not self._finished:
                process.terminate()  # interrupted or failed: stop the load now
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` counts that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- meters --------------------------------------------------------------------------------------


def sign_verify_per_second(seconds: float) -> float:
    """The floor: in-process ECDSA P-256 (SHA-256) sign followed by verify, per second, one core."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    algorithm = ec.ECDSA(hashes.SHA256())
    message = os.urandom(64)
    done = 0
    start = time.perf_counter()
    while True:
        for _ in range(100):
            public.verify(key.sign(message, algorithm), message, algorithm)
        done += 100
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def latency_summary_ms(sorted_seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, max and mean of ascending latencies in seconds, in milliseconds."""
    empty = not sorted_seconds
    return {
        "p50": percentile(sorted_seconds, 50) * 1000,
        "p95": percentile(sorted_seconds, 95) * 1000,
        "p99": percentile(sorted_seconds, 99) * 1000,
        "max": float("nan") if empty else sorted_seconds[-1] * 1000,
        "mean": float("nan") if empty else statistics.fmean(sorted_seconds) * 1000,
    }


class RenameCounter:
    """Counts renames onto ``directory/name`` with inotify (each is one sealed-state write).

    The kernel merges an event into an identical unread one, so ``IN_CREATE`` is watched too: a
    save creates its temporary file and renames it, and the alternation keeps every rename in the
    queue. The queue is read when asked; nothing runs during a timed phase. If it overflows
    (16384 events by default, about 8000 writes), ``overflowed`` is set and the count is not
    to be trusted.
    """

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80
    IN_Q_OVERFLOW = 0x4000
    IN_NONBLOCK = 0o4000
    IN_CLOEXEC = 0o2000000
    _EVENT = struct.Struct("iIII")

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name.encode()
        self.overflowed = False
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = int(libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_CREATE | self.IN_MOVED_TO
        if libc.inotify_add_watch(self.fd, str(directory).encode(), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def take(self) -> int:
        """Renames since the last call."""
        count = 0
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(buf):
                _wd, mask, _cookie, length = self._EVENT.unpack_from(buf, offset)
                offset += self._EVENT.size
                name = buf[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & self.IN_Q_OVERFLOW:
                    self.overflowed = True
                elif mask & self.IN_MOVED_TO and name == self.name:
                    count += 1

    def close(self) -> None:
        os.close(self.fd)


def open_rename_counter(directory: Path, name: str = STATE_FILE) -> RenameCounter | None:
    """A counter of sealed-state writes, or None where inotify is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return RenameCounter(directory, name)
    except (OSError, AttributeError):
        return None


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (nginx's workers, say)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it exited meanwhile
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        ticks[child] = int(fields[11]) + int(fields[12])  # utime, stime
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def wait_for_port(
    port: int, alive: Callable[[], bool], what: str, timeout: float = 30.0, host: str = "127.0.0.1"
) -> None:
    """Return once ``host:port`` accepts TCP connections; fail if ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise HarnessError(f"{what} exited before listening on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise HarnessError(f"{what} did not listen on {host}:{port} within {timeout:g} s")


@dataclass(frozen=True)
class Machine:
    nproc: int | None
    cpu: str
    python: str
    cryptography: str
    date: str

    @classmethod
    def describe(cls) -> Machine:
        model = platform.processor() or "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        return cls(
            nproc=os.cpu_count(),
            cpu=model,
            python=platform.python_version(),
            cryptography=cryptography.__version__,
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
        )


# -- the command line ----------------------------------------------------------------------------


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as RESULTS.md records it."""
    return " ".join([Path(sys.executable).name, script, *(sys.argv[1:] if argv is None else argv)])


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def exit_on_sigterm() -> None:
    """Make SIGTERM stop a benchmark the way Ctrl-C does, stopping what it started."""
    signal.signal(signal.SIGTERM, _terminate)
