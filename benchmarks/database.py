"""The confidential database against its plain counterparts, in the same run.

What is measured
----------------
1. **Server mode.** sysbench ``oltp_read_write`` (Debian's ``sysbench``) against two MariaDB
   servers of the same installation, started side by side on loopback:

   - *plain*: ``mariadbd`` with the options every Geode database shares (``common_options``:
     binlog, ``skip_name_resolve``, character set, ...) plus ``--option`` tuning, no
     encryption, no TLS, a password user;
   - *geode*: the real ``python -m geode db serve`` with the same shared options and the same
     tuning, plus everything Geode adds: InnoDB tables, redo log, temporary tables, temporary
     files and binlog encrypted with ``file_key_management`` under a random 256-bit key,
     ``require_secure_transport``, and a user bound to a client certificate (``REQUIRE
     SUBJECT ... AND ISSUER ...``). sysbench connects with ``--mysql-ssl=on`` and that
     certificate (TLS 1.3).

   - *tls* (with ``--tls-only``, a diagnostic): *plain* plus the database's certificate for
     TLS and nothing else of Geode's (no encryption at rest, a password user); sysbench
     connects over TLS as to *geode*. It parts what TLS costs from what the rest costs.

   All get the same ``sysbench prepare`` (``--tables``, ``--table-size``) and an unmeasured
   run of ``--warmup`` seconds each (buffer pools fill; a new encrypted datadir finishes
   encrypting its system tablespace in the background), then ``--rounds`` alternating runs
   of ``--time`` seconds with ``--threads`` threads (in the order plain, geode[, tls] in odd
   rounds and the reverse in even ones, so drift hits all). The machine's CPU is shared by
   sysbench and the server, as in a real deployment with the client on the same host.

2. **Embedded mode.** ``connect_embedded`` (SQLCipher 4, raw key) against the standard
   ``sqlite3`` module on the same fixed workload, alternating, ``--rounds`` times: ``--rows``
   inserts in transactions of 500, as many point selects by random id, one range select of
   100 rows per 100 rows, and one update per 5 rows in transactions of 100. Both files use
   ``journal_mode=WAL``, ``synchronous=NORMAL``, 4 KiB pages and the same page cache
   (``--cache-mb``, default 8 MiB: the default of the SQLCipher build; the standard ``sqlite3``
   build's default is 2 MiB). SQLCipher pays for each page it reads from or writes to the file
   (AES-256 and HMAC-SHA256), so the ratio depends on how much of the ~8 MiB file the cache
   holds: measure both.

Reported: transactions/s and queries/s per run and their medians, the p95 latency, and the ratio
geode/plain; the CPU time per transaction of the server (its process tree) and of sysbench,
which does not depend on what else the machine runs, and its ratio plain/geode (what the
throughput ratio would be with the CPU saturated by the benchmark alone); operations/s per
engine and the ratio sqlcipher/sqlite3. The bars (issue 4):
geode ≥ 0.85x plain; SQLCipher ≥ 0.8x sqlite3.

Run: ``.venv/bin/python benchmarks/database.py [--time 30 --rounds 3 --warmup 20] [--tls-only]
[--json]``
(needs ``mariadb-server`` and ``sysbench``: ``apt-get install mariadb-server sysbench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    Machine,
    command_line,
    exit_on_sigterm,
    free_port,
    process_tree_cpu_seconds,
    wait_for_port,
)
from cryptography import x509
from cryptography.x509.oid import NameOID

import geode
from geode.db import connect_embedded

# The benchmark reuses Geode's own option set so that "plain" differs only by what Geode adds.
from geode.db._config import RuntimeFiles, common_options
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)

ROOT_ISSUER = "/O=Geode/CN=Geode Root CA"
GEODE_INIT_SQL = f"""CREATE DATABASE sbtest;
CREATE USER 'sbtest'@'%' REQUIRE SUBJECT '/CN=sysbench' AND ISSUER '{ROOT_ISSUER}';
GRANT ALL ON sbtest.* TO 'sbtest'@'%';
"""
PLAIN_INIT_SQL = """CREATE DATABASE sbtest;
CREATE USER 'sbtest'@'%' IDENTIFIED BY 'sbtest';
GRANT ALL ON sbtest.* TO 'sbtest'@'%';
"""
BAR_SERVER = 0.85
BAR_EMBEDDED = 0.8


def find_program(*names: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    for name in names:
        if found := shutil.which(name, path=search):
            return found
    raise SystemExit(f"{names[0]} not found: apt-get install mariadb-server sysbench")


# -- the two servers ----------------------------------------------------------------------------


class Server:
    """A running MariaDB on 127.0.0.1:``port`` and how sysbench reaches it."""

    def __init__(self, name: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.port = port
        self.process = process
        self.log = log
        self.sysbench_args: list[str] = []
        self.sysbench_cwd: Path | None = None
        self.files: RuntimeFiles | None = None  # the plain server's option file and socket

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.files is not None:
            self.files.remove()


def start_plain(
    base: Path, tuning: Sequence[tuple[str, str]], tls: Pki | None = None, name: str = "plain"
) -> Server:
    """Plain MariaDB; with ``tls``, the diagnostic "tls": the same server with the database's
    certificate for TLS and nothing else of Geode's (no encryption at rest, a password user)."""
    datadir, port = base / f"{name}-data", free_port()
    files = RuntimeFiles.create()
    options = [*common_options(datadir, files, "127.0.0.1", port), *tuning]
    if tls is not None:
        options += [
            ("ssl_cert", str(tls.directory / "server.pem")),
            ("ssl_key", str(tls.directory / "server.key")),
            ("ssl_ca", str(tls.directory / "root.pem")),
            ("tls_version", "TLSv1.2,TLSv1.3"),
        ]
    files.write_options(options)
    install = subprocess.run(
        [
            find_program("mariadb-install-db", "mysql_install_db"),
            f"--defaults-file={files.option_file}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        raise SystemExit(f"mariadb-install-db failed:\n{install.stdout}{install.stderr}")
    log = base / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [find_program("mariadbd", "mysqld"), f"--defaults-file={files.option_file}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(name, port, process, log)
    server.files = files
    wait_for_port(port, lambda: process.poll() is None, f"{name} mariadbd", timeout=120)
    subprocess.run(
        [find_program("mariadb", "mysql"), "--no-defaults", f"--socket={files.socket}", "-uroot"],
        input=PLAIN_INIT_SQL,
        text=True,
        check=True,
    )
    server.sysbench_args = ["--mysql-user=sbtest", "--mysql-password=sbtest"]
    if tls is not None:
        server.sysbench_args.append("--mysql-ssl=on")
        server.sysbench_cwd = tls.directory
    return server


@dataclass
class Pki:
    directory: Path
    env: dict[str, str]


def make_pki(directory: Path) -> Pki:
    """A deployment's root and mesh CA, the database's mesh certificate, and sysbench's client
    certificate (a root-issued certificate secret with CN=sysbench), as files."""
    directory.mkdir(parents=True)
    root = CertificateAuthority.create_root()
    mesh = root.create_intermediate("Geode Mesh CA")
    server_key = generate_private_key()
    leaf = mesh.issue(
        LeafParams(
            server_key.public_key(),
            str(uuid.uuid4()),
            spiffe_id=SpiffeId.parse("spiffe://bench.geode.local/service/db"),
            dns_names=["localhost"],
        )
    )
    client_key = generate_private_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sysbench")])
    client = root.issue(LeafParams(client_key.public_key(), "sysbench", subject=subject))
    files = {
        "server.pem": certificate_pem(leaf) + certificate_pem(mesh.certificate),
        "server.key": private_key_pem(server_key).decode(),
        "mesh.pem": certificate_pem(mesh.certificate),
        "root.pem": certificate_pem(root.certificate),
        # sysbench 1.0 reads its TLS files from these names in its working directory.
        "client-cert.pem": certificate_pem(client),
        "client-key.pem": private_key_pem(client_key).decode(),
        "cacert.pem": certificate_pem(root.certificate),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    secrets = directory / "secrets"
    secrets.mkdir()
    (secrets / "db.key").write_bytes(os.urandom(32))
    (secrets / "init.sql").write_text(GEODE_INIT_SQL)
    env = {
        "GEODE_CERT_FILE": str(directory / "server.pem"),
        "GEODE_KEY_FILE": str(directory / "server.key"),
        "GEODE_CA_FILE": str(directory / "mesh.pem"),
        "GEODE_ROOT_CA_FILE": str(directory / "root.pem"),
        "GEODE_SPIFFE_ID": "spiffe://bench.geode.local/service/db",
        "GEODE_SECRETS_DIR": str(secrets),
    }
    return Pki(directory, env)


def start_geode(base: Path, tuning: Sequence[tuple[str, str]], pki: Pki) -> Server:
    """The real ``geode db serve``, with the environment ``geode run`` would give it."""
    port = free_port()
    options = [arg for name, value in tuning for arg in ("--option", f"{name}={value}")]
    log = base / "geode.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "geode", "db", "serve",
                "--datadir", str(base / "geode-data"), "--listen", f"127.0.0.1:{port}", *options,
            ],
            env={**os.environ, **pki.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server("geode", port, process, log)
    wait_for_port(port, lambda: process.poll() is None, "geode db serve", timeout=120)
    server.sysbench_args = ["--mysql-user=sbtest", "--mysql-ssl=on"]
    server.sysbench_cwd = pki.directory
    return server


# -- sysbench -----------------------------------------------------------------------------------


@dataclass
class SysbenchRun:
    server: str
    round: int
    transactions: int
    tps: float
    qps: float
    p95_ms: float
    errors: int
    server_cpu_ms: float = 0.0  # per transaction: the server's process tree
    client_cpu_ms: float = 0.0  # per transaction: sysbench


def sysbench(server: Server, command: str, args: argparse.Namespace) -> str:
    argv = [
        find_program("sysbench"), "oltp_read_write", "--db-driver=mysql",
        "--mysql-host=127.0.0.1", f"--mysql-port={server.port}", "--mysql-db=sbtest",
        *server.sysbench_args, f"--tables={args.tables}", f"--table-size={args.table_size}",
        f"--threads={args.threads}", f"--time={args.time}", "--report-interval=0",
        "--rand-seed=42", command,
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=server.sysbench_cwd, capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"sysbench {command} on {server.name} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def parse_sysbench(output: str, server: str, round_: int) -> SysbenchRun:
    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        if not match:
            raise SystemExit(f"unexpected sysbench output:\n{output}")
        return float(match.group(1))

    return SysbenchRun(
        server=server,
        round=round_,
        transactions=int(number(r"transactions:\s+(\d+)")),
        tps=number(r"transactions:\s+\d+\s+\(([\d.]+) per sec"),
        qps=number(r"queries:\s+\d+\s+\(([\d.]+) per sec"),
        p95_ms=number(r"95th percentile:\s+([\d.]+)"),
        errors=int(number(r"ignored errors:\s+(\d+)")),
    )


def tls_version(server: Server) -> str:
    """What sysbench's connections negotiate (read from a connection made like sysbench's)."""
    if server.sysbench_cwd is None:
        return "none"
    done = subprocess.run(
        [
            find_program("mariadb", "mysql"), "--no-defaults", "-h127.0.0.1",
            f"-P{server.port}", "-usbtest", "--ssl-cert=client-cert.pem",
            "--ssl-key=client-key.pem", "--ssl-ca=cacert.pem", "-N", "-e",
            "SHOW STATUS LIKE 'Ssl_version'",
        ],
        cwd=server.sysbench_cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.split()[-1] if done.returncode == 0 and done.stdout.split() else "?"


# -- SQLCipher vs sqlite3 -----------------------------------------------------------------------


@dataclass
class EmbeddedRun:
    engine: str
    round: int
    seconds: float
    operations: int
    ops_per_second: float
    phases: dict[str, float] = field(default_factory=dict)


def embedded_workload(
    connection: Any, rows: int, seed: int, cache_mb: int
) -> tuple[int, dict[str, float]]:
    """The fixed workload; the number of operations and the seconds per phase."""
    rng = random.Random(seed)
    payloads = [f"payload-{i:08d}-" + "x" * 80 for i in range(rows)]
    connection.execute("PRAGMA journal_mode = WAL").fetchall()
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(f"PRAGMA cache_size = -{cache_mb * 1024}")
    connection.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value INTEGER, payload TEXT)"
    )
    phases: dict[str, float] = {}
    operations = 0

    start = time.perf_counter()
    for offset in range(0, rows, 500):
        with connection:
            connection.executemany(
                "INSERT INTO items (id, name, value, payload) VALUES (?, ?, ?, ?)",
                [(i + 1, f"item-{i}", i % 1000, payloads[i]) for i in range(offset, offset + 500)],
            )
    phases["insert"] = time.perf_counter() - start
    operations += rows

    start = time.perf_counter()
    for _ in range(rows):
        connection.execute("SELECT * FROM items WHERE id = ?", (rng.randint(1, rows),)).fetchone()
    phases["point_select"] = time.perf_counter() - start
    operations += rows

    start = time.perf_counter()
    for _ in range(rows // 100):
        low = rng.randint(1, rows - 100)
        connection.execute(
            "SELECT id, value FROM items WHERE id BETWEEN ? AND ?", (low, low + 99)
        ).fetchall()
    phases["range_select"] = time.perf_counter() - start
    operations += rows // 100

    start = time.perf_counter()
    updates = rows // 5
    for offset in range(0, updates, 100):
        with connection:
            connection.executemany(
                "UPDATE items SET value = value + 1 WHERE id = ?",
                [(rng.randint(1, rows),) for _ in range(min(100, updates - offset))],
            )
    phases["update"] = time.perf_counter() - start
    operations += updates
    return operations, phases


def run_embedded(args: argparse.Namespace, base: Path) -> list[EmbeddedRun]:
    engines: dict[str, Callable[[Path], Any]] = {
        "sqlite3": lambda path: sqlite3.connect(path),
        "sqlcipher": lambda path: connect_embedded(path, os.urandom(32)),
    }
    runs: list[EmbeddedRun] = []
    for round_ in range(1, args.rounds + 1):
        order = list(engines) if round_ % 2 else list(reversed(engines))
        for engine in order:
            path = base / f"{engine}-{round_}.db"
            connection = engines[engine](path)
            start = time.perf_counter()
            operations, phases = embedded_workload(connection, args.rows, round_, args.cache_mb)
            seconds = time.perf_counter() - start
            connection.close()
            runs.append(
                EmbeddedRun(engine, round_, seconds, operations, operations / seconds, phases)
            )
            print(
                f"  embedded round {round_} {engine:9s} {operations / seconds:10.0f} ops/s "
                + " ".join(f"{k}={v:.2f}s" for k, v in phases.items()),
                file=sys.stderr,
            )
    return runs


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    command: str
    machine: Machine
    versions: dict[str, str]
    settings: dict[str, Any]
    sysbench: list[SysbenchRun]
    embedded: list[EmbeddedRun]
    summary: dict[str, Any]


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(server_runs: list[SysbenchRun], embedded: list[EmbeddedRun]) -> dict[str, Any]:
    tps = {name: [r.tps for r in server_runs if r.server == name] for name in ("plain", "geode")}
    qps = {name: [r.qps for r in server_runs if r.server == name] for name in ("plain", "geode")}
    per_round = [
        geode.tps / plain.tps
        for plain in server_runs
        if plain.server == "plain"
        for geode in server_runs
        if geode.server == "geode" and geode.round == plain.round
    ]
    ops = {
        name: [r.ops_per_second for r in embedded if r.engine == name]
        for name in ("sqlite3", "sqlcipher")
    }
    cpu = {
        name: [r.server_cpu_ms + r.client_cpu_ms for r in server_runs if r.server == name]
        for name in ("plain", "geode")
    }
    summary: dict[str, Any] = {}
    if server_runs:
        ratio = median_of(tps["geode"]) / median_of(tps["plain"])
        summary["server"] = {
            "plain_cpu_ms_per_txn": median_of(cpu["plain"]),
            "geode_cpu_ms_per_txn": median_of(cpu["geode"]),
            "cpu_ratio": median_of(cpu["plain"]) / median_of(cpu["geode"]),
            "plain_tps_median": median_of(tps["plain"]),
            "geode_tps_median": median_of(tps["geode"]),
            "plain_qps_median": median_of(qps["plain"]),
            "geode_qps_median": median_of(qps["geode"]),
            "ratio_tps": ratio,
            "ratio_per_round": per_round,
            "bar": BAR_SERVER,
            **tls_only(server_runs, tps["plain"]),
            "met": ratio >= BAR_SERVER,
        }
    if embedded:
        ratio = median_of(ops["sqlcipher"]) / median_of(ops["sqlite3"])
        summary["embedded"] = {
            "sqlite3_ops_median": median_of(ops["sqlite3"]),
            "sqlcipher_ops_median": median_of(ops["sqlcipher"]),
            "ratio": ratio,
            "bar": BAR_EMBEDDED,
            "met": ratio >= BAR_EMBEDDED,
        }
    return summary


def tls_only(server_runs: list[SysbenchRun], plain_tps: list[float]) -> dict[str, Any]:
    """The diagnostic "tls" server against plain, when it ran."""
    runs = [r for r in server_runs if r.server == "tls"]
    if not runs:
        return {}
    cpu = [r.server_cpu_ms + r.client_cpu_ms for r in runs]
    return {
        "tls_tps_median": median_of([r.tps for r in runs]),
        "tls_cpu_ms_per_txn": median_of(cpu),
        "ratio_tls_tps": median_of([r.tps for r in runs]) / median_of(plain_tps),
    }


def versions() -> dict[str, str]:
    import sqlcipher3

    def first_line(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            return out.strip().splitlines()[0] if out.strip() else "?"
        return "?"

    cipher = sqlcipher3.connect(":memory:")
    cipher_version = cipher.execute("PRAGMA cipher_version").fetchone()[0]
    cipher.close()
    return {
        "geode": geode.__version__,
        "mariadbd": first_line(find_program("mariadbd", "mysqld"), "--version"),
        "sysbench": first_line(find_program("sysbench"), "--version"),
        "sqlite3": sqlite3.sqlite_version,
        "sqlcipher": f"{cipher_version} (SQLite {sqlcipher3.sqlite_version})",
    }


def run_servers(args: argparse.Namespace, base: Path) -> tuple[list[SysbenchRun], str]:
    tuning = [tuple(option.split("=", 1)) for option in args.option]
    servers: list[Server] = []
    runs: list[SysbenchRun] = []
    try:
        pki = make_pki(base / "pki")
        plain = start_plain(base, tuning)  # type: ignore[arg-type]
        servers.append(plain)
        geode_server = start_geode(base, tuning, pki)  # type: ignore[arg-type]
        servers.append(geode_server)
        if args.tls_only:
            servers.append(start_plain(base, tuning, pki, "tls"))  # type: ignore[arg-type]
        negotiated = tls_version(geode_server)
        for server in servers:
            sysbench(server, "prepare", args)
        # Unmeasured: the buffer pools fill and a new encrypted datadir finishes encrypting its
        # system tablespace in the background before anything is timed.
        warmup = argparse.Namespace(**{**vars(args), "time": args.warmup})
        for server in servers:
            if args.warmup > 0:
                sysbench(server, "run", warmup)
        for round_ in range(1, args.rounds + 1):
            order = servers if round_ % 2 else list(reversed(servers))
            for server in order:
                server_cpu = process_tree_cpu_seconds(server.process.pid)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                output = sysbench(server, "run", args)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                run = parse_sysbench(output, server.name, round_)
                per_txn = 1000 / max(run.transactions, 1)
                run.server_cpu_ms = (
                    process_tree_cpu_seconds(server.process.pid) - server_cpu
                ) * per_txn
                run.client_cpu_ms = (
                    after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                ) * per_txn
                runs.append(run)
                print(
                    f"  sysbench round {round_} {server.name:6s} {run.tps:8.1f} tps "
                    f"{run.qps:9.1f} qps p95 {run.p95_ms:.2f} ms; CPU ms/txn server "
                    f"{run.server_cpu_ms:.3f} client {run.client_cpu_ms:.3f}",
                    file=sys.stderr,
                )
        return runs, negotiated
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def scratch(keep: bool) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="geode-bench-db-"))
    try:
        yield base
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def benchmark(args: argparse.Namespace, command: str) -> Report:
    with scratch(args.keep) as base:
        server_runs, negotiated = ([], "-") if args.skip_server else run_servers(args, base)
        embedded = [] if args.skip_embedded else run_embedded(args, base)
    settings = {
        key: getattr(args, key)
        for key in (
            "tables",
            "table_size",
            "threads",
            "time",
            "rounds",
            "rows",
            "cache_mb",
            "option",
        )
    }
    settings["tls"] = negotiated
    return Report(
        command=command,
        machine=Machine.describe(),
        versions=versions(),
        settings=settings,
        sysbench=server_runs,
        embedded=embedded,
        summary=summarise(server_runs, embedded),
    )


def print_report(report: Report) -> None:
    m = report.machine
    print(f"command:  {report.command}")
    print(f"machine:  {m.nproc} CPUs, {m.cpu}, Python {m.python}, {m.date}")
    for name, version in report.versions.items():
        print(f"{name + ':':11s}{version}")
    print(f"settings: {report.settings}")
    server = report.summary.get("server")
    if server:
        print(
            f"server:   plain {server['plain_tps_median']:.1f} tps / "
            f"{server['plain_qps_median']:.0f} qps, geode {server['geode_tps_median']:.1f} tps / "
            f"{server['geode_qps_median']:.0f} qps (medians)"
        )
        print(
            f"          CPU per transaction (server + sysbench, medians): plain "
            f"{server['plain_cpu_ms_per_txn']:.3f} ms, geode {server['geode_cpu_ms_per_txn']:.3f}"
            f" ms; plain/geode {server['cpu_ratio']:.3f}"
        )
        if "tls_tps_median" in server:
            print(
                f"          diagnostic tls (plain + TLS only): {server['tls_tps_median']:.1f} tps,"
                f" {server['tls_cpu_ms_per_txn']:.3f} ms CPU/txn; tls/plain "
                f"{server['ratio_tls_tps']:.3f}"
            )
        rounds = ", ".join(f"{r:.3f}" for r in server["ratio_per_round"])
        verdict = "met" if server["met"] else "NOT met"
        print(
            f"          ratio geode/plain {server['ratio_tps']:.3f} "
            f"(per round {rounds}); bar ≥ {server['bar']}: {verdict}"
        )
    embedded = report.summary.get("embedded")
    if embedded:
        verdict = "met" if embedded["met"] else "NOT met"
        print(
            f"embedded: sqlite3 {embedded['sqlite3_ops_median']:.0f} ops/s, sqlcipher "
            f"{embedded['sqlcipher_ops_median']:.0f} ops/s (medians); ratio "
            f"{embedded['ratio']:.3f}; bar ≥ {embedded['bar']}: {verdict}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--table-size", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--time", type=int, default=30, help="seconds per sysbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=20, help="unmeasured seconds per server before the rounds"
    )
    parser.add_argument("--rows", type=int, default=50000, help="embedded workload size")
    parser.add_argument("--cache-mb", type=int, default=8, help="embedded page cache, MiB")
    parser.add_argument(
        "--option",
        action="append",
        default=["innodb_buffer_pool_size=256M"],
        metavar="NAME=VALUE",
        help="mariadbd option for both servers (repeatable)",
    )
    parser.add_argument(
        "--tls-only",
        action="store_true",
        help='a diagnostic third server, "tls": plain MariaDB with TLS and nothing else of '
        "Geode's, to part what TLS costs from what encryption at rest costs",
    )
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    report = benchmark(args, command_line("benchmarks/database.py", argv))
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print_report(report)
    failed = any(run.errors for run in report.sysbench)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
