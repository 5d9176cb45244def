"""Activation throughput and latency of a real Coordinator, against the floor set by the crypto.

What is measured
----------------
A real ``python -m geode coordinator --simulation`` process is started in a temporary directory
with its own sealing key, simulated platform key and config directory. The benchmark verifies the
Coordinator's deployment statement (simulated evidence, the installed package's measurement, the
platform key it created), pins the root certificate it vouches for, and sets a manifest with one
simulated package (the measurement of a small temporary bundle) and one service with
``max_activations: 0`` and templated env, file and argv secrets.

Then ``--clients`` concurrent clients, spread over ``--workers`` processes (asyncio + uvloop; one
keep-alive TLS connection per client, the Coordinator's certificate verified against the pinned
root), perform ``--activations`` full activations in total. One activation is what ``geode run``
does:

1. ``POST /api/v1/mesh/nonce``;
2. simulated evidence whose report data binds ``sha256(public key DER || nonce)``, quoted per
   activation with the same platform key file the Coordinator trusts;
3. ``POST /api/v1/mesh/activate`` with service, nonce, CSR and evidence;
4. check for HTTP 200 and that the issued leaf certificate carries the instance's public key.

The clients speak HTTP/1.1 through a minimal client of a few lines (``--http raw``, the default)
because ``httpx.AsyncClient`` (``--http httpx``) costs the client side about six times more CPU
per activation, and on a 2-core machine that CPU is taken from the Coordinator.

Fresh P-256 keys and CSRs (one per activation, never reused) are generated before the timed phase,
and each connection is opened (TLS handshake) by one untimed nonce request; evidence cannot be
precomputed because it binds the nonce. Latency is that of steps 1-4 for one activation.

Reported: activations/s over the timed phase, p50/p95/p99/max latency, errors; the floor, i.e.
in-process ECDSA P-256 sign+verify per second with ``cryptography`` on one core, and the ratio of
the two; the CPU time of the Coordinator process and of the clients per activation (to show which
side was the bottleneck); and the number of sealed-state writes (renames of ``state.sealed``,
counted with inotify), which shows how well concurrent activations share one fsync.

Run: ``.venv/bin/python benchmarks/activation.py --clients 64 --activations 2000 [--json]``.
The exit status is non-zero if any activation failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import ReferenceValues, SimulatedPlatform, key_binding, measure_bundle
from geode.client import CoordinatorClient, client_ssl_context, verify_statement
from geode.coordinator import coordinator_measurement

SERVICE = "bench"
NONCE_PATH = "/api/v1/mesh/nonce"
ACTIVATE_PATH = "/api/v1/mesh/activate"
JSON_HEADERS = {"content-type": "application/json"}
STATE_FILE = "state.sealed"
BAR_RATE = 500.0
BAR_P99_MS = 200.0
REQUEST_TIMEOUT = 60.0
ERROR_SAMPLES = 5


# -- setup ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_manifest(measurement: str) -> bytes:
    """One simulated package and one templated service, shaped like the tests' sample manifest."""
    service = {
        "package": "app",
        "max_activations": 0,
        "dns_names": [SERVICE, "localhost"],
        "env": {"API_TOKEN": "{{ secrets.api_token | hex }}", "GREETING": "hello"},
        "files": {
            "db.key": "{{ secrets.db_key | raw }}",
            "ca-bundle.pem": "{{ geode.root_ca | pem }}",
        },
        "argv": ["--token={{ secrets.api_token | hex }}"],
    }
    manifest = {
        "version": 1,
        "trust_domain": "bench.geode.local",
        "packages": {"app": {"tee": "simulated", "measurement": measurement}},
        "services": {SERVICE: service},
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "api_token": {"type": "symmetric-key", "size": 128, "shared": True},
        },
    }
    return json.dumps(manifest, indent=2).encode()


