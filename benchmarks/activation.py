"""Activation throughput and latency of a real Coordinator, against the floor set by the crypto.

What is measured
----------------
A real ``python -m geode coordinator --simulation`` process is started in a temporary directory
with its own sealing key, simulated platform key and config directory (see ``_harness``). The
benchmark verifies the Coordinator's deployment statement (simulated evidence of the installed
package's measurement, quoted with the platform key the process created, and the root's
signatures), pins the root certificate it vouches for, and sets a manifest with one simulated
package (the measurement of a small temporary bundle) and one service with
``max_activations: 0`` and templated env, file and argv secrets.

Then ``--clients`` concurrent clients, spread over ``--workers`` processes (asyncio + uvloop; one
keep-alive TLS connection per client, verified against the pinned root and checked once for the
Coordinator's URI SAN), perform ``--activations`` full activations in total. One activation is
what ``geode run`` does:

1. ``POST /api/v1/mesh/nonce``;
2. simulated evidence whose report data binds ``sha256(public key DER || nonce)``, quoted per
   activation with the same platform key file the Coordinator trusts;
3. ``POST /api/v1/mesh/activate`` with service, nonce, CSR and evidence;
4. check for HTTP 200 and that the issued leaf certificate carries the instance's public key.

The clients speak HTTP/1.1 through a minimal client (``--http raw``, the default) because
``httpx.AsyncClient`` (``--http httpx``) costs the client side about six times more CPU per
activation, and on a 2-core machine that CPU is taken from the Coordinator.

Fresh P-256 keys and CSRs (one per activation, never reused) are generated before the timed phase,
and each connection is opened (TLS handshake, peer check) by one untimed nonce request; evidence
cannot be precomputed because it binds the nonce. Latency is that of steps 1-4 for one activation.

Reported: activations/s over the timed phase, p50/p95/p99/max latency, errors; the floor, i.e.
in-process ECDSA P-256 sign+verify per second with ``cryptography`` on one core, and the ratio of
the two; the CPU time of the Coordinator process and of the clients per activation (to show which
side was the bottleneck); and the number of sealed-state writes (renames of ``state.sealed``,
counted with inotify), which shows how well concurrent activations share one fsync.

Several Coordinators (``--coordinators N --store etcd``): one etcd is started for the run (temp
dir, free loopback ports) and the Coordinators run with ``--store etcd://...`` on it, sharing the
platform key, each with its own data directory and sealing key: the ones started after the first
obtain the cluster key from it by attestation. The manifest is set once, through the first. The
load runs twice in the same run: on 1 Coordinator, then with the clients spread round robin over
N (the others are started after the first phase, so they read the current state). One of them
is the writer, and the others forward activations to it (docs/coordinator.md, "One writer"). A
Coordinator decides an activation that lost a compare-and-swap again itself (up to five
attempts); like the runtime, a client then tries again, with a new nonce, on 409
``store_conflict``, up to three attempts; a conflict still there after the third is an error.
Reported per phase: activations/s, latency, errors, conflicts tried again and not absorbed, CPU
of all Coordinators and of etcd per activation; and the ratio N/1 of activations/s. Sealed writes
are not observable with etcd (the state is not a file).

Run: ``.venv/bin/python benchmarks/activation.py --clients 64 --activations 2000 [--json]``, or
``.venv/bin/python benchmarks/activation.py --coordinators 3 --store etcd``.
The exit status is non-zero if any activation failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from _harness import (
    CONNECTIONS,
    Connection,
    CoordinatorProcess,
    EtcdProcess,
    Machine,
    WorkerPool,
    command_line,
    exit_on_sigterm,
    latency_summary_ms,
    make_bundle,
    open_rename_counter,
    set_up_deployment,
    sign_verify_per_second,
    split_evenly,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import SimulatedPlatform
from geode.protocol import coordinator_client_context, key_binding

SERVICE = "bench"
NONCE_PATH = "/api/v1/mesh/nonce"
ACTIVATE_PATH = "/api/v1/mesh/activate"
BAR_RATE = 500.0
BAR_P99_MS = 200.0
ERROR_SAMPLES = 5
STORE_CONFLICT_ATTEMPTS = 3  # as the runtime (geode run) tries an activation on store_conflict
ETCD_PREFIX = "/geode-bench"


def bench_manifest(measurement: bytes) -> bytes:
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
        "packages": {"app": {"tee": "simulated", "measurement": measurement.hex()}},
        "services": {SERVICE: service},
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "api_token": {"type": "symmetric-key", "size": 128, "shared": True},
        },
    }
    return json.dumps(manifest, indent=2).encode()


# -- clients (worker processes) -----------------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    mesh_addrs: tuple[str, ...]  # per client of this worker: the Coordinator it talks to
    root_pem: str
    platform_key: str
    measurement: bytes
    quotas: tuple[int, ...]  # activations per client of this worker
    http: str  # a key of CONNECTIONS


@dataclass
class WorkerResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful activations
    errors: int = 0
    conflicts_retried: int = 0  # 409 store_conflict answers tried again
    conflicts_unabsorbed: int = 0  # activations still in conflict after the last attempt
    error_samples: list[str] = field(default_factory=list)
    started: float = 0.0  # time.monotonic(): CLOCK_MONOTONIC, comparable across processes
    finished: float = 0.0
    cpu_seconds: float = 0.0


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


class ConflictNotAbsorbed(ActivationFailed):
    pass


def is_store_conflict(status: int, answer: bytes) -> bool:
    return status == 409 and b"store_conflict" in answer


async def activate_once(
    http: Connection, sim: SimulatedPlatform, measurement: bytes, instance: Instance
) -> int:
    """One activation, tried again with a new nonce on 409 ``store_conflict`` like the runtime;
    the number of conflicts absorbed so."""
    for attempt in range(1, STORE_CONFLICT_ATTEMPTS + 1):
        status, answer = await http.post(NONCE_PATH)
        if status != 200:
            raise ActivationFailed(f"nonce: HTTP {status}: {answer[:200]!r}")
        nonce_hex = json.loads(answer)["nonce"]
        binding = key_binding(instance.public_der, bytes.fromhex(nonce_hex))
        evidence = sim.quote(measurement, binding)
        body = {
            "service": SERVICE,
            "nonce": nonce_hex,
            "csr": instance.csr_pem,
            "evidence": evidence.to_json(),
        }
        status, answer = await http.post(ACTIVATE_PATH, json.dumps(body).encode())
        if status == 200:
            break
        if is_store_conflict(status, answer):
            if attempt < STORE_CONFLICT_ATTEMPTS:
                continue
            raise ConflictNotAbsorbed(
                f"activate: HTTP 409 store_conflict on all {attempt} attempts: {answer[:200]!r}"
            )
        raise ActivationFailed(f"activate: HTTP {status}: {answer[:200]!r}")
    leaf = x509.load_pem_x509_certificate(json.loads(answer)["certificate_chain"][0].encode())
    issued = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if issued != instance.public_der:
        raise ActivationFailed("the issued certificate does not carry the instance's key")
    return attempt - 1


async def run_worker(job: WorkerJob, barrier: Barrier) -> dict[str, Any]:
    """One worker process: set up, wait for the others, run its clients' activations."""
    result = WorkerResult()
    sim = SimulatedPlatform.load(Path(job.platform_key))
    instances = [make_instance() for _ in range(sum(job.quotas))]
    context = coordinator_client_context(x509.load_pem_x509_certificate(job.root_pem.encode()))
    connections = []
    for addr in job.mesh_addrs:
        host, _, port = addr.rpartition(":")
        connections.append(CONNECTIONS[job.http](host, int(port), context))
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
                    # Awaited first: ``x += await ...`` would read x before the await.
                    retried = await activate_once(http, sim, job.measurement, instance)
                    result.conflicts_retried += retried
                except Exception as exc:
                    result.errors += 1
                    if isinstance(exc, ConflictNotAbsorbed):
                        result.conflicts_unabsorbed += 1
                        result.conflicts_retried += STORE_CONFLICT_ATTEMPTS - 1
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
    return asdict(result)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One timed phase: the load spread round robin over ``coordinators`` Coordinators."""

    coordinators: int
    ok: int
    errors: int
    conflicts_retried: int
    conflicts_unabsorbed: int
    seconds: float
    activations_per_s: float
    latency_ms: dict[str, float]
    coordinator_cpu_ms_per_activation: float
    coordinator_cpu_percent: float
    etcd_cpu_ms_per_activation: float | None


@dataclass
class Report:
    command: str
    store: str
    coordinators: int
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
    machine: Machine
    phases: list[Phase] = field(default_factory=list)  # 1 Coordinator, then N (with etcd)
    scaling: float | None = None  # activations/s with N Coordinators / with 1
    coordinator_exit: int | None = None
    bar: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """What the timed phase measured."""

    results: list[WorkerResult]
    seconds: float  # wall clock, first client start to last client finish
    coordinator_cpu_seconds: float  # all Coordinators together
    etcd_cpu_seconds: float | None
    sealed_writes: int | None  # None when not observable


def run_load(
    coordinators: Sequence[CoordinatorProcess],
    etcd: EtcdProcess | None,
    root_pem: str,
    measurement: bytes,
    clients: int,
    activations: int,
    workers: int,
    http: str,
) -> Load:
    """The timed phase; client ``i`` talks to ``coordinators[i % len(coordinators)]``."""
    per_client = split_evenly(activations, clients)
    addrs = [coordinators[i % len(coordinators)].mesh_addr for i in range(clients)]
    jobs: list[WorkerJob] = []
    start = 0
    for count in split_evenly(clients, workers):
        quotas = tuple(per_client[start : start + count])
        jobs.append(
            WorkerJob(
                tuple(addrs[start : start + count]),
                root_pem,
                str(coordinators[0].platform_key),
                measurement,
                quotas,
                http,
            )
        )
        start += count
    # Sealed writes are renames in the data directory: observable with the directory store only.
    counter = None if etcd is not None else open_rename_counter(coordinators[0].data_dir)

    def coordinators_cpu() -> float:
        return sum(c.cpu_seconds() for c in coordinators if c.alive())

    try:
        with WorkerPool(run_worker, jobs) as pool:
            pool.wait_ready()
            cpu_before = coordinators_cpu()
            etcd_before = etcd.cpu_seconds() if etcd is not None else 0.0
            if counter is not None:
                counter.take()  # forget the writes of the set-up
            results = [WorkerResult(**r) for r in pool.results()]
            cpu_after = coordinators_cpu()
            etcd_after = etcd.cpu_seconds() if etcd is not None else 0.0
        writes = None if counter is None else counter.take()
        if counter is not None and counter.overflowed:
            writes = None
    finally:
        if counter is not None:
            counter.close()
    wall = max(r.finished for r in results) - min(r.started for r in results)
    etcd_cpu = None if etcd is None else etcd_after - etcd_before
    return Load(results, wall, cpu_after - cpu_before, etcd_cpu, writes)


def summarise(load: Load, coordinators: int) -> Phase:
    latencies = sorted(t for r in load.results for t in r.latencies)
    ok = len(latencies)
    errors = sum(r.errors for r in load.results)
    done = max(1, ok + errors)
    wall = load.seconds
    return Phase(
        coordinators=coordinators,
        ok=ok,
        errors=errors,
        conflicts_retried=sum(r.conflicts_retried for r in load.results),
        conflicts_unabsorbed=sum(r.conflicts_unabsorbed for r in load.results),
        seconds=wall,
        activations_per_s=ok / wall if wall > 0 else 0.0,
        latency_ms=latency_summary_ms(latencies),
        coordinator_cpu_ms_per_activation=load.coordinator_cpu_seconds / done * 1000,
        coordinator_cpu_percent=load.coordinator_cpu_seconds / wall * 100 if wall > 0 else 0.0,
        etcd_cpu_ms_per_activation=None
        if load.etcd_cpu_seconds is None
        else load.etcd_cpu_seconds / done * 1000,
    )


def benchmark(args: argparse.Namespace, command: str) -> Report:
    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    log(f"floor: ECDSA P-256 sign+verify for {args.floor_seconds:g} s ...")
    floor = sign_verify_per_second(args.floor_seconds)
    loads: list[tuple[int, Load]] = []
    with tempfile.TemporaryDirectory(prefix="geode-bench-") as tmp:
        base = Path(tmp)
        measurement = make_bundle(base / "bundle")
        etcd: EtcdProcess | None = None
        coordinators: list[CoordinatorProcess] = []
        exit_codes: list[int] = []
        try:
            store_args: tuple[str, ...] = ()
            if args.store == "etcd":
                etcd = EtcdProcess(base / "etcd")
                log(f"starting etcd in {etcd.directory} ...")
                etcd.start()
                store_args = ("--store", etcd.url, "--etcd-prefix", ETCD_PREFIX)
            # All Coordinators share base's platform key; each has its data dir, and those after
            # the first their own sealing key (they obtain the cluster key from the first).
            coordinators.append(CoordinatorProcess(base, *store_args, name="1"))
            log(f"starting the Coordinator in {base} (store: {args.store}) ...")
            coordinators[0].start()
            deployment = set_up_deployment(coordinators[0], bench_manifest(measurement))
            counts = [1] if args.coordinators == 1 else [1, args.coordinators]
            for count in counts:
                # Those started now read the store after the manifest and the phases before.
                while len(coordinators) < count:
                    name = str(len(coordinators) + 1)
                    own_key = ("--sealing-key", str(base / "keys" / f"sealing-{name}.key"))
                    extra = CoordinatorProcess(base, *store_args, *own_key, name=name)
                    coordinators.append(extra)
                    extra.start()
                log(
                    f"running {args.activations} activations with {args.clients} clients in "
                    f"{args.workers} worker processes over {count} Coordinator(s) ..."
                )
                load = run_load(
                    coordinators[:count],
                    etcd,
                    deployment.root_pem,
                    measurement,
                    args.clients,
                    args.activations,
                    args.workers,
                    args.http,
                )
                loads.append((count, load))
        except Exception:
            if not args.json:
                for c in coordinators:
                    print(f"{c.log_path} (tail):\n{c.log_tail()}", file=sys.stderr)
                if etcd is not None:
                    print(f"etcd log (tail):\n{etcd.log_tail()}", file=sys.stderr)
            raise
        finally:
            exit_codes = [c.stop() for c in coordinators]
            if etcd is not None:
                etcd.stop()
    phases = [summarise(load, count) for count, load in loads]
    last, load = phases[-1], loads[-1][1]
    client_cpu = sum(r.cpu_seconds for r in load.results)
    wall = last.seconds
    done = max(1, last.ok + last.errors)
    errors = sum(p.errors for p in phases)
    met = last.activations_per_s >= BAR_RATE and last.latency_ms["p99"] < BAR_P99_MS
    samples = [s for _, ld in loads for r in ld.results for s in r.error_samples]
    return Report(
        command=command,
        store=args.store,
        coordinators=args.coordinators,
        clients=args.clients,
        workers=args.workers,
        http=args.http,
        activations=args.activations,
        precomputed="P-256 keys and CSRs, generated before the timed phase; "
        "connections opened before it; evidence quoted per activation",
        ok=last.ok,
        errors=errors,
        error_samples=samples[:ERROR_SAMPLES],
        seconds=wall,
        activations_per_s=last.activations_per_s,
        latency_ms=last.latency_ms,
        sign_verify_per_s=floor,
        ratio=last.activations_per_s / floor,
        coordinator_cpu_ms_per_activation=last.coordinator_cpu_ms_per_activation,
        coordinator_cpu_percent=last.coordinator_cpu_percent,
        client_cpu_ms_per_activation=client_cpu / done * 1000,
        client_cpu_percent=client_cpu / wall * 100 if wall > 0 else 0.0,
        sealed_writes=load.sealed_writes,
        machine=Machine.describe(),
        phases=phases,
        scaling=None
        if len(phases) < 2 or phases[0].activations_per_s == 0
        else phases[-1].activations_per_s / phases[0].activations_per_s,
        coordinator_exit=next((code for code in exit_codes if code != 0), 0),
        bar={"activations_per_s": BAR_RATE, "p99_ms": BAR_P99_MS, "met": met and errors == 0},
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
        f"  machine        {machine.nproc} CPUs, {machine.cpu}, Python {machine.python}, "
        f"cryptography {machine.cryptography}",
        f"  clients        {report.clients} concurrent, one keep-alive TLS connection each, "
        f"in {report.workers} worker processes (asyncio + uvloop, {report.http} HTTP/1.1)",
        f"  store          {report.store}, {report.coordinators} Coordinator(s), each with its "
        "own sealing key, sharing the platform key; clients spread over them round robin",
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
    for phase in report.phases:
        etcd_cpu = (
            ""
            if phase.etcd_cpu_ms_per_activation is None
            else f", etcd {phase.etcd_cpu_ms_per_activation:.2f} ms CPU/act"
        )
        lines.append(
            f"  {phase.coordinators} Coordinator(s)  {phase.activations_per_s:.1f} activations/s "
            f"({phase.ok} ok, {phase.errors} errors, in {phase.seconds:.2f} s), "
            f"p50 {phase.latency_ms['p50']:.1f} ms, p99 {phase.latency_ms['p99']:.1f} ms, "
            f"store_conflict retried {phase.conflicts_retried}, "
            f"not absorbed {phase.conflicts_unabsorbed}, "
            f"Coordinators {phase.coordinator_cpu_ms_per_activation:.2f} ms CPU/act "
            f"({phase.coordinator_cpu_percent:.0f}% of one core){etcd_cpu}"
        )
    if report.scaling is not None:
        lines.append(
            f"  scaling        {report.coordinators} Coordinators / 1 Coordinator: "
            f"{report.scaling:.2f}x activations/s"
        )
    if report.coordinator_exit not in (0, None):
        lines.append(f"  WARNING        the Coordinator exited with {report.coordinator_exit}")
    for sample in report.error_samples:
        lines.append(f"  error          {sample}")
    print("\n".join(lines))


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
    parser.add_argument(
        "--store",
        choices=("dir", "etcd"),
        default="dir",
        help="where the Coordinators keep the sealed state: dir (the default, one Coordinator) "
        "or etcd (one etcd started for the run)",
    )
    parser.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="with --store etcd: N > 1 runs the load once on 1 Coordinator, then spread over N "
        "Coordinators on the same etcd, and reports both (1)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.activations < args.clients or args.workers < 1:
        parser.error("need --clients >= 1, --activations >= --clients and --workers >= 1")
    if args.coordinators < 1 or (args.coordinators > 1 and args.store != "etcd"):
        parser.error("need --coordinators >= 1, and --store etcd for more than one")
    args.workers = min(args.workers, args.clients)
    exit_on_sigterm()
    report = benchmark(args, command_line("benchmarks/activation.py", argv))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    complete = all(p.ok == report.activations for p in report.phases)
    return 1 if report.errors or not complete else 0


if __name__ == "__main__":
    sys.exit(main())
