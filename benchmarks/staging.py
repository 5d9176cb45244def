"""What running what was measured costs at launch: ``geode run`` copies the bundle, measures the
copy and hashes its locked executables before it activates.

Before this, a launch measured the bundle in place. The benchmark times, per bundle, in one
process and interleaved (so that the shared machine's noise hits both alike):

- ``measure``: ``measure_bundle`` of the bundle in place (the old launch's cost, the baseline);
- ``stage``: ``stage_bundle`` (copy, measure the copy, make it read-only) then ``remove_staged``;
- ``check``: ``check_executables`` of the bundle's lock (the interpreter hashed again: twice
  per launch, before activation and right before the command starts).

Bundles: the bookstore's ``bookwarehouse`` with ``python3`` locked (a real service), and a
synthetic one of ``--files`` files of ``--file-kib`` KiB each. Prints the median of each and the
ratio ``stage / measure``; ``--json`` for a machine-readable line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from geode.attestation import measure_bundle
from geode.runtime import write_lock
from geode.runtime.launcher import check_executables, remove_staged, stage_bundle

REPO = Path(__file__).resolve().parent.parent


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(bundle: Path, runtime_dir: Path, rounds: int) -> dict[str, float]:
    measure: list[float] = []
    stage: list[float] = []
    check: list[float] = []
    lock = stage_bundle(bundle, runtime_dir, service="bench")
    remove_staged(lock)
    for _ in range(rounds):
        measure.append(_timed(lambda: measure_bundle(bundle)))
        stage.append(_timed(lambda: remove_staged(stage_bundle(bundle, runtime_dir))))
        check.append(_timed(lambda: check_executables(lock.lock)))
    return {
        "measure_ms": _median_ms(measure),
        "stage_ms": _median_ms(stage),
        "check_ms": _median_ms(check),
        "stage_over_measure": statistics.median(stage) / statistics.median(measure),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--file-kib", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        runtime_dir = base / "runtime"
        runtime_dir.mkdir(mode=0o700)
        service = base / "bookwarehouse"
        shutil.copytree(REPO / "examples" / "bookstore" / "bookwarehouse", service)
        write_lock(service, ["python3"], path=path)
        synthetic = base / "synthetic"
        for index in range(args.files):
            file = synthetic / f"pkg{index % 20}" / f"m{index}.py"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(os.urandom(args.file_kib * 1024))
        write_lock(synthetic, ["python3"], path=path)
        results = {
            "bookwarehouse": bench(service, runtime_dir, args.rounds),
            f"synthetic {args.files} x {args.file_kib} KiB": bench(
                synthetic, runtime_dir, args.rounds
            ),
        }
    if args.json:
        print(json.dumps(results))
        return 0
    for name, result in results.items():
        print(
            f"{name}: measure {result['measure_ms']:.2f} ms, stage {result['stage_ms']:.2f} ms "
            f"(x{result['stage_over_measure']:.1f}), check the lock {result['check_ms']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