class CoordinatorProcess:
    """A ``geode coordinator --simulation`` process with keys and config under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.platform_key = base / "keys" / "platform.key"
        self.log_path = base / "coordinator.log"
        self.client_addr = f"127.0.0.1:{free_port()}"
        self.mesh_addr = f"127.0.0.1:{free_port()}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("GEODE_COORDINATOR", "GEODE_COORDINATOR_MESH", "GEODE_ROOT_CA")
        }
        self.env |= {
            "GEODE_SEALING_KEY": str(base / "keys" / "sealing.key"),
            "GEODE_PLATFORM_KEY": str(self.platform_key),
            "GEODE_CONFIG_DIR": str(base / "config"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
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
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Coordinator exited early:\n{self.log_tail()}")
            try:
                httpx.get(f"https://{self.client_addr}/api/v1/status", verify=False, timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the Coordinator did not come up:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the Coordinator process (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it does not stop within 15 s."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def set_up_deployment(coordinator: CoordinatorProcess, bundle: Path) -> str:
    """Verify the deployment statement, pin its root, set the manifest; the root as PEM."""
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
    with CoordinatorClient(coordinator.client_addr, root=verified.root) as client:
        client.set_manifest(bench_manifest(measure_bundle(bundle).hex()))
    return verified.root.public_bytes(serialization.Encoding.PEM).decode()


# -- sealed-state writes ------------------------------------------------------------------------


class RenameCounter:
    """Counts renames onto ``directory/name`` with inotify (each is one sealed-state write).

    The kernel merges an event into an identical unread one, so ``IN_CREATE`` is watched too: a
    save creates its temporary file and renames it, and the alternation keeps every rename in the
    queue. The queue is read when asked; nothing runs during the timed phase. If it overflows
    (16384 events by default, about 8000 writes), the count is reported as not observable.
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


def open_rename_counter(directory: Path) -> RenameCounter | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return RenameCounter(directory, STATE_FILE)
    except (OSError, AttributeError):
        return None


# -- clients (worker processes) -----------------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    index: int
    mesh_addr: str
    root_pem: str
    platform_key: str
    measurement: bytes
    quotas: tuple[int, ...]  # activations per client of this worker
    http: str  # a key of CONNECTIONS


@dataclass
class WorkerResult:
    index: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful activations
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    started: float = 0.0  # time.monotonic(): CLOCK_MONOTONIC, comparable across processes
    finished: float = 0.0
    cpu_seconds: float = 0.0
    fatal: str | None = None


@dataclass(frozen=True)
class Instance:
    """A precomputed instance key: its public key (DER) and CSR (PEM)."""

    public_der: bytes
    csr_pem: str


def make_instance() -> Instance:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVICE)]))
        .sign(key, hashes.SHA256())
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Instance(public_der, csr.public_bytes(serialization.Encoding.PEM).decode())


class ActivationFailed(Exception):
    pass


class Connection(Protocol):
    """One keep-alive HTTPS connection to the mesh API: ``post`` returns status and body."""

    async def connect(self) -> None: ...
    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]: ...
    async def close(self) -> None: ...


class RawConnection:
    """A minimal HTTP/1.1 client on one TLS stream: ``Content-Length`` requests and answers only.

    It costs the client a fraction of httpx's CPU, which matters when client and Coordinator
    share two cores. Anything it does not understand (chunked answers, ``Connection: close``)
    is an error, not a silent retry.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.context, server_hostname=self.host
        )

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            raise ConnectionError("not connected")
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
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
                raise ActivationFailed(f"unsupported answer header {line!r}")
        if length is None:
            raise ActivationFailed("answer without Content-Length")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.writer.wait_closed()


class HttpxConnection:
    """The same over ``httpx.AsyncClient`` limited to one keep-alive connection."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"https://{host}:{port}",
            verify=context,
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def connect(self) -> None:
        pass  # the first request opens the connection

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self.http.post(path, content=body, headers=JSON_HEADERS)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.http.aclose()


CONNECTIONS: dict[str, type[RawConnection] | type[HttpxConnection]] = {
    "raw": RawConnection,
    "httpx": HttpxConnection,
}


