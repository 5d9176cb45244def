"""The one way a change of the Coordinator's state is answered: change, save, then answer — or
undo.

A part makes a change in memory and returns it as a ``Pending`` (its value and what undoes it).
``Transaction`` takes it from there: it saves the change through the group commit (``GroupCommit``,
its inner writer: batching, undoing a failed batch newest first, reading the store again after a
lost compare-and-swap), hands the value out only once the change is on disk, and otherwise lets
the writer's error through with the change undone. Handlers express each operation as one call:

- ``decide``: activations and renewals. Not serialised (they are the hot path, and many share
  one write); a change that loses a compare-and-swap on a shared store is decided again on the
  state read meanwhile, up to ``attempts`` times.
- ``govern``: governance changes, one at a time (a change may await, say for key generation in
  a thread, before it changes anything); after the save the audit log is flushed and
  ``on_change`` runs.
- ``write_then_adopt``: a state prepared in a thread (a manifest) is written first and adopted
  only once it is on disk, so a failed write changes nothing in memory.

``record_start`` does the same for the audit entry of a start, before the server (and its event
loop and group commit) runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from geode.coordinator._audit import AuditSink
from geode.coordinator._holder import Pending, PreparedManifest, State, StateHolder
from geode.coordinator._persist import GroupCommit
from geode.coordinator._store import Store
from geode.errors import SealError, StoreConflict

__all__ = ["STORE_ATTEMPTS", "Transaction", "record_start"]

log = logging.getLogger("geode.coordinator")

T = TypeVar("T")

# Attempts of an activation or renewal whose save loses a compare-and-swap on a shared store.
STORE_ATTEMPTS = 5
# Attempts of saving a start's audit entry, the store being read again after each conflict.
START_ATTEMPTS = 3


class Transaction:
    """Change, save, then answer, or undo: see the module docstring."""

    def __init__(
        self,
        held: StateHolder,
        writer: GroupCommit,
        audit: AuditSink,
        *,
        on_change: Callable[[], None] | None = None,
        on_retry: Callable[[], None] | None = None,
        attempts: int = STORE_ATTEMPTS,
    ) -> None:
        self._held = held
        self._writer = writer
        self._audit = audit
        self._on_change = on_change
        self._on_retry = on_retry  # a change is decided again (a metric counts them)
        self._attempts = attempts
        self._lock = asyncio.Lock()  # governance changes, one at a time

    async def decide(self, change: Callable[[bool], Pending[T]]) -> T:
        """Make ``change`` and save it; its value once saved. ``change(again)``: ``again`` is
        true when an earlier attempt lost a compare-and-swap (another Coordinator saved first)
        and was undone; the state has been read again, and the change is decided anew on it."""
        for number in range(1, self._attempts + 1):
            pending = change(number > 1)
            try:
                await self._writer.commit(pending.revert)
            except StoreConflict:
                if number == self._attempts:
                    raise
                if self._on_retry is not None:
                    self._on_retry()
                await asyncio.sleep(random.uniform(0, 0.005 * 2 ** (number - 1)))  # back off
                continue
            pending.saved()
            return pending.value
        raise AssertionError("unreachable")

    async def govern(self, change: Callable[[], Awaitable[Pending[T]]]) -> T:
        """One governance change, after the ones before it: ``change()`` may await before it
        changes the state (nothing awaits between its change and the save); saved, logged to
        the audit file, announced (``on_change``), then its value."""
        async with self._lock:
            pending = await change()
            if not pending.needs_write:
                return pending.value
            await self._writer.commit(pending.revert)
            await self._changed()
            pending.saved()
            return pending.value

    async def write_then_adopt(
        self,
        prepare: Callable[[], PreparedManifest],
        adopt: Callable[[PreparedManifest], T],
    ) -> T:
        """Prepare a state in a worker thread (validation and key generation can take a
        while), write it, and only then ``adopt`` it: a failed write changes nothing."""
        async with self._lock:
            prepared = await asyncio.to_thread(prepare)
            await self._writer.write(self._held.seal(prepared))
            result = adopt(prepared)
            await self._changed()
        return result

    @contextlib.asynccontextmanager
    async def serialised(self) -> AsyncIterator[None]:
        """For reads that must see no governance change half-way (the audit log and its head,
        a recovery offer and the session it creates)."""
        async with self._lock:
            yield

    async def _changed(self) -> None:
        await self.flush_audit()
        if self._on_change is not None:
            self._on_change()

    async def flush_audit(self) -> None:
        """Append the saved entries that the log file does not hold yet."""
        lines = self._held.unflushed_audit()
        if not lines:
            return
        if await asyncio.to_thread(_appended, self._audit, lines):
            self._held.audit_flushed(lines)


def record_start(
    change: Callable[[], Pending[None]],
    held: StateHolder,
    store: Store,
    reload: Callable[[bytes | None], None],
    audit: AuditSink,
) -> None:
    """Save the audit entry of a start (``change``), before the server runs: written to
    ``store`` at once when there is a saved state, read again and recorded anew after a lost
    compare-and-swap; then appended to the log with anything a crash kept from it. A failure
    is logged: the Coordinator starts anyway."""
    for attempt in range(1, START_ATTEMPTS + 1):
        start = change()
        if not start.needs_write:
            break
        try:
            store.save(held.sealed_state())
        except StoreConflict as exc:
            # Another Coordinator saved since this one read the store: read it again.
            start.revert()
            if attempt == START_ATTEMPTS:
                log.error("the start could not be recorded: %s", exc)
                break
            mark = store.revision
            try:
                reload(store.load())
            except SealError as reload_failed:
                store.rewind(mark)  # not adopted: the next save must conflict, not overwrite
                log.error("the start could not be recorded: %s", reload_failed)
                break
        except SealError as exc:
            start.revert()
            log.error("the start could not be recorded: %s", exc)
            break
        else:
            break
    if held.state is State.ACTIVE:
        lines = held.unflushed_audit()
        if _appended(audit, lines):
            held.audit_flushed(lines)


def _appended(audit: AuditSink, lines: Sequence[str]) -> bool:
    """Append ``lines`` the log does not hold yet; False (logged) when it cannot be written."""
    try:
        audit.append_missing(lines)
    except SealError as exc:
        # The entries stay in the sealed state and are appended by the next flush or start.
        log.error("audit log not written, retried with the next change: %s", exc)
        return False
    return True
