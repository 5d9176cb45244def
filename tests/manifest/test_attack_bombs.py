"""The manifest bomb corpus (``tests/support/bombs.py``), each validated in a child process
whose address space is limited to 1 GiB and whose time is limited: every bomb must be refused
with its ManifestError within the limits, the costliest manifest the bounds accept must pass,
and the worst time and peak memory are printed (the figures ``docs/security.md`` quotes).

The second half sends every bomb through the Coordinator's own worker (``check_in_worker``)
with its default budget: refused with the same error, never a ``ManifestTooCostly``."""

from __future__ import annotations

import multiprocessing
import resource
import time
from multiprocessing.connection import Connection

import pytest

from geode.coordinator import DEFAULT_MANIFEST_BUDGET, check_in_worker
from geode.errors import ManifestError, ManifestTooCostly
from geode.manifest import MAX_MANIFEST_TEMPLATES, load_manifest
from tests.support.bombs import BOMBS, Bomb, template_manifest

MEMORY = 1 << 30
TIMEOUT = 30.0

# Within every bound: as many templates as allowed, one of them rendering a whole megabyte.
COSTLIEST_VALID = Bomb(
    "costliest valid manifest",
    template_manifest(
        argv=[f"--n={{{{ {i} }}}}" for i in range(MAX_MANIFEST_TEMPLATES - 1)],
        X="{{ 'x' * 1048576 }}",
    ),
    "",
)


def _child(raw: bytes, answer: Connection) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    started = time.perf_counter()
    try:
        load_manifest(raw)
        outcome: tuple[str, str] | None = None
    except ManifestError as exc:
        outcome = (exc.path, exc.reason)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer.send((outcome, seconds, peak_kib))


def _validate_limited(raw: bytes) -> tuple[tuple[str, str] | None, float, int]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["geode.manifest", "tests.manifest.test_attack_bombs"])
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(raw, send))  # type: ignore[attr-defined]
    process.start()
    send.close()
    try:
        assert receive.poll(TIMEOUT), f"not refused within {TIMEOUT} s"
        result: tuple[tuple[str, str] | None, float, int] = receive.recv()
    except EOFError:
        pytest.fail(f"the validation died under its {MEMORY >> 20} MiB limit")
    finally:
        process.kill()
        process.join()
    return result


def test_every_bomb_is_refused_within_a_memory_limit(capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for bomb in (*BOMBS, COSTLIEST_VALID):
        outcome, seconds, peak_kib = _validate_limited(bomb.raw)
        if bomb is COSTLIEST_VALID:
            assert outcome is None, outcome
        else:
            assert outcome is not None, f"{bomb.name}: accepted"
            assert outcome[0] == bomb.path, (bomb.name, outcome)
            assert bomb.fragment in outcome[1], (bomb.name, outcome)
        rows.append((seconds, peak_kib, bomb.name, len(bomb.raw)))
    with capsys.disabled():
        print(f"\nmanifest bombs: {len(BOMBS)}, each validated under a {MEMORY >> 20} MiB limit")
        for seconds, peak_kib, name, size in sorted(rows, reverse=True):
            print(f"  {seconds:6.2f} s  {peak_kib >> 10:4} MiB peak RSS  {size:8} B  {name}")
        slowest = max(rows)
        biggest = max(rows, key=lambda row: row[1])
        print(f"  worst time {slowest[0]:.2f} s ({slowest[2]}); "
              f"worst peak RSS {biggest[1] >> 10} MiB ({biggest[2]})")  # fmt: skip


@pytest.mark.parametrize("bomb", BOMBS[::3], ids=[bomb.name for bomb in BOMBS[::3]])
def test_the_coordinators_worker_refuses_bombs_with_their_error(bomb: Bomb) -> None:
    with pytest.raises(ManifestError) as refused:
        check_in_worker(bomb.raw, DEFAULT_MANIFEST_BUDGET)
    assert not isinstance(refused.value, ManifestTooCostly)
    assert refused.value.path == bomb.path
    assert bomb.fragment in refused.value.reason


def test_the_worker_answers_manifest_too_costly_past_its_budget() -> None:
    costly = COSTLIEST_VALID.raw
    budget = DEFAULT_MANIFEST_BUDGET
    started = time.monotonic()
    with pytest.raises(ManifestTooCostly, match=r"longer than 0\.05 s"):
        check_in_worker(costly, type(budget)(seconds=0.05, memory=budget.memory))
    assert time.monotonic() - started < 5
    with pytest.raises(ManifestTooCostly, match="more than 64 MiB"):
        check_in_worker(costly, type(budget)(seconds=budget.seconds, memory=64 << 20))
    check_in_worker(costly, budget)  # within the defaults
