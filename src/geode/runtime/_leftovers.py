"""What a ``geode run`` that died leaves behind, and its removal at the next start.

A launcher killed outright (SIGKILL, the OOM killer) runs no clean-up: its private directory on
the tmpfs (the instance key, the credentials, the manifest's files), the files it wrote at
absolute paths, and, had its watchdog died too, the app's process group would stay. So each
launcher keeps a record in its private directory, ``launcher.state``, locked (``flock``) for its
whole life. The lock goes with the process, however it dies: a record nobody holds belongs to a
dead launcher, and the next ``geode run`` on the same runtime directory kills what is left of
its process group, zeroes and deletes its files, and removes the directory.

The record is JSON lines, appended as things are made: the launcher (pid, service), each file
outside the private directory (path, device, inode: only that very file is deleted), the
process group (id and the start time of its leader, so a reused id is never killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from geode._files import PlacedFile, remove_recorded_file, wipe_tree
from geode._process import group_members, process_start_time

__all__ = ["STATE_FILE", "LauncherRecord", "clean_leftovers"]

log = logging.getLogger("geode.runtime")

STATE_FILE = "launcher.state"
_DIR_PREFIX = "geode-"


class LauncherRecord:
    """The live launcher's record in its private directory, held locked until ``close``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def create(cls, directory: Path, service: str) -> LauncherRecord:
        """Write and lock the record. It is locked under a scratch name and only then renamed
        into place, so another launcher's clean-up never sees it unlocked."""
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        scratch = f".{STATE_FILE}.new"
        try:
            fd = os.open(
                scratch,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
            record = cls(fd)
            record._append({"launcher": os.getpid(), "service": service})
            os.rename(scratch, STATE_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        return record

    def _append(self, entry: dict[str, int | str]) -> None:
        os.write(self._fd, json.dumps(entry).encode() + b"\n")

    def file(self, placed: PlacedFile) -> None:
        self._append({"file": str(placed.path), "device": placed.device, "inode": placed.inode})

    def group(self, pgid: int) -> None:
        start = process_start_time(pgid)
        if start is not None:
            self._append({"group": pgid, "start": start})

    def close(self) -> None:
        """Release the lock (once everything the record names is gone)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclass(frozen=True)
class _Leftovers:
    service: str
    launcher: int
    files: tuple[tuple[str, int, int], ...]
    groups: tuple[tuple[int, int], ...]


def _read(fd: int) -> _Leftovers:
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    service, launcher = "?", 0
    files: list[tuple[str, int, int]] = []
    groups: list[tuple[int, int]] = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            if "launcher" in entry:
                service, launcher = str(entry["service"]), int(entry["launcher"])
            elif "file" in entry:
                files.append((str(entry["file"]), int(entry["device"]), int(entry["inode"])))
            elif "group" in entry:
                groups.append((int(entry["group"]), int(entry["start"])))
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by the launcher's death
    return _Leftovers(service, launcher, tuple(files), tuple(groups))


def _kill_group(pgid: int, start: int, timeout: float = 5.0) -> None:
    """SIGKILL the group the dead launcher started, if it is still that group: its leader with
    the recorded start time, or, the leader gone, members no older than it (an id still used as
    a group id is not given to a new process)."""
    members = group_members(pgid)
    if pgid in members:
        ours = members[pgid] == start
    else:
        ours = bool(members) and all(started >= start for started in members.values())
    if not ours:
        return
    log.warning("killing process group %d, left running by a launcher that died", pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def clean_leftovers(base: Path) -> int:
    """Remove what dead launchers of this user left in ``base`` (the runtime directory); the
    number of private directories removed. Records still locked belong to live launchers and
    are left alone; so is anything not owned by this user or not a plain directory."""
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(_DIR_PREFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if _clean_one(Path(entry.path)):
            removed += 1
    return removed


def _clean_one(directory: Path) -> bool:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fd = os.open(STATE_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False  # not a launcher's directory (or not yet one)
    finally:
        os.close(dir_fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its launcher is alive
        leftovers = _read(fd)
        for pgid, start in leftovers.groups:
            _kill_group(pgid, start)
        gone = sum(remove_recorded_file(*recorded) for recorded in leftovers.files)
        wipe_tree(directory)
        log.warning(
            "removed what the launcher of %s (pid %d) left when it died: %s and %d files",
            leftovers.service,
            leftovers.launcher,
            directory,
            gone,
        )
        return True
    finally:
        os.close(fd)
