"""What ``compare.py`` compares and how: the metrics, the ABBA order, the ratios and their
median, reading the benchmarks' ``--json`` reports, and stopping a benchmark's process group.
Apart from ``stop_group``, no side effects (tests/benchmarks/test_bench_compare.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_GRACE = 30.0  # seconds a benchmark has after SIGTERM to stop what it started
DATAPLANE_PATH = "c"


class CompareError(Exception):
    """Why the comparison stopped, in one line."""


# -- what is compared, and the arithmetic --------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    digits: int  # decimals shown


ACTIVATION_METRICS = (
    Metric("coordinator_cpu_ms_per_activation", "Coordinator CPU ms per activation", True, 3),
    Metric("activations_per_s", "activations/s", False, 0),
)
DATAPLANE_METRICS = (
    Metric("egress_cpu_us_per_request", "(c) egress CPU µs per request", True, 1),
    Metric("ingress_cpu_us_per_request", "(c) ingress CPU µs per request", True, 1),
    Metric("requests_per_s", "(c) egress -> ingress requests/s", False, 0),
)

Values = dict[str, float]  # metric key -> value, for one side in one round
Round = dict[str, Values]  # "base"/"head" -> values


def round_order(number: int) -> tuple[str, str]:
    """ABBA: base first in odd rounds (1, 3, ...), head first in even ones."""
    return ("base", "head") if number % 2 else ("head", "base")


def ratio(head: float, base: float) -> float:
    return head / base if base > 0 else math.nan


@dataclass(frozen=True)
class Summary:
    metric: Metric
    base: list[float]  # per round
    head: list[float]
    ratios: list[float]  # head/base per round
    median_base: float
    median_head: float
    median_ratio: float


def summarise(metric: Metric, rounds: Sequence[Round]) -> Summary:
    base = [r["base"][metric.key] for r in rounds]
    head = [r["head"][metric.key] for r in rounds]
    ratios = [ratio(h, b) for h, b in zip(head, base, strict=True)]
    return Summary(
        metric,
        base,
        head,
        ratios,
        statistics.median(base),
        statistics.median(head),
        statistics.median(ratios),
    )


def parse_report(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark printed with ``--json``, even after stray lines."""
    text = stdout.strip()
    start = 0 if text.startswith("{") else text.find("\n{")
    if start < 0:
        raise CompareError("the benchmark printed no JSON report")
    try:
        report, _ = json.JSONDecoder().raw_decode(text[start:].lstrip())
    except json.JSONDecodeError as exc:
        raise CompareError(f"the benchmark's JSON report does not parse: {exc}") from None
    if not isinstance(report, dict):
        raise CompareError("the benchmark's JSON report is not an object")
    return report


def read_activation(report: Mapping[str, Any]) -> Values:
    if report.get("errors"):
        samples = report.get("error_samples") or ["no sample"]
        raise CompareError(f"{report['errors']} activations failed: {samples[0]}")
    return {
        "coordinator_cpu_ms_per_activation": float(report["coordinator_cpu_ms_per_activation"]),
        "activations_per_s": float(report["activations_per_s"]),
    }


def read_dataplane(report: Mapping[str, Any]) -> Values:
    path = next((p for p in report.get("paths", []) if p.get("path") == DATAPLANE_PATH), None)
    if path is None:
        raise CompareError(f"the report has no path ({DATAPLANE_PATH})")
    if path.get("status") != "ok":
        why = path.get("note") or next(iter(path.get("error_samples") or []), "no reason given")
        raise CompareError(f"path ({DATAPLANE_PATH}) {path.get('status')}: {why}")
    cpu = path["cpu_us_per_request"]
    return {
        "egress_cpu_us_per_request": float(cpu["egress"]),
        "ingress_cpu_us_per_request": float(cpu["ingress"]),
        "requests_per_s": float(path["requests_per_s"]),
    }


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str  # under benchmarks/
    metrics: tuple[Metric, ...]
    arguments: Callable[[argparse.Namespace], list[str]]
    read: Callable[[Mapping[str, Any]], Values]


def activation_arguments(args: argparse.Namespace) -> list[str]:
    # The floor (sign+verify/s) is not compared: measure it briefly.
    counts = ["--clients", str(args.clients), "--activations", str(args.activations)]
    return [*counts, "--floor-seconds", "0.2", "--json"]


def dataplane_arguments(args: argparse.Namespace) -> list[str]:
    return [
        *("--paths", DATAPLANE_PATH, "--connections", str(args.connections)),
        *("--warmup", f"{args.warmup:g}", "--duration", f"{args.duration:g}"),
        *("--single-duration", "0", "--json"),
    ]


BENCHMARKS = {
    "activation": Benchmark(
        "activation", "activation.py", ACTIVATION_METRICS, activation_arguments, read_activation
    ),
    "dataplane": Benchmark(
        "dataplane", "dataplane.py", DATAPLANE_METRICS, dataplane_arguments, read_dataplane
    ),
}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# -- stopping a benchmark --------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stop a benchmark started as a session leader, and everything left in its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the benchmarks stop their children on SIGTERM
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 5.0
        while group_members(process.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            time.sleep(0.2)
    if left := group_members(process.pid):
        raise CompareError(f"processes {left} of a benchmark would not stop")
