"""Where Geode keeps its local files, and how it writes the private ones.

Like ``geode.errors``, this module imports nothing from Geode, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PlacedFile",
    "SymlinkRefused",
    "create_file_at",
    "create_private_file",
    "is_private",
    "open_directory",
    "place_file",
    "remove_file_at",
    "remove_recorded_file",
    "replace_file",
    "replace_private_file",
    "wipe_file",
    "wipe_file_at",
    "wipe_tree",
    "writable_tree",
    "xdg_path",
]


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
    """Replace ``path`` atomically with a file of mode 0600 holding ``data`` (``replace_file``);
    the file replaced is zeroed once no name refers to it any more (a renewed key's old one)."""
    replace_file(path, data, mode=0o600, wipe_replaced=True)


def replace_file(path: Path, data: bytes, *, mode: int, wipe_replaced: bool = False) -> None:
    """Replace ``path`` atomically with a file of ``mode`` holding ``data``: written to a
    temporary file beside it, flushed, renamed over it, and the directory flushed, so a crash
    leaves the old file or the new one, never a mix. A link at ``path`` is replaced itself,
    never written through. With ``wipe_replaced``, the regular file replaced is zeroed after the
    rename through a descriptor taken before it, if the rename left it with no name at all (one
    hard-linked elsewhere keeps its content). ``OSError`` as the system gives it."""
    replaced = _open_regular_path(path) if wipe_replaced else -1
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
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
        if replaced >= 0:
            with contextlib.suppress(OSError):
                _zero(replaced, os.fstat(replaced), names=0)
    finally:
        if replaced >= 0:
            os.close(replaced)


def is_private(path: Path) -> bool:
    """True when no one but the owner can read or write ``path``."""
    return not stat.S_IMODE(path.stat().st_mode) & 0o077


# --- Paths a manifest or a caller names: no symbolic link is ever followed ---------------------
#
# A manifest says where a service's secret files go, and ``geode run`` writes them there and
# deletes them at exit. If any directory on the way were a symbolic link, whoever can plant one
# (another user of a shared directory, an earlier process of the service, the host) would choose
# where the secret lands and which file is deleted. So every component is resolved without
# following a link: ``openat2`` with ``RESOLVE_NO_SYMLINKS`` where Linux offers it, else a walk
# one directory descriptor at a time with ``O_NOFOLLOW``. Files are created relative to the
# verified directory descriptor (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600) and deleted
# through the same descriptor (``unlinkat``), never by path again, so a link swapped in after the
# check changes nothing.

_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64 (and every architecture since 5.6)
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_AT_FDCWD = -100
_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SymlinkRefused(OSError):
    """A path that would be followed through a symbolic link: ``filename`` is the whole path,
    ``component`` the link on the way (``ELOOP``)."""

    def __init__(self, path: str, component: str) -> None:
        super().__init__(
            errno.ELOOP, f"{component} is a symbolic link; refused (links are never followed)"
        )
        self.filename = path
        self.component = component


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _load_openat2() -> Callable[[int, bytes, int, int], int] | None:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    def openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
        how = _OpenHow(flags, 0, resolve)
        fd = int(
            syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(path),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return fd

    return openat2


# ``None`` once the system said it has no openat2 (ENOSYS, or EPERM from a seccomp filter):
# the directory walk is used from then on.
_openat2 = _load_openat2()


def _components(path: str, relative: bool) -> list[str]:
    if "\0" in path:
        raise OSError(errno.EINVAL, "a NUL byte in the path", path)
    if relative == path.startswith("/"):
        raise OSError(
            errno.EINVAL, "expected a relative path" if relative else "expected an absolute path"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EINVAL, "'..' is not allowed in the path", path)
    return parts


def _refuse_if_link(dir_fd: int, name: str, shown: str, full: str) -> None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise SymlinkRefused(full, shown)


def _first_link(start: int, parts: list[str], shown_base: str, full: str) -> None:
    """Raise ``SymlinkRefused`` naming the first link among ``parts``, walking from ``start``."""
    fd = os.dup(start)
    try:
        for i, name in enumerate(parts):
            _refuse_if_link(fd, name, _join(shown_base, parts[: i + 1]), full)
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                return
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)


def _join(base: str, parts: list[str]) -> str:
    return os.path.join(base, *parts) if parts else base


def _walk(start: int, parts: list[str], shown_base: str, full: str, create: bool) -> int:
    """The directory walk: one ``openat(O_NOFOLLOW | O_DIRECTORY)`` per component, creating a
    missing one (mode 0700) when asked."""
    fd = os.dup(start)
    try:
        for i, name in enumerate(parts):
            shown = _join(shown_base, parts[: i + 1])
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                next_fd = _open_component(fd, name, shown, full)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    _refuse_if_link(fd, name, shown, full)
                raise OSError(exc.errno, exc.strerror, shown) from None
            # O_PATH | O_NOFOLLOW opens a link itself rather than failing on it: check.
            if stat.S_ISLNK(os.fstat(next_fd).st_mode):
                os.close(next_fd)
                raise SymlinkRefused(full, shown)
            os.close(fd)
            fd = next_fd
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _open_component(fd: int, name: str, shown: str, full: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse_if_link(fd, name, shown, full)
        raise OSError(exc.errno, exc.strerror, shown) from None


def open_directory(
    path: str | os.PathLike[str],
    *,
    at: int | None = None,
    create: bool = False,
    shown_as: str = "",
) -> int:
    """A descriptor of the directory ``path`` reached without following any symbolic link.

    ``path`` is absolute, or relative to the directory descriptor ``at`` (and then cannot leave
    it). With ``create``, missing directories are made with mode 0700. A link anywhere on the way
    raises ``SymlinkRefused`` naming it; other failures are ``OSError`` naming the component.
    ``shown_as`` is how errors name the directory ``at`` (a relative path is shown under it).
    The caller closes the descriptor.
    """
    global _openat2
    relative = at is not None
    parts = _components(os.fspath(path), relative)
    shown_base = shown_as if relative else "/"
    full = _join(shown_base, parts)
    start = at if at is not None else os.open("/", _DIR_FLAGS)
    try:
        if _openat2 is not None:
            resolve = _RESOLVE_NO_SYMLINKS | (_RESOLVE_BENEATH if relative else 0)
            try:
                return _openat2(start, "/".join(parts).encode() or b".", _DIR_FLAGS, resolve)
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EPERM):
                    _openat2 = None  # not offered here: walk from now on
                elif exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    _first_link(start, parts, shown_base, full)
                    raise OSError(exc.errno, exc.strerror, full) from None
                elif exc.errno != errno.ENOENT or not create:
                    raise OSError(exc.errno, exc.strerror, full) from None
        return _walk(start, parts, shown_base, full, create)
    finally:
        if at is None:
            os.close(start)


@dataclass(frozen=True)
class PlacedFile:
    """A file created by ``place_file``: the verified directory it was created in (an open
    descriptor) and its name there. ``remove`` deletes it through that descriptor."""

    path: Path
    dir_fd: int
    name: str
    device: int
    inode: int

    def remove(self) -> None:
        """Zero and unlink the file in the verified directory if the name still refers to it
        (``remove_file_at``: anything put under the name since is left alone, never followed
        or zeroed), then close the directory."""
        try:
            remove_file_at(self.dir_fd, self.name, self.device, self.inode)
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)


