"""Validating a manifest someone sent, in a worker process with a time and memory budget.

``load_manifest`` bounds its own work (parse depth, values, alias expansion, template tokens,
bytes and number); that is the first line. This is the backstop for whatever those bounds
miss: a manifest (or update) sent to the Coordinator is first validated in a child process
whose address space is limited (``RLIMIT_AS``) and which is killed when its time is up. Only
a document the worker accepted is parsed again, in a thread of the Coordinator.

The worker is forked from a small server process (multiprocessing's ``forkserver``) that has
the manifest code imported, so a validation costs a fork, not a Python start; the worker never
holds what the Coordinator holds (keys, secrets), only the bytes it checks. One validation runs
at a time: a queue of bombs costs time, never the memory of several workers at once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import resource
import time
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection

from geode.errors import ManifestError, ManifestTooCostly
from geode.manifest import is_package_update, load_manifest, parse_manifest_data

__all__ = [
    "DEFAULT_MANIFEST_BUDGET",
    "ManifestBudget",
    "ManifestWorker",
    "check_in_worker",
    "stop_workers",
]

log = logging.getLogger("geode.coordinator.validation")


@dataclass(frozen=True)
class ManifestBudget:
    """What validating one manifest may cost: wall-clock seconds, and the worker's address
    space in bytes (the interpreter with the manifest code loaded fits in 100 MiB of it)."""

    seconds: float = 10.0
    memory: int = 512 << 20


# 10 s: the costliest manifest within the in-process bounds (1023 templates, one rendering a
# megabyte) validates in 2 to 4 s on a loaded two-core machine. 512 MiB: the worst of the bomb
# corpus peaks under 90 MiB resident (``tests/manifest/test_attack_bombs.py``).
DEFAULT_MANIFEST_BUDGET = ManifestBudget()


def _validate(raw: bytes, update: bool) -> None:
    """What the worker checks: a whole manifest, or (``update``) a package update."""
    data = parse_manifest_data(raw)
    if update and is_package_update(data):
        return  # a package update: its fields are checked against the manifest in force
    load_manifest(raw)


def _worker(raw: bytes, update: bool, memory: int, answer: Connection) -> None:
    """The worker process: its memory limited, it validates and answers ``None`` or the
    error's (path, reason)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    result: tuple[str, str] | None
    try:
        _validate(raw, update)
        result = None
    except ManifestError as exc:
        result = (exc.path, exc.reason)
    except MemoryError:
        result = ("", "memory")
    except Exception as exc:  # a bug of the validation: refused as invalid, and said so
        log.exception("a manifest could not be validated")
        result = ("manifest", f"could not be validated ({type(exc).__name__})")
    answer.send(result)
    answer.close()


def _nothing() -> None:
    pass


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["geode.coordinator._validation"])
    return context


def check_in_worker(raw: bytes, budget: ManifestBudget, *, update: bool = False) -> None:
    """Validate ``raw`` in a worker within ``budget``; raises the ``ManifestError`` it found,
    or ``ManifestTooCostly`` when the worker ran out of time or memory. Blocks: call it from a
    thread (``ManifestWorker`` does)."""
    context = _context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]  # not in the stubs
        target=_worker, args=(raw, update, budget.memory, send), daemon=True
    )
    started = time.monotonic()
    process.start()
    send.close()
    try:
        if not receive.poll(budget.seconds):
            raise ManifestTooCostly(f"validating it takes longer than {budget.seconds:g} s")
        try:
            result = receive.recv()
        except EOFError:  # the worker died: killed for its memory, or crashed on it
            result = ("", "memory")
    finally:
        process.kill()
        process.join()
        receive.close()
    log.debug("manifest validated in a worker in %.3f s", time.monotonic() - started)
    if result is None:
        return
    path, reason = result
    if not path:
        raise ManifestTooCostly(f"validating it takes more than {budget.memory >> 20} MiB")
    raise ManifestError(path, reason)


def stop_workers() -> None:
    """Stop the fork server (and multiprocessing's resource tracker it started) and wait for
    them, so that a stopped Coordinator leaves no process behind, not even for a moment. They
    would exit on their own once the Coordinator's end of their pipes closes; ``geode up``
    checks that nothing of the Coordinator's process group is left right after it exits."""
    for private in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(private, "_stop", None)  # no public stop: absent, it is left to exit
        try:
            if stop is not None:
                stop()
        except Exception as exc:  # e.g. after a failed start: never hide what went before
            log.debug("a manifest validation helper process could not be stopped: %s", exc)


class ManifestWorker:
    """The Coordinator's manifest validations, one at a time, off the event loop."""

    def __init__(self, budget: ManifestBudget) -> None:
        self.budget = budget
        self._one = asyncio.Lock()

    def start(self) -> None:
        """Start the process workers are forked from and wait until it forks them (it imports
        the manifest code first): before the Coordinator listens, not while the first manifest
        waits."""
        context = _context()
        process = context.Process(target=_nothing)  # type: ignore[attr-defined]  # not in the stubs
        process.start()
        process.join()

    async def check(self, raw: bytes, *, update: bool = False) -> None:
        async with self._one:
            validation = asyncio.ensure_future(
                asyncio.to_thread(check_in_worker, raw, self.budget, update=update)
            )
            try:
                await asyncio.shield(validation)
            except asyncio.CancelledError:
                # The caller left (its client hung up): the worker still runs to its end or
                # its budget, and the next one waits for it, so one at a time still holds.
                await asyncio.wait([validation])
                validation.exception()  # its refusal has nobody to go to
                raise
