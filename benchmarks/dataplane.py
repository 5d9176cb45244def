"""Data-plane cost of the mesh: one small HTTP handler reached five ways in the same run.

What is measured
----------------
The app is a Starlette handler that answers ``GET /ping`` with a 100-byte JSON body (with
``--body N``, ``POST /ping`` with an N-byte body, which it reads in full). The same
load generator reaches it through each path, one after the other:

- ``a`` plaintext: the app on uvicorn (httptools, uvloop) on 127.0.0.1, no TLS. The baseline.
- ``b`` library mTLS: the same app under ``serve_asgi``: mutual TLS, ``PolicyMiddleware`` with
  a strict rule that allows the client's SPIFFE id ``GET ^/ping$``; the client presents its mesh
  certificate and checks the server's SPIFFE id in the handshake (``MeshSSLContext``).
- ``c`` transparent proxy pair: client plaintext → Geode egress (a ``TransparentProxy`` for the
  client with an ``EgressRoute``) → mTLS → Geode ingress (a ``TransparentProxy`` for the server
  with an http ``IngressRoute`` and the same rule) → the plaintext app of ``a``. The shape of a
  classic sidecar pair.
- ``c1`` ingress only: the client speaks mTLS, as in ``b``, straight to that ingress.
- ``d`` nginx mTLS sidecar pair, the classic baseline: client plaintext → nginx "client
  sidecar" (``proxy_pass https``, client certificate, ``proxy_ssl_verify`` against the mesh CA,
  upstream keep-alive) → nginx "server sidecar" (``ssl_verify_client on``, a per-request check
  of the client's subject, upstream keep-alive) → the app of ``a``. One worker each, run in the
  foreground from a config in the run's temporary directory. Skipped, not failed, when no
  ``nginx`` binary is found.

Every server and proxy is a process of its own (``_mesh_paths``): the app and ``serve_asgi`` in
uvicorn, each ``TransparentProxy`` on uvloop as ``geode run`` runs it, nginx under its master.
Access logs are off everywhere. The PKI is thrown away after the run: a root, a mesh
intermediate, and two P-256 leaves (``server``, ``client``) with SPIFFE ids
``spiffe://bench.local/service/<name>``, DNS ``localhost`` and IP 127.0.0.1. Geode trusts the
mesh CA alone (as ``geode run`` lays it out); nginx trusts the mesh CA with the root, since
OpenSSL in nginx wants a self-signed anchor. One more path, ``a-tls``, is a diagnostic: uvicorn
with the server's mesh TLS context and nothing else of Geode's, reached as ``b`` is; it separates
what TLS costs from what ``serve_asgi`` adds.

The load generator is the same code for every path: ``--workers`` processes (asyncio + uvloop,
one by default: it needs well under a core here, and a second process would only be one more
runnable process on two cores) with ``--connections`` keep-alive connections in all
(``_harness.HttpClient``: plaintext, or TLS with the client's mesh certificate and a check of
the server's SPIFFE id for ``b`` and ``c1``), each sending one request after the other.
Connections are opened and used once before the timed phase. After ``--warmup`` seconds under
load, every request sent and answered within the next ``--duration`` seconds is counted and
timed; every answer must be 200 with the app's body, or it is an error. Then one connection alone
sends requests one after the other for ``--single-duration`` seconds: the latency of a path
without queueing.

Reported per path: requests/s and its ratio to ``a``; p50 and p99 latency under load and their
excess over ``a``; p50 and p99 with one connection and their excess over ``a``; CPU time per
request of each server-side process and of the load generator; errors. With closed-loop
clients, latency under load is connections ÷ throughput, so the single-connection figures are
the ones that show what a hop adds by itself.

Run: ``.venv/bin/python benchmarks/dataplane.py [--connections 32] [--duration 5] [--body 0]
[--app-reads-bodies] [--paths a,a-tls,b,c,c1,d] [--json]`` (about a minute with the defaults).
The exit status is non-zero if a path failed (a skipped ``d`` is no failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from _harness import (
    HarnessError,
    HttpClient,
    Machine,
    WorkerPool,
    command_line,
    exit_on_sigterm,
    latency_summary_ms,
    split_evenly,
)
from _mesh_paths import (
    BODY,
    HOST,
    PATH_NAMES,
    PING,
    SERVER_ID,
    Deployment,
    Target,
    deploy,
    find_nginx,
    make_pki,
)

import geode

BAR_LIBRARY_RATIO = 0.8  # b: at least this share of a's requests/s
BAR_PROXY_ADDED_P50_MS = 1.0  # c: adds less than this at p50
ERROR_SAMPLES = 5
SETUP_TIMEOUT = 30.0  # connecting and the first request on every connection
SETTLE_SECONDS = 0.3  # between the loaded phase and the single connection's


# -- the load generator (worker processes) --------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    target: Target
    connections: int
    warmup: float
    duration: float
    single: float  # seconds of the single-connection phase; 0: this worker has none
    body: int = 0  # bytes of a POST body; 0: GET


@dataclass
class WorkerResult:
    latencies: list[float] = field(default_factory=list)  # seconds, loaded phase
    single_latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # this process, over the loaded phase's window
    tls: str | None = None  # version and cipher of the first connection, for mTLS targets


class RequestFailed(Exception):
    pass


def request_bytes(port: int, body: int = 0) -> bytes:
    """``GET /ping``; with a ``body`` of that many bytes, ``POST /ping`` with it."""
    if not body:
        head = f"GET {PING} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: geode-bench\r\n\r\n"
        return head.encode()
    head = (
        f"POST {PING} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: geode-bench\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n"
    )
    return head.encode() + b"x" * body


async def run_worker(job: WorkerJob, barrier: Barrier) -> dict[str, Any]:
    """One load-generator process: connect, wait for the others, load, then (maybe) one alone."""
    result = WorkerResult()
    target = job.target
    context = None
    if target.tls is not None:
        context = target.tls.credentials().client_ssl_context([SERVER_ID])
    message = request_bytes(target.port, job.body)
    clients = await asyncio.wait_for(
        asyncio.gather(
            *(HttpClient.open(HOST, target.port, context) for _ in range(job.connections))
        ),
        SETUP_TIMEOUT,
    )

    async def once(client: HttpClient) -> None:
        status, body = await client.request(message)
        if status != 200 or body != BODY:
            raise RequestFailed(f"HTTP {status}: {body[:200]!r}")

    def failed(exc: BaseException) -> None:
        result.errors += 1
        if len(result.error_samples) < ERROR_SAMPLES:
            result.error_samples.append(f"{type(exc).__name__}: {exc}")

    try:
        if clients and clients[0].transport is not None:
            ssl_object = clients[0].transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                cipher = ssl_object.cipher()
                result.tls = f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
        # Untimed: every connection is used once (the proxies open their upstream connections).
        await asyncio.wait_for(asyncio.gather(*(once(c) for c in clients)), SETUP_TIMEOUT)
        barrier.wait()  # every worker is ready: the load starts now
        start = time.monotonic()
        measure_from, measure_to = start + job.warmup, start + job.warmup + job.duration

        async def load(client: HttpClient) -> None:
            latencies = result.latencies
            while True:
                sent = time.monotonic()
                if sent >= measure_to:
                    return
                try:
                    await once(client)
                except (OSError, HarnessError, RequestFailed) as exc:
                    failed(exc)  # in the warm-up too: a path that fails at all has failed
                    if client.transport is None or client.transport.is_closing():
                        return  # this connection is gone; the others carry on
                    continue
                done = time.monotonic()
                if measure_from <= sent and done <= measure_to:
                    latencies.append(done - sent)

        async def meter() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            cpu = time.process_time()
            await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
            result.cpu_seconds = time.process_time() - cpu

        timeout = job.warmup + job.duration + 60
        await asyncio.wait_for(asyncio.gather(meter(), *(load(c) for c in clients)), timeout)

        if job.single > 0 and clients:
            await asyncio.sleep(SETTLE_SECONDS)  # the other workers' last requests drain
            single_from = time.monotonic() + min(0.5, job.single / 4)
            single_to = single_from + job.single

            async def alone(client: HttpClient) -> None:
                while (sent := time.monotonic()) < single_to:
                    await once(client)
                    if sent >= single_from:
                        result.single_latencies.append(time.monotonic() - sent)

            try:
                await asyncio.wait_for(alone(clients[0]), job.single + 60)
            except (OSError, HarnessError, RequestFailed, TimeoutError) as exc:
                failed(exc)
    finally:
        for client in clients:
            client.close()
    return asdict(result)


# -- one path -----------------------------------------------------------------------------------


@dataclass
class PathResult:
    path: str
    name: str
    status: str  # "ok", "failed" or "skipped"
    note: str = ""
    requests: int = 0
    requests_per_s: float = 0.0
    ratio_to_a: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    single_latency_ms: dict[str, float] = field(default_factory=dict)
    single_added_p50_ms: float | None = None
    single_added_p99_ms: float | None = None
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)  # process -> µs
    server_cpu_us_per_request: float = 0.0  # every server-side process of the path together
    client_cpu_us_per_request: float = 0.0
    client_cpu_percent: float = 0.0
    tls: str | None = None
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def measure_path(path: str, deployment: Deployment, args: argparse.Namespace) -> PathResult:
    target = deployment.targets[path]
    components = [deployment.servers[name] for name in deployment.components[path]]
    workers = min(args.workers, args.connections)
    jobs = [
        WorkerJob(
            target,
            count,
            args.warmup,
            args.duration,
            args.single_duration if i == 0 else 0,
            args.body,
        )
        for i, count in enumerate(split_evenly(args.connections, workers))
    ]
    with WorkerPool(run_worker, jobs) as pool:
        pool.wait_ready()
        released = time.monotonic()
        time.sleep(args.warmup)
        cpu_before = {s.name: s.cpu_seconds() for s in components}
        time.sleep(max(0.0, released + args.warmup + args.duration - time.monotonic()))
        cpu_after = {s.name: s.cpu_seconds() for s in components}
        results = [WorkerResult(**r) for r in pool.results()]
    latencies = sorted(t for r in results for t in r.latencies)
    single = sorted(t for r in results for t in r.single_latencies)
    ok = len(latencies)
    errors = sum(r.errors for r in results)
    cpu = {name: (cpu_after[name] - cpu_before[name]) / max(1, ok) * 1e6 for name in cpu_before}
    client_cpu = sum(r.cpu_seconds for r in results)
    dead = [s.name for s in components if not s.alive()]
    return PathResult(
        path=path,
        name=PATH_NAMES[path],
        status="failed" if errors or not ok or dead else "ok",
        note=f"exited during the run: {', '.join(dead)}" if dead else "",
        requests=ok,
        requests_per_s=ok / args.duration,
        latency_ms=latency_summary_ms(latencies),
        single_latency_ms=latency_summary_ms(single) if single else {},
        cpu_us_per_request=cpu,
        server_cpu_us_per_request=sum(cpu.values()),
        client_cpu_us_per_request=client_cpu / max(1, ok) * 1e6,
        client_cpu_percent=client_cpu / args.duration * 100,
        tls=next((r.tls for r in results if r.tls), None),
        errors=errors,
        error_samples=[s for r in results for s in r.error_samples][:ERROR_SAMPLES],
    )


def compare_to_baseline(results: dict[str, PathResult]) -> None:
    base = results.get("a")
    if base is None or base.status != "ok":
        return
    for result in results.values():
        if result.status != "ok":
            continue
        result.ratio_to_a = result.requests_per_s / base.requests_per_s
        result.added_p50_ms = result.latency_ms["p50"] - base.latency_ms["p50"]
        result.added_p99_ms = result.latency_ms["p99"] - base.latency_ms["p99"]
        if result.single_latency_ms and base.single_latency_ms:
            result.single_added_p50_ms = (
                result.single_latency_ms["p50"] - base.single_latency_ms["p50"]
            )
            result.single_added_p99_ms = (
                result.single_latency_ms["p99"] - base.single_latency_ms["p99"]
            )


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Bar:
    what: str
    met: bool | None  # None: not measured in this run; with rounds, met in more than half
    rounds_met: int = 0
    rounds: int = 0  # rounds in which it was measured


def judge_rounds(rounds: list[dict[str, PathResult]]) -> list[Bar]:
    """Each bar judged within each round (the paths of one round ran minutes apart at most);
    met overall when met in more than half of the rounds where it was measured."""
    per_round = [judge(results) for results in rounds]
    bars = []
    for i, first in enumerate(per_round[0]):
        verdicts = [bars_of[i].met for bars_of in per_round if bars_of[i].met is not None]
        met = sum(1 for v in verdicts if v)
        bars.append(
            Bar(first.what, None if not verdicts else met * 2 > len(verdicts), met, len(verdicts))
        )
    return bars


def representative(rounds: list[dict[str, PathResult]], path: str) -> PathResult:
    """The round of ``path`` with the median requests/s (the lower one of two), whole: its
    ratios and added latencies are against (a) of the same round."""
    ok = sorted(
        (r[path] for r in rounds if path in r and r[path].status == "ok"),
        key=lambda result: result.requests_per_s,
    )
    if not ok:
        return next(r[path] for r in rounds if path in r and r[path].status != "ok")
    return ok[(len(ok) - 1) // 2]


@dataclass
class Report:
    command: str
    commit: str
    connections: int
    workers: int
    warmup_s: float
    duration_s: float
    single_duration_s: float
    body_bytes: int
    nginx: str | None
    paths: list[PathResult]  # with rounds: each path's median round
    bars: list[Bar]
    machine: Machine
    rounds: list[list[PathResult]] = field(default_factory=list)  # every round, in order


def judge(results: dict[str, PathResult]) -> list[Bar]:
    def ok(path: str) -> PathResult | None:
        result = results.get(path)
        return result if result is not None and result.status == "ok" else None

    b, c, d = ok("b"), ok("c"), ok("d")
    bars = [
        Bar(
            f"(b) >= {BAR_LIBRARY_RATIO:g}x plaintext requests/s",
            None if b is None or b.ratio_to_a is None else b.ratio_to_a >= BAR_LIBRARY_RATIO,
        ),
        Bar(
            f"(c) adds < {BAR_PROXY_ADDED_P50_MS:g} ms at p50 under load",
            None
            if c is None or c.added_p50_ms is None
            else c.added_p50_ms < BAR_PROXY_ADDED_P50_MS,
        ),
        Bar(
            f"(c) adds < {BAR_PROXY_ADDED_P50_MS:g} ms at p50 with one connection, without "
            "queueing (for context)",
            None
            if c is None or c.single_added_p50_ms is None
            else c.single_added_p50_ms < BAR_PROXY_ADDED_P50_MS,
        ),
    ]
    for name, result in (("b", b), ("c", c)):
        bars.append(
            Bar(
                f"({name}) more requests/s than (d)",
                None if result is None or d is None else result.requests_per_s > d.requests_per_s,
            )
        )
    return bars


def git_commit() -> str:
    """The commit of ``src/`` that was measured, marked ``+dirty`` if it has local changes, or
    where ``geode`` came from if not from this checkout (``PYTHONPATH`` put another first)."""
    checkout = Path(__file__).resolve().parent.parent
    imported = Path(geode.__file__).resolve().parent
    if imported != checkout / "src" / "geode":
        return f"geode imported from {imported.parent}, not from this checkout"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=checkout, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def nginx_version(binary: str | None) -> str | None:
    if binary is None:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: nginx/")


def benchmark(args: argparse.Namespace, command: str) -> Report:
    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    commit = git_commit()
    rounds: list[dict[str, PathResult]] = []
    with tempfile.TemporaryDirectory(prefix="geode-dataplane-") as tmp:
        base = Path(tmp)
        pki = make_pki(base / "pki")
        log(f"starting the servers for paths {','.join(args.paths)} in {base} ...")
        deployment = Deployment()
        try:
            deployment = deploy(args.paths, pki, base, app_reads_bodies=args.app_reads_bodies)
            for number in range(1, args.rounds + 1):
                # Odd rounds in the order given, even ones reversed: drift hits every path.
                order = args.paths if number % 2 else list(reversed(args.paths))
                results: dict[str, PathResult] = {}
                rounds.append(results)
                for path in order:
                    results[path] = measure_one(path, deployment, args, number, log)
                compare_to_baseline(results)
        except HarnessError as exc:
            log(str(exc))
            if not rounds:
                rounds.append({})
            for path in args.paths:
                rounds[-1].setdefault(path, PathResult(path, PATH_NAMES[path], "failed", str(exc)))
        finally:
            deployment.stop()
    if (after := git_commit()) != commit:
        commit += f" (then {after}: src/ changed during the run)"
    return Report(
        command=command,
        commit=commit,
        connections=args.connections,
        workers=min(args.workers, args.connections),
        warmup_s=args.warmup,
        duration_s=args.duration,
        single_duration_s=args.single_duration,
        body_bytes=len(BODY),
        nginx=nginx_version(find_nginx()) if "d" in args.paths else None,
        paths=[representative(rounds, path) for path in args.paths],
        bars=judge_rounds(rounds),
        machine=Machine.describe(),
        rounds=[[r[path] for path in args.paths if path in r] for r in rounds]
        if args.rounds > 1
        else [],
    )


def measure_one(
    path: str, deployment: Deployment, args: argparse.Namespace, number: int, log: Any
) -> PathResult:
    if path in deployment.skipped:
        log(f"({path}) skipped: {deployment.skipped[path]}")
        return PathResult(path, PATH_NAMES[path], "skipped", deployment.skipped[path])
    round_note = f"round {number}/{args.rounds}: " if args.rounds > 1 else ""
    log(
        f"{round_note}({path}) {PATH_NAMES[path]}: {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s, then one connection "
        f"for {args.single_duration:g} s ..."
    )
    try:
        result = measure_path(path, deployment, args)
    except HarnessError as exc:
        result = PathResult(path, PATH_NAMES[path], "failed", str(exc))
    if result.status == "failed":
        for name in deployment.components[path]:
            log(deployment.servers[name].log_tail())
    return result


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def print_report(report: Report) -> None:
    machine = report.machine
    print("Geode data-plane benchmark")
    print(f"  command   {report.command}")
    print(f"  commit    {report.commit}")
    print(
        f"  machine   {machine.nproc} CPUs, {machine.cpu}, Python {machine.python}, "
        f"cryptography {machine.cryptography}, nginx {report.nginx or '-'}; {machine.date}"
    )
    print(
        f"  load      {report.connections} keep-alive connections in {report.workers} "
        f"process(es), closed loop, GET {PING} -> {report.body_bytes}-byte JSON; "
        f"{report.warmup_s:g} s warm-up, {report.duration_s:g} s measured; then 1 connection "
        f"for {report.single_duration_s:g} s"
    )
    print()
    header = (
        "| path | requests/s | x (a) | p50 ms | p99 ms | +p50 ms | +p99 ms "
        "| 1-conn p50 ms | 1-conn p99 ms | 1-conn +p50 ms | 1-conn +p99 ms "
        "| server CPU µs/req | client CPU µs/req | errors |"
    )
    print(header)
    print("| --- |" + " ---: |" * (header.count("|") - 2))
    for r in report.paths:
        label = f"({r.path}) {r.name}"
        if r.status != "ok":
            why = r.note or (r.error_samples[0] if r.error_samples else "")
            print(f"| {label} | {r.status}: {why} |" + " |" * 12)
            continue
        lat, one = r.latency_ms, r.single_latency_ms
        print(
            f"| {label} | {r.requests_per_s:.0f} | "
            f"{'-' if r.ratio_to_a is None else f'{r.ratio_to_a:.2f}'} | "
            f"{lat['p50']:.2f} | {lat['p99']:.2f} | {_ms(r.added_p50_ms, True)} | "
            f"{_ms(r.added_p99_ms, True)} | {_ms(one.get('p50'))} | {_ms(one.get('p99'))} | "
            f"{_ms(r.single_added_p50_ms, True)} | {_ms(r.single_added_p99_ms, True)} | "
            f"{r.server_cpu_us_per_request:.0f} | {r.client_cpu_us_per_request:.0f} | "
            f"{r.errors} |"
        )
    print()
    for r in report.paths:
        if r.status == "ok":
            parts = ", ".join(f"{name} {us:.0f}" for name, us in r.cpu_us_per_request.items())
            tls = f"; client TLS {r.tls}" if r.tls else ""
            print(
                f"  ({r.path}) CPU µs/request: {parts}; load generator "
                f"{r.client_cpu_us_per_request:.0f} ({r.client_cpu_percent:.0f}% of a core){tls}"
            )
        for sample in r.error_samples:
            print(f"  ({r.path}) error: {sample}")
        if r.status == "skipped":
            print(f"  ({r.path}) skipped: {r.note}")
        elif r.status == "failed":
            print(f"  ({r.path}) FAILED: {r.note}")
    print()
    if report.rounds:
        print(
            f"  {len(report.rounds)} rounds; the table shows each path's median round. Per round:"
        )
        for number, paths in enumerate(report.rounds, start=1):
            cells = ", ".join(
                f"({r.path}) {r.requests_per_s:.0f}/s {_ms(r.added_p50_ms, True)} ms"
                if r.status == "ok"
                else f"({r.path}) {r.status}"
                for r in paths
            )
            print(f"    {number}: {cells}")
        print()
    for bar in report.bars:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[bar.met]
        rounds = f" ({bar.rounds_met} of {bar.rounds} rounds)" if bar.rounds > 1 else ""
        print(f"  bar  {bar.what}: {verdict}{rounds}")


def parse_paths(value: str) -> list[str]:
    paths = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATH_NAMES]
    if unknown or not paths:
        raise argparse.ArgumentTypeError(
            f"unknown path {unknown[0] if unknown else '(none)'}: choose from "
            + ",".join(PATH_NAMES)
        )
    return list(dict.fromkeys(paths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections under load (32)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="measured seconds under load, per path (5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds under load before measuring (1)"
    )
    parser.add_argument(
        "--single-duration",
        type=float,
        default=2.0,
        help="seconds of one connection alone after the load, per path (2; 0: skip)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="load-generator processes (1: it needs well under a core)",
    )
    parser.add_argument(
        "--paths",
        type=parse_paths,
        default=list(PATH_NAMES),
        help=f"paths to measure, in order ({','.join(PATH_NAMES)}: all); a-tls is a "
        "diagnostic, TLS alone on uvicorn",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every path this many times, alternating the order; bars are judged "
        "within each round (1)",
    )
    parser.add_argument(
        "--body",
        type=int,
        default=0,
        help="send POST /ping with a body of this many bytes instead of GET /ping (0)",
    )
    parser.add_argument(
        "--app-reads-bodies",
        action="store_true",
        help="the ingress's route says the app reads every body (IngressRoute.app_reads_bodies)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0 or args.workers < 1:
        parser.error("need --connections >= 1, --duration > 0, --warmup >= 0, --workers >= 1")
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    if args.single_duration < 0:
        parser.error("need --single-duration >= 0")
    exit_on_sigterm()
    report = benchmark(args, command_line("benchmarks/dataplane.py", argv))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    every = [p for paths in report.rounds or [report.paths] for p in paths]
    return 1 if any(p.status == "failed" for p in every) else 0


if __name__ == "__main__":
    sys.exit(main())
