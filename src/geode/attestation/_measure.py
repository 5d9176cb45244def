"""Bundle measurement for simulation mode: a canonical walk of a directory.

The walk visits every entry in sorted order of its relative POSIX path (compared as UTF-8 bytes) and
hashes, per entry, a kind tag, the path, a normalised mode and the content:

* a regular file: mode ``0755`` if any execute bit is set, else ``0644`` (as git records it, so
  the measurement does not depend on the umask of the checkout), then SHA-256 of its bytes;
* a directory: its path only (so an empty directory counts);
* a symbolic link: its target text, never followed;
* anything else (device, FIFO, socket) is refused: it has no stable content.

``__pycache__/`` directories and ``*.pyc`` files are skipped: Python writes them as it runs, and
an installed package would otherwise drift from its own measurement.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from geode.errors import GeodeError

__all__ = ["MEASUREMENT_DOMAIN", "BundleError", "measure_bundle"]

MEASUREMENT_DOMAIN = b"geode-bundle-v1\0"


class BundleError(GeodeError):
    """A bundle cannot be measured."""


def _skipped(name: str, is_dir: bool) -> bool:
    return (is_dir and name == "__pycache__") or (not is_dir and name.endswith(".pyc"))


def _entries(root: Path) -> list[tuple[bytes, os.stat_result, Path]]:
    found: list[tuple[bytes, os.stat_result, Path]] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            children = list(os.scandir(directory))
        except OSError as exc:
            raise BundleError(f"cannot read {directory}: {exc.strerror}") from None
        for entry in children:
            st = entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if _skipped(entry.name, is_dir):
                continue
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
            found.append((rel, st, path))
            if is_dir:
                stack.append(path)
    found.sort(key=lambda item: item[0])
    return found


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    return digest.digest()


def measure_bundle(directory: str | os.PathLike[str]) -> bytes:
    """SHA-256 measurement of a code bundle (see the module docstring for the walk)."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"not a directory: {root}")
    digest = hashlib.sha256(MEASUREMENT_DOMAIN)
    for rel, st, path in _entries(root):
        mode = st.st_mode
        if stat.S_ISREG(mode):
            normalised = 0o755 if mode & 0o111 else 0o644
            record = b"F" + normalised.to_bytes(4, "big") + _file_digest(path)
        elif stat.S_ISDIR(mode):
            record = b"D"
        elif stat.S_ISLNK(mode):
            target = os.fsencode(os.readlink(path))
            record = b"L" + len(target).to_bytes(4, "big") + target
        else:
            raise BundleError(f"special file in bundle: {rel.decode(errors='replace')}")
        digest.update(len(rel).to_bytes(4, "big") + rel + record)
    return digest.digest()
