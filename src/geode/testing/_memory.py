"""A ``Store`` in memory: what a test hands a Coordinator, or ``GroupCommit``, instead of a data
directory or etcd."""

from __future__ import annotations

import threading
import time

from geode.coordinator import MemoryAuditLog, SharedStore
from geode.errors import SealError, StoreConflict

__all__ = ["MemoryStore"]


class MemoryStore:
    """The sealed state in memory, saved by compare-and-swap as the etcd store saves it.

    ``save`` expects the revision this store last read or wrote; after ``write_elsewhere`` (as
    if another Coordinator had saved) the next save raises ``StoreConflict`` until the state is
    read again. Tests make the rest happen on demand: ``conflicts`` loses the next saves' swaps
    anyway, ``fail`` makes saves fail as a full disk does (``SealError``), and ``save_delay``
    makes each save take that many seconds, so that changes arrive while a write is under way.
    Nothing else shares it: ``shared`` is ``None``.
    """

    shared: SharedStore | None = None

    def __init__(self, *, save_delay: float = 0.0) -> None:
        self.audit = MemoryAuditLog()
        self.saved: list[bytes] = []  # every blob this store saved, oldest first
        self.conflicts = 0
        self.fail = False
        self.save_delay = save_delay
        self.closed = False
        self._blob: bytes | None = None
        self._head = 0  # the revision of what the store holds
        self._revision = 0  # the revision this store's next save expects
        self._lock = threading.Lock()  # GroupCommit saves and loads in threads

    @property
    def blob(self) -> bytes | None:
        """What the store holds now, whoever wrote it."""
        return self._blob

    @property
    def revision(self) -> int:
        return self._revision

    def load(self) -> bytes | None:
        with self._lock:
            self._revision = self._head
            return self._blob

    def save(self, blob: bytes) -> None:
        if self.save_delay:
            time.sleep(self.save_delay)
        with self._lock:
            if self.conflicts:
                self.conflicts -= 1
                raise StoreConflict("the shared state changed (MemoryStore.conflicts)")
            if self.fail:
                raise SealError("cannot write the state: the disk is full (MemoryStore.fail)")
            if self._revision != self._head:
                raise StoreConflict(
                    f"the shared state changed (revision {self._head}, this store had read "
                    f"{self._revision}); the change was not saved, retry it"
                )
            self._head += 1
            self._revision = self._head
            self._blob = blob
            self.saved.append(blob)

    def rewind(self, revision: int) -> None:
        with self._lock:
            self._revision = revision

    def write_elsewhere(self, blob: bytes) -> None:
        """Another writer saves ``blob``: this store's next save conflicts until it loads."""
        with self._lock:
            self._head += 1
            self._blob = blob

    def close(self) -> None:
        self.closed = True
