"""Where Geode keeps its local files, and how it writes the private ones.

Like ``geode.errors``, this module imports nothing from Geode, so every layer may use it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["create_private_file", "is_private", "replace_private_file", "xdg_path"]


def xdg_path(kind: str, *parts: str) -> Path:
    """``$XDG_DATA_HOME/geode/...`` (``kind="data"``) or ``$XDG_CONFIG_HOME/geode/...``."""
    variable, default = {
        "data": ("XDG_DATA_HOME", (".local", "share")),
        "config": ("XDG_CONFIG_HOME", (".config",)),
    }[kind]
    base = os.environ.get(variable) or os.path.join(Path.home(), *default)
    return Path(base, "geode", *parts)


def create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``, flushed to disk.

    Returns False, writing nothing, when the file already exists (another process may have
    created it first). Missing parent directories are created with mode 0700.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def replace_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a file of mode 0600 holding ``data``: written to a
    temporary file beside it, flushed, renamed over it, and the directory flushed, so a crash
    leaves the old file or the new one, never a mix. ``OSError`` as the system gives it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_private(path: Path) -> bool:
    """True when no one but the owner can read or write ``path``."""
    return not stat.S_IMODE(path.stat().st_mode) & 0o077
