"""Child processes that do not outlive their parent.

Like ``geode.errors``, this module imports nothing from Geode, so every layer may use it. It is
also run as a script (``python -I -S _process.py FD PGID``): the group watchdog, which needs
nothing but the standard library and so starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["GroupWatchdog", "group_members", "parent_death_signal", "process_start_time"]

_PR_SET_PDEATHSIG = 1
_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_RELEASE = b"r"


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send the child ``signum`` when its parent dies (even by
    SIGKILL); ``None`` where that cannot be asked. ``prctl`` is looked up here, in the parent,
    so the child only makes the one system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return hook


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat`` from the state on (field 3), or ``None`` when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process for good,
    whereas a pid alone may be reused. ``None`` when it is gone (or where there is no /proc)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def group_members(pgid: int) -> dict[int, int]:
    """The live (not zombie) processes of the process group ``pgid``, with their start times,
    read from /proc; empty where there is none."""
    members: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members[int(entry)] = int(fields[19])
    return members


class GroupWatchdog:
    """A small process that joins a process group and, when the launcher that started it dies
    (even by SIGKILL), kills the whole group.

    ``PR_SET_PDEATHSIG`` reaches only the launcher's direct child: an app started through a
    shell has grandchildren it does not reach. The watchdog holds the read end of a pipe whose
    only write end is the launcher's: end of file means the launcher is gone, and the watchdog
    then SIGKILLs the group. Being a member itself, it keeps the group id from being reused by
    anyone else while it waits, so the kill cannot hit another group. It ignores the stop
    signals the launcher forwards to the group; ``release`` lets it go when the launcher has
    ended the group itself. Linux only (``None`` from ``start`` elsewhere)."""

    def __init__(self, process: subprocess.Popen[bytes], write_fd: int) -> None:
        self.process = process
        self._write_fd = write_fd

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, pgid: int) -> GroupWatchdog | None:
        if not sys.platform.startswith("linux"):
            return None
        read_fd, write_fd = os.pipe()  # both close-on-exec: only the watchdog gets the read end
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(read_fd), str(pgid)],
                pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            os.close(write_fd)
            return None
        finally:
            os.close(read_fd)
        return cls(process, write_fd)

    def release(self) -> None:
        """Let the watchdog exit without killing anything, and reap it."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, _RELEASE)
        with contextlib.suppress(OSError):
            os.close(self._write_fd)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _watch(read_fd: int, pgid: int) -> int:
    for signum in _IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    try:
        os.setpgid(0, pgid)
    except OSError:
        return 0  # the group is gone already: nothing to guard
    try:
        said = os.read(read_fd, 1)
    except OSError:
        said = b""
    if said != _RELEASE:
        os.killpg(pgid, signal.SIGKILL)  # the launcher died; this process goes with the group
    return 0


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1]), int(sys.argv[2])))
