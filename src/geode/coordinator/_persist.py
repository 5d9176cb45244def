"""Group commit: concurrent state changes share one sealed write.

A caller changes the in-memory state, then awaits ``commit(revert)``, with no ``await`` in
between. The writer seals a snapshot of the state *after* every change whose caller is waiting, so
one write can acknowledge many changes; nobody is acknowledged before a write that includes their
change has reached the disk. When a write fails, the writer undoes that batch's changes (their
``revert``s, newest first) before it takes another snapshot, so a change answered with an error
never reaches the disk with a later batch.

On a shared store (etcd) a write can lose a compare-and-swap to another Coordinator
(``StoreConflict``): the batch is undone as for any failure, and the writer then reads the
store's state and hands it to ``reload`` before anything else is written, so the next change
builds on the winner's state instead of conflicting forever. The callers get the conflict (409)
and may retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from geode.coordinator._store import Store
from geode.errors import StoreConflict

__all__ = ["GroupCommit"]

log = logging.getLogger("geode.coordinator")


class GroupCommit:
    def __init__(
        self,
        snapshot: Callable[[], bytes],
        store: Store,
        reload: Callable[[bytes | None], None] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._store = store
        self._reload = reload
        self._pending: asyncio.Future[None] | None = None
        self._reverts: list[Callable[[], None]] = []  # of the changes in the pending batch
        self._writer: asyncio.Task[None] | None = None
        self._disk = asyncio.Lock()  # one write at a time, group or direct
        self.writes = 0

    async def write(self, blob: bytes) -> None:
        """Write ``blob`` itself (a state not yet adopted in memory), after any write under way."""
        async with self._disk:
            try:
                await asyncio.to_thread(self._store.save, blob)
            except StoreConflict:
                await self._read_again()
                raise
            self.writes += 1

    async def commit(self, revert: Callable[[], None] | None = None) -> None:
        """Until a write holding the caller's change is on disk; if it fails, ``revert`` has
        been called (by the writer, before anything else is written) and the error is raised."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
        if revert is not None:
            self._reverts.append(revert)
        waiter = self._pending
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        await asyncio.shield(waiter)

    async def _write_all(self) -> None:
        while self._pending is not None:
            async with self._disk:
                # The batch is taken only once the write can start: a read of the store (a
                # conflict's, or ``follow``'s) that holds ``_disk`` meanwhile still sees it
                # waiting, and fails it if the state it was made on is replaced.
                if self._pending is None:
                    return
                waiter, self._pending = self._pending, None
                reverts, self._reverts = self._reverts, []
                try:
                    blob = self._snapshot()
                    await asyncio.to_thread(self._store.save, blob)
                    self.writes += 1
                except Exception as exc:
                    _undo(reverts)
                    if isinstance(exc, StoreConflict):
                        await self._read_again()
                    _fail(waiter, exc)
                else:
                    waiter.set_result(None)

    async def follow(self, moved_on: Callable[[], bool]) -> bool:
        """Adopt the store's state when ``moved_on()`` (run in a thread) says another
        Coordinator saved since this one last read or wrote it, so that reads here catch up
        without waiting for a conflict. Does nothing while a write is under way or changes wait
        for one (that write finds out anyway). True when a newer state was read."""
        if self._reload is None or self._pending is not None or self._disk.locked():
            return False
        async with self._disk:
            if not await asyncio.to_thread(moved_on) or self._pending is not None:
                return False
            await self._read_again()
            return True

    async def _read_again(self) -> None:
        """After a lost compare-and-swap: adopt the state the store holds now (the caller holds
        ``_disk``). A failure here is logged; the next write then conflicts and tries again:
        the store's compare-and-swap base moves to the state read only if it is adopted."""
        if self._reload is None:
            return
        mark = self._store.revision
        try:
            blob = await asyncio.to_thread(self._store.load)
        except Exception as exc:
            log.error("the shared state could not be read again after a conflict: %s", exc)
            return
        # Nothing awaits from here on. The changes waiting for the next write were made on the
        # state about to be replaced: undone there, they get the conflict too (kept, they would
        # be acknowledged without being in the state that is written).
        if self._pending is not None:
            waiter, self._pending = self._pending, None
            reverts, self._reverts = self._reverts, []
            _undo(reverts)
            _fail(waiter, StoreConflict("the shared state changed; the change was not saved"))
        try:
            self._reload(blob)
        except Exception as exc:
            self._store.rewind(mark)  # what this Coordinator serves is still the older state
            log.error("the shared state read after a conflict cannot be adopted: %s", exc)
        else:
            log.info("another Coordinator changed the shared state; read it again")


def _undo(reverts: list[Callable[[], None]]) -> None:
    for revert in reversed(reverts):
        try:
            revert()
        except Exception:  # the others must still be undone
            log.exception("undoing a change whose write failed")


def _fail(waiter: asyncio.Future[None], exc: BaseException) -> None:
    waiter.set_exception(exc)
    # Retrieve it here too, so a waiter that was cancelled leaves no warning behind.
    waiter.exception()
