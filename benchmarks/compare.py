"""Two revisions of Geode measured side by side, interleaved, in the same run.

Why
---
A change that only moves code must not make the hot paths dearer. On a shared 2-core machine
absolute figures move by ±15 % from one run to the next, so comparing today's run of the head
with a table row from another day shows the machine, not the change. Here both sides are measured
in the same run, one after the other, in ABBA order (base first in odd rounds, head first in even
ones, so that a drift in the machine's load hits both sides alike), and what is judged is the
head/base ratio within each round and the median of those ratios.

How
---
- The base (``--base REV``) is checked out with ``git worktree add --detach`` at
  ``.bench-cache/<commit>/tree`` and installed editable (``pip install -e``) into its own venv,
  ``.bench-cache/<commit>/venv``, made with the head's interpreter. The worktree is removed at
  the end and the venv is kept: its editable install points at that same path, which the next
  run of the same commit checks out again, so a second run skips pip. ``.bench-cache/`` is
  ignored by git; delete it to start over.
- The head is the working tree this script lives in with its ``.venv`` (``make venv``), or
  another tree with its own ``.venv`` (``--head-tree PATH``), or a revision prepared like the
  base (``--head REV``). Uncommitted changes of a head tree are measured (marked ``+dirty``).
- Each side runs its OWN ``benchmarks/activation.py`` and ``benchmarks/dataplane.py`` with its
  own interpreter, through their command line, and the result is read from their ``--json``
  output on stdout (both scripts have had it since they were written). Running the head's scripts
  against the base's package instead would not be sound: the harness uses Geode's library API
  (``geode.client``, ``geode.runtime``, ``geode.testing``), which is what a refactoring moves.
  The price: a change to a benchmark script changes what that side measures, so the scripts that
  differ between the sides are named in a warning; read their diff before trusting a ratio.
  So are dependencies installed in different versions on the two sides.
- Metrics: from ``activation.py`` (one Coordinator, directory store), the Coordinator's CPU ms per
  activation and activations/s; from ``dataplane.py`` path (c) only (client -> Geode egress ->
  mTLS -> Geode ingress -> app), the CPU µs per request of the egress and of the ingress process,
  and requests/s. CPU per unit of work is the figure to judge: it depends little on what else
  runs; the rates are there for context.
- Every benchmark runs in a session of its own. When it ends, fails, times out, or this script
  is interrupted, it gets SIGTERM (it stops what it started), then whatever is left of its process
  group is terminated and killed. A failure stops the comparison with a one-line error and a
  non-zero exit; the failed run's output is kept in ``.bench-cache/last-failure.log``.
- The metrics, the order, the arithmetic and the stopping of process groups are in
  ``_comparison.py`` (tested in ``tests/benchmarks/``); this file prepares the sides and runs them.

Run: ``.venv/bin/python benchmarks/compare.py --base HEAD~1 --rounds 4`` (a round takes about a
minute with the defaults), ``--which activation`` or ``--which dataplane`` for one of them,
``--quick`` for small counts, ``--json PATH`` to keep the result. See RESULTS.md, "Side by side".
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from _comparison import (
    BENCHMARKS,
    Benchmark,
    CompareError,
    Round,
    Summary,
    Values,
    last_line,
    parse_report,
    round_order,
    stop_group,
    summarise,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench-cache"
FAILURE_LOG = CACHE / "last-failure.log"
SCRIPTS = ("activation.py", "dataplane.py", "_harness.py", "_mesh_paths.py")


# -- the two sides -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    name: str  # "base" or "head"
    tree: Path
    python: Path
    label: str  # the commit, "+dirty" for a tree with uncommitted changes
    python_version: str
    packages: dict[str, str]  # installed distribution -> version


def run_quietly(command: Sequence[str | Path], cwd: Path = ROOT, what: str = "") -> str:
    """``command``'s stdout; a ``CompareError`` with its last line of output if it fails."""
    try:
        done = subprocess.run(
            [str(c) for c in command],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise CompareError(f"{what or command[0]}: {exc}") from None
    if done.returncode != 0:
        raise CompareError(f"{what or ' '.join(map(str, command))}: {last_line(done.stderr)}")
    return done.stdout.strip()


def git(*args: str, cwd: Path = ROOT) -> str:
    return run_quietly(["git", *args], cwd, what=f"git {' '.join(args)}")


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CompareError:
        raise CompareError(f"unknown revision {rev!r}") from None


def side_env(python: Path) -> dict[str, str]:
    """This process's environment with ``python``'s venv in front and nothing that would let
    another checkout's ``geode`` in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


PROBE = """
import importlib.metadata, json, sys, geode
packages = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
print(json.dumps([sys.version.split()[0], geode.__file__, packages]))
"""
NOT_COMPARED = {"geode", "pip", "setuptools", "wheel"}


def inspect_python(name: str, python: Path, tree: Path) -> tuple[str, dict[str, str]]:
    """``python``'s version and installed packages, after checking that it imports ``geode``
    from ``tree``."""
    try:
        done = subprocess.run(
            [str(python), "-c", PROBE],
            cwd=tree,
            env=side_env(python),
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise CompareError(f"{name}: {python}: {exc}") from None
    if done.returncode != 0:
        raise CompareError(f"{name}: {python} cannot import geode: {last_line(done.stderr)}")
    version, location, packages = json.loads(done.stdout)
    expected = (tree / "src" / "geode").resolve()
    if Path(location).resolve().parent != expected:
        raise CompareError(f"{name}: {python} imports geode from {location}, not from {expected}")
    return version, packages


def head_tree(path: Path) -> Side:
    tree = path.resolve()
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise CompareError(f"no {python}: run `make venv` in {tree}")
    commit = git("rev-parse", "--short", "HEAD", cwd=tree)
    dirty = git("status", "--porcelain", "--", "src", "benchmarks", "pyproject.toml", cwd=tree)
    label = commit + ("+dirty" if dirty else "")
    return Side("head", tree, python, label, *inspect_python("head", python, tree))


def base_interpreter(python: Path | None) -> str:
    """The interpreter that made ``python``'s venv (so both sides run the same Python)."""
    if python is None:
        return getattr(sys, "_base_executable", sys.executable)
    return run_quietly([python, "-c", "import sys; print(sys._base_executable)"])


@contextlib.contextmanager
def checkout(name: str, commit: str, interpreter: str) -> Iterator[Side]:
    """``commit`` in a worktree with its cached venv, for the duration of the ``with``."""
    home = CACHE / commit
    tree, venv = home / "tree", home / "venv"
    home.mkdir(parents=True, exist_ok=True)
    with (home / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompareError(f"another compare.py is using {home}") from None
        remove_worktree(tree)  # left by a run that was killed
        git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            python = ensure_venv(name, venv, tree, commit, interpreter)
            yield Side(name, tree, python, commit[:7], *inspect_python(name, python, tree))
        finally:
            remove_worktree(tree)


def remove_worktree(tree: Path) -> None:
    if tree.exists():
        with contextlib.suppress(CompareError):
            git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
    with contextlib.suppress(CompareError):
        git("worktree", "prune")


def ensure_venv(name: str, venv: Path, tree: Path, commit: str, interpreter: str) -> Path:
    python, stamp = venv / "bin" / "python", venv / ".geode-commit"
    if stamp.exists() and stamp.read_text().strip() == commit and python.exists():
        return python
    log(f"{name}: creating {venv} (python -m venv, pip install -e {tree}) ...")
    shutil.rmtree(venv, ignore_errors=True)
    run_quietly([interpreter, "-m", "venv", venv], what=f"{name}: python -m venv")
    quiet = ("-q", "--disable-pip-version-check")
    run_quietly(
        [python, "-m", "pip", "install", *quiet, "-e", tree], what=f"{name}: pip install -e"
    )
    stamp.write_text(commit + "\n")
    return python


def differing_scripts(base: Side, head: Side) -> list[str]:
    def text(side: Side, name: str) -> bytes | None:
        path = side.tree / "benchmarks" / name
        return path.read_bytes() if path.exists() else None

    return [name for name in SCRIPTS if text(base, name) != text(head, name)]


def differing_packages(base: Side, head: Side) -> list[str]:
    """The dependencies both sides have in different versions (the head's venv may be older, or
    have the test extras: only what both have is compared)."""
    common = (base.packages.keys() & head.packages.keys()) - NOT_COMPARED
    return [
        f"{name} {base.packages[name]} (base) vs {head.packages[name]} (head)"
        for name in sorted(common)
        if base.packages[name] != head.packages[name]
    ]


def check_scripts(side: Side, benchmarks: Sequence[Benchmark]) -> None:
    for benchmark in benchmarks:
        script = side.tree / "benchmarks" / benchmark.script
        if not script.exists():
            raise CompareError(f"{side.name} ({side.label}) has no benchmarks/{benchmark.script}")
        if '"--json"' not in script.read_text():
            raise CompareError(f"{side.name}'s benchmarks/{benchmark.script} has no --json")


# -- running one benchmark -----------------------------------------------------------------------


def run_benchmark(
    side: Side, benchmark: Benchmark, args: argparse.Namespace
) -> tuple[Values, float]:
    """One benchmark run of one side: its values and its wall-clock seconds."""
    script = side.tree / "benchmarks" / benchmark.script
    command = [str(side.python), str(script), *benchmark.arguments(args)]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=side.tree,
        env=side_env(side.python),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    what = f"{side.name} ({side.label}) {benchmark.name}"
    out = err = ""
    try:
        out, err = process.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        out, err = process.communicate()
        keep_failure(command, out, err)
        raise CompareError(f"{what} took longer than {args.timeout:g} s") from None
    finally:
        stop_group(process)
    seconds = time.monotonic() - started
    failure = ""
    try:
        values = benchmark.read(parse_report(out))
    except CompareError as exc:  # a crash prints no report: its last words are on stderr
        failure = str(exc) if out.strip() else last_line(err)
    except (KeyError, TypeError, ValueError) as exc:
        failure = f"unexpected report ({type(exc).__name__}: {exc})"
    else:
        if process.returncode != 0:
            failure = f"exit status {process.returncode}: {last_line(err)}"
    if failure:
        keep_failure(command, out, err)
        raise CompareError(f"{what} failed: {failure} (output in {FAILURE_LOG})")
    return values, seconds


def keep_failure(command: Sequence[str], out: str, err: str) -> None:
    with contextlib.suppress(OSError):
        CACHE.mkdir(exist_ok=True)
        FAILURE_LOG.write_text(
            f"$ {' '.join(command)}\n--- stderr ---\n{err}\n--- stdout ---\n{out}"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the comparison ------------------------------------------------------------------------------


def measure(
    sides: Mapping[str, Side], benchmarks: Sequence[Benchmark], args: argparse.Namespace
) -> list[Round]:
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        results: Round = {"base": {}, "head": {}}
        for benchmark in benchmarks:
            for name in round_order(number):
                log(f"round {number}/{args.rounds}: {benchmark.name}, {name} ...")
                values, seconds = run_benchmark(sides[name], benchmark, args)
                results[name].update(values)
                shown = ", ".join(
                    f"{m.label} {values[m.key]:.{m.digits}f}" for m in benchmark.metrics
                )
                log(f"  {shown} ({seconds:.0f} s)")
        rounds.append(results)
    return rounds


def print_report(
    sides: Mapping[str, Side],
    benchmarks: Sequence[Benchmark],
    args: argparse.Namespace,
    summaries: Sequence[Summary],
    warnings: Sequence[str],
) -> None:
    print("Geode benchmarks side by side")
    for side in sides.values():
        print(f"  {side.name}  {side.label}  ({side.tree}, Python {side.python_version})")
    print(f"  rounds  {args.rounds}, ABBA: base first in odd rounds, head first in even ones")
    for benchmark in benchmarks:
        print(f"  {benchmark.name}  {benchmark.script} {' '.join(benchmark.arguments(args))}")
    for warning in warnings:
        print(f"  WARNING  {warning}")
    print()
    columns = [f"round {n} ({round_order(n)[0]} first)" for n in range(1, args.rounds + 1)]
    header = f"| metric | | {' | '.join(columns)} | median |"
    print(header)
    print("| --- | --- |" + " ---: |" * (len(columns) + 1))

    def cells(values: Sequence[float], fmt: str) -> str:
        return " | ".join(format(v, fmt) for v in values)

    for s in summaries:
        better = "lower" if s.metric.lower_is_better else "higher"
        digits = s.metric.digits
        print(
            f"| {s.metric.label} ({better} is better) | base | {cells(s.base, f'.{digits}f')} "
            f"| {s.median_base:.{digits}f} |"
        )
        print(f"| | head | {cells(s.head, f'.{digits}f')} | {s.median_head:.{digits}f} |")
        spread = f"{min(s.ratios):.3f}-{max(s.ratios):.3f}"
        print(f"| | head/base | {cells(s.ratios, '.3f')} | **{s.median_ratio:.3f}** ({spread}) |")


def compare(args: argparse.Namespace) -> int:
    benchmarks = [BENCHMARKS[name] for name in args.which]
    with contextlib.ExitStack() as stack:
        head = head_tree(Path(args.head_tree)) if args.head is None else None
        interpreter = base_interpreter(head.python if head is not None else None)
        base_commit = resolve(args.base)
        if args.head is not None:
            head_commit = resolve(args.head)
            if head_commit == base_commit:
                raise CompareError("--base and --head are the same commit")
            head = stack.enter_context(checkout("head", head_commit, interpreter))
        assert head is not None
        base = stack.enter_context(checkout("base", base_commit, interpreter))
        sides = {"base": base, "head": head}
        for side in sides.values():
            check_scripts(side, benchmarks)
        warnings = []
        if base.python_version != head.python_version:
            warnings.append(f"Python {base.python_version} (base) vs {head.python_version} (head)")
        if packages := differing_packages(base, head):
            warnings.append(f"installed versions differ: {', '.join(packages)}")
        if differ := differing_scripts(base, head):
            warnings.append(
                f"benchmarks/{{{','.join(differ)}}} differ between the sides: each side measures "
                "with its own; check that the measurement itself did not change"
            )
        for warning in warnings:
            log(f"WARNING: {warning}")
        rounds = measure(sides, benchmarks, args)
    summaries = [summarise(m, rounds) for b in benchmarks for m in b.metrics]
    print_report(sides, benchmarks, args, summaries, warnings)
    if args.json:
        document = {
            "sides": {
                name: {"label": s.label, "tree": str(s.tree), "python": s.python_version}
                for name, s in sides.items()
            },
            "rounds": rounds,
            "order": [list(round_order(n)) for n in range(1, args.rounds + 1)],
            "arguments": {b.name: b.arguments(args) for b in benchmarks},
            "warnings": warnings,
            "summaries": [asdict(s) for s in summaries],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def parse_which(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(BENCHMARKS)}")
    return names


QUICK = {"activations": 400, "clients": 16, "connections": 16, "warmup": 0.5, "duration": 2.0}
NORMAL = {"activations": 2000, "clients": 64, "connections": 32, "warmup": 1.0, "duration": 5.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", required=True, help="the revision to compare against")
    head = parser.add_mutually_exclusive_group()
    head.add_argument("--head", help="a revision, prepared like the base")
    head.add_argument(
        "--head-tree",
        default=str(ROOT),
        help="a working tree with its own .venv (default: the one this script is in)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each side once (4)")
    parser.add_argument(
        "--which",
        type=parse_which,
        default=list(BENCHMARKS),
        help="benchmarks to compare (activation,dataplane)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, to check the set-up")
    for name, kind, what in (
        ("activations", int, "activations per run"),
        ("clients", int, "concurrent activation clients"),
        ("connections", int, "data-plane keep-alive connections"),
        ("warmup", float, "data-plane seconds under load before measuring"),
        ("duration", float, "data-plane seconds measured"),
    ):
        parser.add_argument(
            f"--{name}", type=kind, help=f"{what} ({NORMAL[name]:g}; --quick {QUICK[name]:g})"
        )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (600)")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rounds < 1 or args.clients < 1 or args.activations < args.clients:
        parser.error("need --rounds >= 1, --clients >= 1 and --activations >= --clients")
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --connections >= 1, --duration > 0 and --warmup >= 0")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the blocks that stop benchmarks and worktrees


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return compare(args)
    except CompareError as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compare.py: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
