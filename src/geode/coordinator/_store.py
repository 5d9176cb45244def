"""Where the sealed state lives. The directory store is the default, embedded backend.

A store holds one opaque sealed blob. ``save`` replaces it atomically: the new blob is written to a
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
from geode.errors import SealError

__all__ = ["DataDirectoryLock", "DirectoryStore", "StateStore"]

STATE_FILE = "state.sealed"
LOCK_FILE = "coordinator.lock"


class StateStore(Protocol):
    def load(self) -> bytes | None: ...
    def save(self, blob: bytes) -> None: ...
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
    """Sealed state in ``<dir>/state.sealed``, guarded by ``<dir>/coordinator.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = DataDirectoryLock(directory)

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

    def close(self) -> None:
        self._lock.close()