async def activate_once(
    http: Connection, sim: SimulatedPlatform, measurement: bytes, instance: Instance
) -> None:
    status, answer = await http.post(NONCE_PATH)
    if status != 200:
        raise ActivationFailed(f"nonce: HTTP {status}: {answer[:200]!r}")
    nonce_hex = json.loads(answer)["nonce"]
    evidence = sim.quote(measurement, key_binding(instance.public_der, bytes.fromhex(nonce_hex)))
    body = {
        "service": SERVICE,
        "nonce": nonce_hex,
        "csr": instance.csr_pem,
        "evidence": evidence.to_json(),
    }
    status, answer = await http.post(ACTIVATE_PATH, json.dumps(body).encode())
    if status != 200:
        raise ActivationFailed(f"activate: HTTP {status}: {answer[:200]!r}")
    leaf = x509.load_pem_x509_certificate(json.loads(answer)["certificate_chain"][0].encode())
    issued = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if issued != instance.public_der:
        raise ActivationFailed("the issued certificate does not carry the instance's key")


async def run_worker(job: WorkerJob, barrier: Any) -> WorkerResult:
    result = WorkerResult(job.index)
    sim = SimulatedPlatform.load(Path(job.platform_key))
    instances = [make_instance() for _ in range(sum(job.quotas))]
    context = client_ssl_context(x509.load_pem_x509_certificate(job.root_pem.encode()))
    host, _, port = job.mesh_addr.rpartition(":")
    connections: list[Connection] = [
        CONNECTIONS[job.http](host, int(port), context) for _ in job.quotas
    ]
    try:
        # Untimed: open every keep-alive connection (TCP + TLS handshake) with one nonce request.
        await asyncio.gather(*(c.connect() for c in connections))
        for status, answer in await asyncio.gather(*(c.post(NONCE_PATH) for c in connections)):
            if status != 200:
                raise ActivationFailed(f"warm-up nonce: HTTP {status}: {answer[:200]!r}")

        async def client(http: Connection, mine: Sequence[Instance]) -> None:
            for instance in mine:
                started = time.perf_counter()
                try:
                    await activate_once(http, sim, job.measurement, instance)
                except Exception as exc:
                    result.errors += 1
                    if len(result.error_samples) < ERROR_SAMPLES:
                        result.error_samples.append(f"{type(exc).__name__}: {exc}")
                else:
                    result.latencies.append(time.perf_counter() - started)

        portions: list[Sequence[Instance]] = []
        start = 0
        for quota in job.quotas:
            portions.append(instances[start : start + quota])
            start += quota
        barrier.wait()  # every worker is ready: the timed phase starts now
        cpu = time.process_time()
        result.started = time.monotonic()
        await asyncio.gather(*(client(h, p) for h, p in zip(connections, portions, strict=True)))
        result.finished = time.monotonic()
        result.cpu_seconds = time.process_time() - cpu
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return result


