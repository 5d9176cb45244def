"""Bundle measurement for simulation mode, and the one walk of a bundle everything else uses.

``bundle_entries`` is the walk: staging (``geode.runtime``), the Gramine manifest and
``measure_bundle`` all see a bundle through it, so they agree on what is skipped and what a
link is; each of them refuses a ``special`` entry (a device, FIFO or socket has no stable
content). It never follows a link below the root: each directory is opened relative to its
parent's descriptor with ``O_DIRECTORY | O_NOFOLLOW`` and each file with ``O_NOFOLLOW``, and the
descriptor must be the very entry that was listed (device and inode), so an entry swapped for a
link or another file during the walk is refused (``BundleError``), never followed. The root
itself is followed (a bundle may be given by a link). ``__pycache__/``
directories and ``*.pyc`` files are skipped: Python writes them as it runs, and an installed
package would otherwise drift from its own measurement; what is not measured must not run.

The measurement hashes, per entry in sorted order of its relative POSIX path (compared as UTF-8
bytes), a kind tag, the path, a normalised mode and the content:

* a regular file: mode ``0755`` if any execute bit is set, else ``0644`` (as git records it, so
  the measurement does not depend on the umask of the checkout), then SHA-256 of its bytes;
* a directory: its path only (so an empty directory counts);
* a symbolic link: its target text, never followed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from geode.errors import GeodeError

__all__ = ["MEASUREMENT_DOMAIN", "BundleEntry", "BundleError", "bundle_entries", "measure_bundle"]

MEASUREMENT_DOMAIN = b"geode-bundle-v1\0"
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

EntryKind = Literal["file", "dir", "link", "special"]


class BundleError(GeodeError):
    """A bundle cannot be measured (or walked)."""


def _skipped(name: str, is_dir: bool) -> bool:
    return (is_dir and name == "__pycache__") or (not is_dir and name.endswith(".pyc"))


def _same(fd: int, info: os.stat_result) -> bool:
    now = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)


@dataclass(frozen=True)
class BundleEntry:
    """One entry of a bundle: ``rel`` its relative POSIX path, ``kind``, ``mode`` (``st_mode``
    as listed), ``path`` (the root joined with ``rel``, for messages and for what is built
    from it). ``open`` and ``read_link`` work through the descriptor of its directory, so they
    are valid only while the walk is at this entry."""

    rel: str
    kind: EntryKind
    mode: int
    path: Path
    _info: os.stat_result
    _dir_fd: int

    @property
    def name(self) -> str:
        return self.rel.rpartition("/")[2]

    def open(self) -> int:
        """A read-only descriptor of this file (``kind == "file"``), checked to be the entry
        listed; ``BundleError`` if it was replaced since."""
        try:
            fd = os.open(self.name, _FILE_OPEN, dir_fd=self._dir_fd)
        except OSError as exc:
            raise BundleError(f"cannot read {self.rel}: {exc.strerror}") from None
        if not _same(fd, self._info):
            os.close(fd)
            raise BundleError(f"{self.rel} changed while the bundle was read")
        os.set_blocking(fd, True)
        return fd

    def sha256(self) -> bytes:
        """SHA-256 of this file's bytes (read through ``open``)."""
        digest = hashlib.sha256()
        fd = self.open()
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise BundleError(f"cannot read {self.rel}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return digest.digest()

    def read_link(self) -> str:
        """The target text of this link (``kind == "link"``), never followed."""
        try:
            return os.readlink(self.name, dir_fd=self._dir_fd)
        except OSError as exc:
            raise BundleError(f"cannot read the link {self.rel}: {exc.strerror}") from None


def _listing(fd: int, prefix: str) -> list[tuple[str, os.stat_result]]:
    try:
        with os.scandir(fd) as it:
            children = [(entry.name, entry.stat(follow_symlinks=False)) for entry in it]
    except OSError as exc:
        raise BundleError(f"cannot read {prefix or '.'}: {exc.strerror}") from None
    return sorted(
        (item for item in children if not _skipped(item[0], stat.S_ISDIR(item[1].st_mode))),
        key=lambda item: item[0].encode("utf-8", "surrogateescape"),
    )


def bundle_entries(directory: str | os.PathLike[str]) -> Iterator[BundleEntry]:
    """Every entry of the bundle ``directory``, depth first (a directory before what it holds;
    the order within a directory is by name, not the measurement's order). ``BundleError`` for
    a directory replaced during the walk, or what cannot be read."""
    root = Path(directory)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise BundleError(f"not a directory: {root}") from None
    stack: list[tuple[int, str, Iterator[tuple[str, os.stat_result]]]] = [
        (root_fd, "", iter(_listing(root_fd, "")))
    ]
    try:
        while stack:
            dir_fd, prefix, children = stack[-1]
            child = next(children, None)
            if child is None:
                os.close(dir_fd)
                stack.pop()
                continue
            name, info = child
            rel = prefix + name
            mode = info.st_mode
            kind: EntryKind
            if stat.S_ISREG(mode):
                kind = "file"
            elif stat.S_ISDIR(mode):
                kind = "dir"
            elif stat.S_ISLNK(mode):
                kind = "link"
            else:
                kind = "special"
            yield BundleEntry(rel, kind, mode, root / rel, info, dir_fd)
            if kind == "dir":
                try:
                    fd = os.open(name, _DIR_OPEN, dir_fd=dir_fd)
                except OSError as exc:
                    raise BundleError(f"cannot read {rel}: {exc.strerror}") from None
                if not _same(fd, info):
                    os.close(fd)
                    raise BundleError(f"{rel} changed while the bundle was read")
                stack.append((fd, rel + "/", iter(_listing(fd, rel + "/"))))
    finally:
        for dir_fd, _prefix, _children in stack:
            os.close(dir_fd)


def measure_bundle(directory: str | os.PathLike[str]) -> bytes:
    """SHA-256 measurement of a code bundle (see the module docstring for the walk)."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"not a directory: {root}")
    records: list[tuple[bytes, bytes]] = []
    for entry in bundle_entries(root):
        if entry.kind == "file":
            normalised = 0o755 if entry.mode & 0o111 else 0o644
            record = b"F" + normalised.to_bytes(4, "big") + entry.sha256()
        elif entry.kind == "dir":
            record = b"D"
        elif entry.kind == "link":
            target = os.fsencode(entry.read_link())
            record = b"L" + len(target).to_bytes(4, "big") + target
        else:
            raise BundleError(f"special file in bundle: {entry.rel}")
        records.append((entry.rel.encode("utf-8", "surrogateescape"), record))
    records.sort(key=lambda item: item[0])
    digest = hashlib.sha256(MEASUREMENT_DOMAIN)
    for rel, record in records:
        digest.update(len(rel).to_bytes(4, "big") + rel + record)
    return digest.digest()
