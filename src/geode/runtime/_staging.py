"""What ``geode run`` runs is what it measured: the bundle is staged and measured, and the
command runs from the staged copy.

``stage_bundle`` copies the bundle into a private directory (0700) of the runtime directory and
measures the copy (``measure_bundle``); the activation uses that measurement and the command
runs from the copy (its working directory), so changing the original after the launch changes
nothing that runs. The copy is removed when the launcher exits (and by the next launcher, when
one was killed outright: ``_leftovers``).

The layout is ``<runtime dir>/geode-bundle-XXXXXXXX/`` (0700) holding the launcher's record
``launcher.state`` (``_leftovers.LauncherRecord``, locked for the launcher's life) and the copy,
``bundle/``. The copy is made from the entries of ``bundle_entries`` (the walk the measurement
uses, so both skip the same things: ``__pycache__/`` and ``*.pyc`` are not copied, they are not
measured, so they must not run). Only ``--bundle`` itself is followed if it is a link; below it
every directory is opened relative to its parent's descriptor with ``O_DIRECTORY |
O_NOFOLLOW`` and every file with ``O_NOFOLLOW``, each checked to be the entry listed (device,
inode), so a directory or file swapped for a link while the copy is made is refused, never
followed. A relative link that stays inside the bundle is copied as a link; an absolute one, one
that leads out (checked on the copy, so links read together count), or a special file is
refused. In any case the copy is measured after copying: whatever a race changed is what is
measured, and so what is attested.

Once measured, the copy is made read-only: files 0400 (0500 if executable), directories 0500,
so the running command cannot rewrite its scripts or the ``geode.lock`` that ``locked_executable``
reads by accident. That is simulation, not isolation: a process of the same user can ``chmod``
it back (and root ignores the modes). ``remove_staged`` and ``clean_leftovers`` make the tree
writable again before removing it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geode._files import writable_tree
from geode.attestation import BundleEntry, BundleError, bundle_entries, measure_bundle
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


def _copy_file(entry: BundleEntry, target: Path) -> None:
    mode = 0o700 if entry.mode & 0o111 else 0o600
    src = entry.open()
    try:
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
    """Copy ``source`` into the existing ``target`` from its entries (``bundle_entries``); the
    links made, (relative path, copy path)."""
    links: list[tuple[str, Path]] = []
    try:
        for entry in bundle_entries(source):
            dst = target / entry.rel
            if entry.kind == "dir":
                os.mkdir(dst, 0o700)
            elif entry.kind == "file":
                _copy_file(entry, dst)
            elif entry.kind == "link":
                link = entry.read_link()
                if os.path.isabs(link):
                    raise LaunchError(
                        f"the link {entry.rel} points outside the bundle "
                        f"(to the absolute path {link})"
                    )
                os.symlink(link, dst)
                links.append((entry.rel, dst))
            else:
                raise LaunchError(
                    f"{entry.rel} in the bundle is a special file: it cannot be staged"
                )
    except BundleError as exc:
        raise LaunchError(f"cannot stage the bundle: {exc}") from None
    return links


def _read_only(copy: Path) -> None:
    """Files 0400 (0500 if executable), directories 0500, the copy's root last; links have no
    mode of their own."""
    for entry in bundle_entries(copy):
        if entry.kind == "dir":
            os.chmod(entry.path, 0o500)
        elif entry.kind == "file":
            os.chmod(entry.path, 0o500 if entry.mode & 0o111 else 0o400)
    os.chmod(copy, 0o500)


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
        _read_only(copy)
    except BaseException as exc:
        writable_tree(holder)
        shutil.rmtree(holder, ignore_errors=True)
        if record is not None:
            record.close()
        if isinstance(exc, OSError):
            raise LaunchError(f"cannot stage the bundle {source}: {exc.strerror}") from None
        raise
    return StagedBundle(copy, measurement, lock, record)


def remove_staged(staged: StagedBundle) -> None:
    """Remove the staged copy, read-only as it is (made writable first; quietly: what is left
    is removed by the next launcher)."""
    holder = staged.directory.parent
    writable_tree(staged.directory)
    if staged.record is not None and holder.name.startswith(STAGED_PREFIX):
        shutil.rmtree(holder, ignore_errors=True)
        staged.record.close()
    else:
        shutil.rmtree(staged.directory, ignore_errors=True)