def worker_main(job: WorkerJob, barrier: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(run_worker(job, barrier))
        else:
            result = uvloop.run(run_worker(job, barrier))
    except BaseException as exc:
        barrier.abort()
        result = WorkerResult(job.index, fatal=f"{type(exc).__name__}: {exc}")
    results.put(asdict(result))  # a dict: the class lives in __mp_main__ here


# -- the floor -----------------------------------------------------------------------------------


def sign_verify_per_second(seconds: float) -> float:
    """In-process ECDSA P-256 (SHA-256) sign followed by verify, per second, on one core."""
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


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Report:
    command: str
    clients: int
    workers: int
    http: str
    activations: int
    precomputed: str
    ok: int
    errors: int
    error_samples: list[str]
    seconds: float
    activations_per_s: float
    latency_ms: dict[str, float]
    sign_verify_per_s: float
    ratio: float
    coordinator_cpu_ms_per_activation: float
    coordinator_cpu_percent: float
    client_cpu_ms_per_activation: float
    client_cpu_percent: float
    sealed_writes: int | None
    coordinator_exit: int | None = None
    bar: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def run_load(
    coordinator: CoordinatorProcess,
    root_pem: str,
    measurement: bytes,
    clients: int,
    activations: int,
    workers: int,
    http: str,
) -> tuple[list[WorkerResult], float, float, int | None]:
    """Run the timed phase; returns the worker results, wall seconds, Coordinator CPU seconds
    and the number of sealed-state writes (None when not observable)."""
    per_client = split(activations, clients)
    per_worker = split(clients, workers)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results: Any = ctx.Queue()
    processes = []
    start = 0
    for index, count in enumerate(per_worker):
        job = WorkerJob(
            index=index,
            mesh_addr=coordinator.mesh_addr,
            root_pem=root_pem,
            platform_key=str(coordinator.platform_key),
            measurement=measurement,
            quotas=tuple(per_client[start : start + count]),
            http=http,
        )
        start += count
        process = ctx.Process(target=worker_main, args=(job, barrier, results), daemon=True)
        process.start()
        processes.append(process)
    counter = open_rename_counter(coordinator.data_dir)
    finished = False
    try:
        # A worker that fails during its setup breaks the barrier; its result says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=300)
        cpu_before = coordinator.cpu_seconds()
        if counter is not None:
            counter.take()  # forget the writes of the set-up
        collected: list[WorkerResult] = []
        while len(collected) < workers:
            try:
                collected.append(WorkerResult(**results.get(timeout=1.0)))
            except queue.Empty:  # check that every worker still owing a result is alive
                owing = set(range(workers)) - {r.index for r in collected}
                if any(not processes[i].is_alive() for i in owing):
                    try:  # it may have exited right after sending its result
                        collected.append(WorkerResult(**results.get(timeout=5.0)))
                    except queue.Empty:
                        raise RuntimeError("a client worker died without a result") from None
        cpu_after = coordinator.cpu_seconds() if coordinator.alive() else cpu_before
        writes = counter.take() if counter is not None else None
        if counter is not None and counter.overflowed:
            writes = None
        finished = True
    finally:
        if counter is not None:
            counter.close()
        for process in processes:
            if not finished:
                process.terminate()  # interrupted or failed: stop the load now
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    fatal = [r.fatal for r in collected if r.fatal]
    if fatal:
        raise RuntimeError(f"client worker failed: {fatal[0]}")
    wall = max(r.finished for r in collected) - min(r.started for r in collected)
    return collected, wall, cpu_after - cpu_before, writes


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def benchmark(args: argparse.Namespace, command: str) -> Report:
    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    log(f"floor: ECDSA P-256 sign+verify for {args.floor_seconds:g} s ...")
    floor = sign_verify_per_second(args.floor_seconds)
    with tempfile.TemporaryDirectory(prefix="geode-bench-") as tmp:
        base = Path(tmp)
        bundle = base / "bundle"
        bundle.mkdir()
        (bundle / "app.py").write_text("print('hello from a benchmarked service')\n")
        coordinator = CoordinatorProcess(base)
        exit_code: int | None = None
        try:
            log(f"starting the Coordinator in {base} ...")
            coordinator.start()
            root_pem = set_up_deployment(coordinator, bundle)
            log(
                f"running {args.activations} activations with {args.clients} clients in "
                f"{args.workers} worker processes ..."
            )
            collected, wall, coordinator_cpu, writes = run_load(
                coordinator,
                root_pem,
                measure_bundle(bundle),
                args.clients,
                args.activations,
                args.workers,
                args.http,
            )
        except Exception:
            if not args.json:
                print(f"Coordinator log (tail):\n{coordinator.log_tail()}", file=sys.stderr)
            raise
        finally:
            exit_code = coordinator.stop()
    latencies = sorted(t for r in collected for t in r.latencies)
    ok = len(latencies)
    errors = sum(r.errors for r in collected)
    client_cpu = sum(r.cpu_seconds for r in collected)
    rate = ok / wall if wall > 0 else 0.0
    latency_ms = {
        "p50": percentile(latencies, 50) * 1000,
        "p95": percentile(latencies, 95) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "max": (latencies[-1] if latencies else float("nan")) * 1000,
        "mean": (statistics.fmean(latencies) if latencies else float("nan")) * 1000,
    }
    done = max(1, ok + errors)
    met = rate >= BAR_RATE and latency_ms["p99"] < BAR_P99_MS and errors == 0
    return Report(
        command=command,
        clients=args.clients,
        workers=args.workers,
        http=args.http,
        activations=args.activations,
        precomputed="P-256 keys and CSRs, generated before the timed phase; "
        "connections opened before it; evidence quoted per activation",
        ok=ok,
        errors=errors,
        error_samples=[s for r in collected for s in r.error_samples][:ERROR_SAMPLES],
        seconds=wall,
        activations_per_s=rate,
        latency_ms=latency_ms,
        sign_verify_per_s=floor,
        ratio=rate / floor,
        coordinator_cpu_ms_per_activation=coordinator_cpu / done * 1000,
        coordinator_cpu_percent=coordinator_cpu / wall * 100 if wall > 0 else 0.0,
        client_cpu_ms_per_activation=client_cpu / done * 1000,
        client_cpu_percent=client_cpu / wall * 100 if wall > 0 else 0.0,
        sealed_writes=writes,
        coordinator_exit=exit_code,
        bar={"activations_per_s": BAR_RATE, "p99_ms": BAR_P99_MS, "met": met},
        machine=machine_info(),
    )


def print_report(report: Report) -> None:
    lat = report.latency_ms
    writes = (
        "not observable"
        if report.sealed_writes is None
        else f"{report.sealed_writes} ({report.ok / max(1, report.sealed_writes):.1f} "
        "activations per write)"
    )
    machine = report.machine
    lines = [
        "Geode activation benchmark",
        f"  command        {report.command}",
        f"  machine        {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']}",
        f"  clients        {report.clients} concurrent, one keep-alive TLS connection each, "
        f"in {report.workers} worker processes (asyncio + uvloop, {report.http} HTTP/1.1)",
        f"  precomputed    {report.precomputed}",
        f"  activations    {report.ok} ok, {report.errors} errors, in {report.seconds:.2f} s",
        f"  throughput     {report.activations_per_s:.1f} activations/s",
        f"  latency        p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms",
        f"  floor          {report.sign_verify_per_s:.0f} ECDSA P-256 sign+verify/s "
        "(in-process, one core)",
        f"  ratio          {report.ratio:.4f} activations per sign+verify",
        f"  coordinator    {report.coordinator_cpu_ms_per_activation:.2f} ms CPU per activation, "
        f"{report.coordinator_cpu_percent:.0f}% of one core",
        f"  client CPU     {report.client_cpu_ms_per_activation:.2f} ms CPU per activation, "
        f"{report.client_cpu_percent:.0f}% of one core",
        f"  sealed writes  {writes}",
        f"  bar            >= {BAR_RATE:.0f} activations/s and p99 < {BAR_P99_MS:.0f} ms: "
        + ("met" if report.bar["met"] else "NOT met"),
    ]
    if report.coordinator_exit not in (0, None):
        lines.append(f"  WARNING        the Coordinator exited with {report.coordinator_exit}")
    for sample in report.error_samples:
        lines.append(f"  error          {sample}")
    print("\n".join(lines))


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--activations", type=int, default=2000, help="activations in total (2000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="client processes the clients are spread over (number of CPUs)",
    )
    parser.add_argument(
        "--floor-seconds", type=float, default=2.0, help="duration of the floor measurement"
    )
    parser.add_argument(
        "--http",
        choices=sorted(CONNECTIONS),
        default="raw",
        help="client HTTP stack: raw (a minimal HTTP/1.1 client, the default: cheapest for the "
        "client side) or httpx",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.activations < args.clients or args.workers < 1:
        parser.error("need --clients >= 1, --activations >= --clients and --workers >= 1")
    args.workers = min(args.workers, args.clients)
    signal.signal(signal.SIGTERM, _terminate)
    command = " ".join(
        [Path(sys.executable).name, "benchmarks/activation.py", *(argv or sys.argv[1:])]
    )
    report = benchmark(args, command)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 1 if report.errors or report.ok != report.activations else 0


if __name__ == "__main__":
    sys.exit(main())
