"""Where the sealed state lives: the ``Store`` interface, and the directory store, the default,
embedded backend (the etcd store is ``_etcd.EtcdStore``; an in-memory one is
``geode.testing.MemoryStore``).

A store holds one opaque sealed blob and the audit log that goes with it. Every store saves by
compare-and-swap on the ``revision`` it last read or wrote; for a store that nobody else writes (a
locked directory) that never fails. A store that several Coordinators share also offers
``shared``: what they coordinate through besides the state (who is listed, who writes, whether
another one saved), which the server uses only when it is there.

The directory store's ``save`` replaces it atomically: the new blob is written to a
temporary file, flushed to disk, renamed over the old one, and the directory is flushed, so a crash
leaves either the old or the new state, never a mix. A lock file keeps a second Coordinator off the
same directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

from geode._files import replace_private_file
from geode.coordinator._audit import AuditFile, AuditLog
from geode.errors import SealError

__all__ = ["DataDirectoryLock", "DirectoryStore", "SharedStore", "Store"]

STATE_FILE = "state.sealed"
LOCK_FILE = "coordinator.lock"


class SharedStore(Protocol):
    """What Coordinators sharing one store coordinate through besides the state: the listing
    of who runs (``_cluster``: whom a newcomer asks for the cluster key), the election of one
    writer of activations (``_forward``, on leases), and whether another one saved."""

    def moved_on(self) -> bool:
        """Whether someone saved since this store last read or wrote (the blob not read)."""
        ...

    def register(self, member: str, record: bytes) -> None:
        """List ``member`` with ``record`` until the store is closed."""
        ...

    def members(self) -> dict[str, bytes]: ...
    def grant(self, ttl: int) -> str: ...
    def keep_alive(self, lease: str) -> bool: ...
    def revoke(self, lease: str) -> None: ...
    def campaign(self, member: str, lease: str) -> str | None: ...


class Store(Protocol):
    """The sealed state of one Coordinator, or of several (``shared``).

    ``save`` raises ``StoreConflict`` when someone else saved since this store last read or
    wrote (nothing is written then) and ``SealError`` when it cannot write. ``load`` reads the
    state and moves the compare-and-swap base to it; a caller that does not adopt what it read
    goes back with ``rewind(revision)``, so that its next save conflicts rather than overwrite
    a state it never served.
    """

    @property
    def audit(self) -> AuditLog:
        """The audit log kept with this state."""
        ...

    @property
    def shared(self) -> SharedStore | None:
        """What Coordinators sharing this store coordinate through; ``None``: nobody else
        uses it."""
        ...

    @property
    def revision(self) -> int:
        """The compare-and-swap base the next ``save`` expects (0: none read or written)."""
        ...

    def load(self) -> bytes | None: ...
    def save(self, blob: bytes) -> None: ...
    def rewind(self, revision: int) -> None: ...
    def close(self) -> None: ...


class DataDirectoryLock:
    """``<dir>/coordinator.lock``, held while a Coordinator uses the data directory (its state on
    the directory store; its audit log with any store)."""

    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SealError(f"cannot use data directory {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise SealError(
                f"data directory {directory} is in use by another Coordinator"
            ) from None

    def close(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class DirectoryStore:
    """Sealed state in ``<dir>/state.sealed``, guarded by ``<dir>/coordinator.lock``; the audit
    log in ``<dir>/audit.log``. Nobody else writes a locked directory: its compare-and-swap
    never fails, and it has no revision to go back to."""

    shared: SharedStore | None = None
    revision = 0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = DataDirectoryLock(directory)
        self.audit: AuditLog = AuditFile(directory)

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SealError(f"cannot read {self.path}: {exc.strerror}") from None

    def save(self, blob: bytes) -> None:
        try:
            replace_private_file(self.path, blob)
        except OSError as exc:
            raise SealError(f"cannot write {self.path}: {exc.strerror}") from None

    def rewind(self, revision: int) -> None:
        pass

    def close(self) -> None:
        self._lock.close()