def create_file_at(
    dir_fd: int, name: str, data: bytes, *, shown: str | None = None
) -> os.stat_result:
    """Create ``name`` in the directory ``dir_fd`` with mode 0600 holding ``data``: refused when
    anything exists under the name (a link included, which is named as such)."""
    shown = shown or name
    try:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
    except FileExistsError:
        _refuse_if_link(dir_fd, name, shown, shown)
        raise FileExistsError(
            errno.EEXIST, "already exists; refused (never overwritten)", shown
        ) from None
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def place_file(
    path: str | os.PathLike[str], data: bytes, *, at: int | None = None, shown_as: str = ""
) -> PlacedFile:
    """Create the file ``path`` (absolute, or relative to the directory descriptor ``at``, which
    errors name ``shown_as``) with mode 0600 holding ``data``, its missing directories made with
    mode 0700, no link followed on the way or at the end (``SymlinkRefused``), nothing
    overwritten (``FileExistsError``)."""
    given = os.fspath(path)
    parent, _, name = given.rpartition("/")
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "not a file name", given)
    if given.startswith("/") and not parent:
        parent = "/"
    full = given if at is None else _join(shown_as, [given])
    try:
        dir_fd = open_directory(parent or ".", at=at, create=True, shown_as=shown_as)
    except SymlinkRefused as exc:
        raise SymlinkRefused(full, exc.component) from None
    try:
        info = create_file_at(dir_fd, name, data, shown=full)
    except BaseException:
        os.close(dir_fd)
        raise
    return PlacedFile(Path(full), dir_fd, name, info.st_dev, info.st_ino)


