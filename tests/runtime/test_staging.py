"""Staging and the lock file on disk: the copy is made from the one bundle walk, is read-only
once measured and is still removed; ``geode.lock`` is replaced atomically, never through a link;
an executable name is checked the same way when the lock is written and when it is read."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import geode.runtime._staging as staging
from geode.attestation import BundleEntry, bundle_entries
from geode.errors import LaunchError
from geode.runtime import LOCK_FILE, read_lock, write_lock
from geode.runtime.launcher import clean_leftovers, remove_staged, stage_bundle

NOBODY = 65534


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "tool").write_bytes(Path("/bin/true").read_bytes())  # locked: a native program
    (directory / "tool").chmod(0o755)
    return directory


@pytest.fixture
def bundle(tmp_path: Path, tools: Path) -> Path:
    directory = tmp_path / "bundle"
    (directory / "pkg" / "sub").mkdir(parents=True)
    (directory / "app.py").write_text("print('app')\n")
    (directory / "pkg" / "mod.py").write_text("print('mod')\n")
    (directory / "pkg" / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (directory / "pkg" / "sub" / "run.sh").chmod(0o755)
    (directory / "alias.py").symlink_to("app.py")
    write_lock(directory, ["tool"], path=str(tools))
    return directory


# --- staging copies what the walk yields, never following a link swapped in -------------------


def test_the_copy_holds_exactly_the_entries_of_the_walk(bundle: Path, tmp_path: Path) -> None:
    (bundle / "pkg" / "__pycache__").mkdir()
    (bundle / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    walked = {(e.rel, e.kind) for e in bundle_entries(bundle)}
    assert ("pkg/__pycache__", "dir") not in walked
    assert ("alias.py", "link") in walked
    assert ("pkg/sub/run.sh", "file") in walked
    staged = stage_bundle(bundle, tmp_path)
    assert {(e.rel, e.kind) for e in bundle_entries(staged.directory)} == walked
    remove_staged(staged)


def _swapping(rel: str, outside: Path) -> Callable[[Path], Iterator[BundleEntry]]:
    """``bundle_entries`` that, once it has yielded the directory ``rel``, replaces that
    directory with a link to ``outside`` (a race with the copy)."""

    def walk(root: Path) -> Iterator[BundleEntry]:
        for entry in bundle_entries(root):
            yield entry
            if entry.rel == rel:
                entry.path.rename(entry.path.with_name("moved"))
                entry.path.symlink_to(outside, target_is_directory=True)

    return walk


def test_a_directory_swapped_for_a_link_while_copied_is_refused(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("print('evil')\n")
    monkeypatch.setattr(staging, "bundle_entries", _swapping("pkg", outside))
    base = tmp_path / "rt"
    base.mkdir()
    with pytest.raises(LaunchError, match="pkg"):
        stage_bundle(bundle, base)
    assert list(base.iterdir()) == []


# --- the copy is read-only once measured, and is still removed ---------------------------------


def _as_user(uid: int, action: Callable[[], bool]) -> bool:
    """Run ``action`` in a child process with the user ``uid`` (when we are root; else as we
    are): root ignores file modes, so only another user shows what they do."""
    if os.geteuid() != 0:
        return action()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            code = 0 if action() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _give_to(path: Path, uid: int) -> None:
    if os.geteuid() != 0:
        return
    os.lchown(path, uid, uid)
    for directory, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(directory, name), uid, uid)


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A runtime directory another user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="geode-f4-"))
    base.chmod(0o755)
    yield base
    for directory, dirnames, _files in os.walk(base):
        for name in dirnames:
            os.chmod(os.path.join(directory, name), 0o700)
    shutil.rmtree(base)


def test_the_copy_is_read_only_and_its_lock_cannot_be_rewritten(
    bundle: Path, shared_base: Path
) -> None:
    staged = stage_bundle(bundle, shared_base)
    modes = {
        e.rel: stat.S_IMODE(e.mode) for e in bundle_entries(staged.directory) if e.kind != "link"
    }
    assert modes == {
        "app.py": 0o400,
        "geode.lock": 0o400,
        "pkg": 0o500,
        "pkg/mod.py": 0o400,
        "pkg/sub": 0o500,
        "pkg/sub/run.sh": 0o500,
    }
    _give_to(shared_base, NOBODY)

    def rewrite() -> bool:
        for attempt in (
            lambda: (staged.directory / LOCK_FILE).write_text("{}"),
            lambda: (staged.directory / "pkg" / "new.py").write_text(""),
            lambda: (staged.directory / LOCK_FILE).unlink(),
        ):
            try:
                attempt()
            except PermissionError:
                continue
            return False
        return True

    assert _as_user(NOBODY, rewrite)
    assert _as_user(NOBODY, lambda: (remove_staged(staged), not staged.directory.exists())[1])
    assert list(shared_base.iterdir()) == []


def test_a_dead_launchers_read_only_copy_is_removed_by_the_next(
    bundle: Path, shared_base: Path
) -> None:
    staged = stage_bundle(bundle, shared_base)
    assert staged.record is not None
    staged.record.close()  # as if its launcher had been killed
    _give_to(shared_base, NOBODY)
    assert _as_user(NOBODY, lambda: clean_leftovers(shared_base) == 1)
    assert list(shared_base.iterdir()) == []


# --- the lock file: written atomically, never through a link ----------------------------------


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("precious\n")
    (bundle / LOCK_FILE).unlink()
    (bundle / LOCK_FILE).symlink_to(target)
    with pytest.raises(LaunchError, match=r"geode\.lock is a symbolic link") as caught:
        write_lock(bundle, ["tool"], path=str(tools))
    assert "\n" not in str(caught.value)
    assert target.read_text() == "precious\n"


def test_a_failed_write_leaves_the_old_lock_whole(
    bundle: Path, tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (bundle / LOCK_FILE).read_bytes()

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(LaunchError, match=r"cannot write .*geode\.lock"):
        write_lock(bundle, ["tool", "sh"], path=f"{tools}:/bin:/usr/bin")
    monkeypatch.undo()
    assert (bundle / LOCK_FILE).read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []
    lock = write_lock(bundle, ["sh"], path="/bin:/usr/bin")
    assert json.loads((bundle / LOCK_FILE).read_text()) == lock.to_json()
    assert stat.S_IMODE((bundle / LOCK_FILE).stat().st_mode) == 0o644


# --- one bare-name check, for writing and reading the lock --------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "py\0", "py\nthon", "tab\tname"])
def test_writing_and_reading_refuse_the_same_names(name: str, tools: Path, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="not a bare executable name") as caught:
        write_lock(tmp_path, [name], path=str(tools))
    assert "\n" not in str(caught.value)
    entry = {"path": "/usr/bin/tool", "sha256": "a" * 64}
    (tmp_path / LOCK_FILE).write_text(json.dumps({"version": 1, "executables": {name: entry}}))
    with pytest.raises(LaunchError, match="not a bare executable name") as caught:
        read_lock(tmp_path)
    assert "\n" not in str(caught.value)
