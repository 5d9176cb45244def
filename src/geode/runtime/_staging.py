"""What ``geode run`` runs is what it measured: the bundle is staged and measured, and the
command runs from the staged copy.

``stage_bundle`` copies the bundle into a private directory (0700) of the runtime directory,
never following a symbolic link out of it, and measures the copy (``measure_bundle``); the
activation uses that measurement and the command runs from the copy (its working directory), so
changing the original after the launch changes nothing that runs. The copy is removed when the
launcher exits (and by the next launcher, when one was killed outright: ``_leftovers``).

The layout is ``<runtime dir>/geode-bundle-XXXXXXXX/`` (0700) holding the launcher's record
``launcher.state`` (``_leftovers.LauncherRecord``, locked for the launcher's life) and the copy,
``bundle/``: directories 0700, files 0700 or 0600 (execute bits kept, nothing readable by
others). The copy is made with ``os.scandir``, never following a link: a relative link that
stays inside the bundle is copied as a link, an absolute one or one that leads out is refused,
and so is a special file. ``__pycache__/`` and ``*.pyc`` are not copied: they are not measured,
so they must not run.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import BundleError, measure_bundle
from geode.errors import LaunchError
from geode.runtime._bundle import LOCK_FILE, BundleLock, read_lock
from geode.runtime._launcher import default_runtime_dir
from geode.runtime._leftovers import LauncherRecord, clean_leftovers

__all__ = ["STAGED_PREFIX", "StagedBundle", "is_inside", "remove_staged", "stage_bundle"]

# Staging directories in the runtime directory: geode-bundle-XXXXXXXX/{launcher.state,bundle/}.
STAGED_PREFIX = "geode-bundle-"
_COPY = "bundle"


@dataclass(frozen=True)
class StagedBundle:
    """A private copy of a bundle, its measurement, and its lock. ``record`` keeps the copy
    registered (locked) for the launcher's life, so that the next launcher removes it if this
    one is killed outright."""

    directory: Path
    measurement: bytes
    lock: BundleLock
    record: LauncherRecord | None = None

    @property
    def lock_file(self) -> Path:
        return self.directory / LOCK_FILE


def _skipped(name: str, is_dir: bool) -> bool:
    """What the measurement skips is not copied either: it must not run unmeasured."""
    return (is_dir and name == "__pycache__") or (not is_dir and name.endswith(".pyc"))


def _copy_file(source: str, info: os.stat_result, target: Path, shown: str) -> None:
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LaunchError(f"cannot read {shown} in the bundle: {exc.strerror}") from None
    try:
        now = os.fstat(src)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise LaunchError(f"{shown} in the bundle changed while it was copied")
        mode = 0o700 if info.st_mode & 0o111 else 0o600
        dst = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
        )
        try:
            os.fchmod(dst, mode)
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_tree(source: Path, target: Path) -> list[tuple[str, Path]]:
    """Copy ``source`` into the existing ``target``; the links made, (shown name, copy path)."""
    links: list[tuple[str, Path]] = []
    stack: list[tuple[Path, Path, str]] = [(source, target, "")]
    while stack:
        src_dir, dst_dir, prefix = stack.pop()
        try:
            entries = list(os.scandir(src_dir))
        except OSError as exc:
            raise LaunchError(f"cannot read {src_dir}: {exc.strerror}") from None
        for entry in entries:
            shown = prefix + entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise LaunchError(f"cannot read {shown} in the bundle: {exc.strerror}") from None
            mode = info.st_mode
            if _skipped(entry.name, stat.S_ISDIR(mode)):
                continue
            dst = dst_dir / entry.name
            if stat.S_ISDIR(mode):
                os.mkdir(dst, 0o700)
                stack.append((Path(entry.path), dst, shown + "/"))
            elif stat.S_ISREG(mode):
                _copy_file(entry.path, info, dst, shown)
            elif stat.S_ISLNK(mode):
                link = os.readlink(entry.path)
                if os.path.isabs(link):
                    raise LaunchError(
                        f"the link {shown} points outside the bundle (to the absolute path {link})"
                    )
                os.symlink(link, dst)
                links.append((shown, dst))
            else:
                raise LaunchError(f"{shown} in the bundle is a special file: it cannot be staged")
    return links


def is_inside(root: str, path: str) -> bool:
    """``path`` is ``root`` or lies under it (both real paths)."""
    return path == root or path.startswith(root + os.sep)


def stage_bundle(source: Path, base_dir: Path | None = None, *, service: str = "?") -> StagedBundle:
    """Copy ``source`` into a new private directory under ``base_dir`` (default: the runtime
    directory) and measure the copy. ``LaunchError`` for what cannot be copied (a special file,
    a link out of the bundle). What dead launchers left in ``base_dir`` is removed first; the
    copy is registered (``launcher.state``) for the next launcher to remove if this one dies."""
    base = default_runtime_dir() if base_dir is None else base_dir
    if not source.is_dir():
        raise LaunchError(f"the bundle {source} is not a directory")
    clean_leftovers(base)
    try:
        holder = Path(tempfile.mkdtemp(prefix=STAGED_PREFIX, dir=base))
    except OSError as exc:
        raise LaunchError(f"cannot make a private directory in {base}: {exc.strerror}") from None
    record: LauncherRecord | None = None
    try:
        record = LauncherRecord.create(holder, service)
        copy = holder / _COPY
        os.mkdir(copy, 0o700)
        links = _copy_tree(Path(os.path.realpath(source)), copy)
        root = os.path.realpath(copy)
        for shown, link in links:
            if not is_inside(root, os.path.realpath(link)):
                raise LaunchError(
                    f"the link {shown} points outside the bundle (to {os.readlink(link)})"
                )
        try:
            measurement = measure_bundle(copy)
        except BundleError as exc:
            raise LaunchError(f"cannot measure the staged bundle: {exc}") from None
        lock = read_lock(copy)
    except BaseException as exc:
        shutil.rmtree(holder, ignore_errors=True)
        if record is not None:
            record.close()
        if isinstance(exc, OSError):
            raise LaunchError(f"cannot stage the bundle {source}: {exc.strerror}") from None
        raise
    return StagedBundle(copy, measurement, lock, record)


def remove_staged(staged: StagedBundle) -> None:
    """Remove the staged copy (quietly; what is left is removed by the next launcher)."""
    holder = staged.directory.parent
    if staged.record is not None and holder.name.startswith(STAGED_PREFIX):
        shutil.rmtree(holder, ignore_errors=True)
        staged.record.close()
    else:
        shutil.rmtree(staged.directory, ignore_errors=True)