def remove_recorded_file(path: str, device: int, inode: int) -> bool:
    """Delete ``path`` if it is still the regular file (``device``, ``inode``) created earlier,
    reached without following a link: what a launcher that died left behind. True if removed."""
    parent, _, name = path.rpartition("/")
    try:
        dir_fd = open_directory(parent or "/")
    except OSError:
        return False
    try:
        return remove_file_at(dir_fd, name, device, inode)
    finally:
        os.close(dir_fd)


def remove_file_at(dir_fd: int, name: str, device: int, inode: int) -> bool:
    """Zero and unlink ``name`` in the directory ``dir_fd`` if it is the regular file
    (``device``, ``inode``). True if removed.

    The file is opened once (no link followed) and everything is decided on that descriptor:
    its identity is checked, and it is zeroed, through the descriptor, so a file swapped in under
    the name after a check is never the one zeroed. The name is unlinked only if it still refers
    to that file; the window left between that last look and ``unlinkat`` can at worst unlink a
    name put there in it, never zero anything. A file that cannot be opened for writing is
    unlinked, after the same identity check, without being zeroed."""
    fd = _open_regular(dir_fd, name)
    try:
        info = os.fstat(fd) if fd >= 0 else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (device, inode):
            return False
        if fd >= 0:
            _zero(fd, info)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def wipe_file_at(dir_fd: int, name: str) -> None:
    """Overwrite the regular file ``name`` in ``dir_fd`` with zeros before it is unlinked: on a
    tmpfs the pages that held a secret are then cleared, not just freed. A link is not followed,
    anything but a regular file is left alone, and so is a file with another name elsewhere
    (``st_nlink > 1``): a hard link planted beside Geode's files may point at anyone's data."""
    fd = _open_regular(dir_fd, name)
    if fd < 0:
        return
    try:
        _zero(fd, os.fstat(fd))
    except OSError:
        pass
    finally:
        os.close(fd)


def wipe_file(path: Path) -> None:
    """Zero (``wipe_file_at``) and delete the file ``path`` in a directory of Geode's own; a
    link at ``path`` is deleted itself, never followed. Nothing if it is missing."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        wipe_file_at(dir_fd, path.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _open_regular(dir_fd: int, name: str) -> int:
    """``name`` opened for writing if it looks like a regular file (no link followed), else -1.
    The look first spares opening a device or a FIFO at all; the descriptor's own ``fstat``
    decides what is done with it."""
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return -1
        return os.open(
            name,
            os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return -1


def _open_regular_path(path: Path) -> int:
    """``_open_regular`` for ``path`` (its directory is followed, not the file), or -1."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return _open_regular(dir_fd, path.name)
    finally:
        os.close(dir_fd)


def _zero(fd: int, info: os.stat_result, *, names: int = 1) -> None:
    """Zero the open file ``fd`` (whose ``fstat`` is ``info``) if it is a regular file with
    ``names`` names (the one about to be unlinked, or none left): never one named elsewhere."""
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != names:
        return
    zeros = bytes(min(info.st_size, 1 << 16))
    done = 0
    while done < info.st_size:
        done += os.pwrite(fd, zeros[: min(info.st_size - done, len(zeros))], done)
    os.fsync(fd)


def writable_tree(path: Path) -> None:
    """Give the owner write permission on every directory and regular file under the directory
    ``path`` (and search permission on the directories), links not followed, so that a tree made
    read-only (a staged bundle) can be zeroed and removed. Quietly does what it can."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            os.chmod(path, stat.S_IMODE(info.st_mode) | 0o700)
    with contextlib.suppress(OSError):
        for _dir, subdirs, names, dir_fd in os.fwalk(path, follow_symlinks=False):
            for name in [*subdirs, *names]:
                with contextlib.suppress(OSError):
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    extra = 0o700 if stat.S_ISDIR(info.st_mode) else 0o200
                    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                        os.chmod(name, stat.S_IMODE(info.st_mode) | extra, dir_fd=dir_fd)


def wipe_tree(path: Path) -> None:
    """Zero every regular file under the directory ``path`` (links are not followed), then remove
    the tree; a read-only tree is made writable first (``writable_tree``)."""
    if not path.exists():
        return
    writable_tree(path)
    with contextlib.suppress(OSError):
        for _dir, _subdirs, names, dir_fd in os.fwalk(path, follow_symlinks=False):
            for name in names:
                wipe_file_at(dir_fd, name)
    shutil.rmtree(path, ignore_errors=True)
