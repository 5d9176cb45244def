"""The data directory of a Geode database on disk: what is there (a Geode directory, an empty
one or none), the exclusive lock one ``geode db serve`` holds on it, moving a newly built one
into place, and keeping everything in it private."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from geode.db._key import KEY_CHECK_FILE
from geode.errors import DatabaseError

__all__ = ["inspect_datadir", "lock_datadir", "make_private", "move_into_place"]

log = logging.getLogger("geode.db")


def inspect_datadir(datadir: Path) -> bool:
    """True for an existing Geode data directory, False for a missing or empty one."""
    if not datadir.exists():
        return False
    if not datadir.is_dir():
        raise DatabaseError(f"{datadir} is not a directory")
    if not any(datadir.iterdir()):
        return False
    if not (datadir / KEY_CHECK_FILE).exists():
        raise DatabaseError(
            f"{datadir} is not empty and has no {KEY_CHECK_FILE}: "
            "not a Geode database directory; nothing was changed"
        )
    return True


def lock_datadir(datadir: Path) -> int:
    """An exclusive ``flock`` on ``datadir``: the descriptor holding it (closing it releases)."""
    fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseError(f"{datadir} is in use by another geode db serve") from None
    return fd


def move_into_place(staging: Path, datadir: Path) -> None:
    if not datadir.exists():
        staging.rename(datadir)
        return
    # The key check goes last: a directory without it is never taken for a complete one.
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == KEY_CHECK_FILE):
        entry.rename(datadir / entry.name)
    staging.rmdir()


def make_private(datadir: Path) -> None:
    """Take group and other permissions off everything in the data directory (itself
    included): MariaDB and Geode create it all private now, but a directory made by an earlier
    version, or a mount point filled in place, may still have files others can read. Links are
    neither followed nor changed."""
    changed = 0
    for directory, subdirs, names, dir_fd in os.fwalk(datadir, follow_symlinks=False):
        entries = [(".", os.stat(dir_fd).st_mode)] if directory == str(datadir) else []
        for name in [*subdirs, *names]:
            entries.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode))
        for name, mode in entries:
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                continue
            if name == ".":
                os.chmod(dir_fd, stat.S_IMODE(mode) & 0o700)
            else:
                os.chmod(name, stat.S_IMODE(mode) & 0o700, dir_fd=dir_fd)
            changed += 1
    if changed:
        log.warning("%s: made %d entries private (no access for group or others)", datadir, changed)
