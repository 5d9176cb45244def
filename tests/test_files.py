"""``geode._files``' safe paths: no symbolic link is followed on the way to a file Geode writes
or deletes, with ``openat2`` and with the directory walk used where there is no ``openat2``.
(A base module of every layer: its tests stay at the top, like the architecture's.)"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from geode import _files
from geode._files import (
    SymlinkRefused,
    open_directory,
    place_file,
    remove_recorded_file,
    replace_private_file,
    wipe_file_at,
    wipe_tree,
)

_OPENAT2 = _files._openat2


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with openat2 (skipped where the system has none) and with the walk."""
    if request.param == "openat2":
        if _OPENAT2 is None:
            pytest.skip("no openat2 here")
        monkeypatch.setattr(_files, "_openat2", _OPENAT2)
    else:
        monkeypatch.setattr(_files, "_openat2", None)
    return request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """real/ with a link to elsewhere/ inside, and elsewhere/ holding a file."""
    (tmp_path / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious").write_bytes(b"keep me")
    (tmp_path / "real" / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "real" / "file-link").symlink_to(tmp_path / "elsewhere" / "precious")
    (tmp_path / "real" / "dangling").symlink_to(tmp_path / "elsewhere" / "new")
    return tmp_path


def test_a_directory_link_on_the_way_is_refused_and_named(tree: Path, resolution: str) -> None:
    target = tree / "real" / "link" / "secret"
    with pytest.raises(SymlinkRefused) as caught:
        place_file(target, b"secret")
    assert caught.value.errno == errno.ELOOP
    assert caught.value.filename == str(target)
    assert caught.value.component == str(tree / "real" / "link")
    assert "symbolic link" in str(caught.value)
    assert sorted(p.name for p in (tree / "elsewhere").iterdir()) == ["precious"]
    # Deeper too: a link above a directory that would be created.
    with pytest.raises(SymlinkRefused):
        place_file(tree / "real" / "link" / "a" / "b" / "secret", b"secret")
    assert sorted(p.name for p in (tree / "elsewhere").iterdir()) == ["precious"]


def test_a_link_as_the_file_itself_is_refused(tree: Path, resolution: str) -> None:
    for name in ("file-link", "dangling"):
        with pytest.raises(SymlinkRefused, match=f"{name} is a symbolic link"):
            place_file(tree / "real" / name, b"secret")
    assert (tree / "elsewhere" / "precious").read_bytes() == b"keep me"
    assert not (tree / "elsewhere" / "new").exists()


def test_files_are_new_and_private_and_directories_are_made_private(
    tree: Path, resolution: str
) -> None:
    path = tree / "real" / "a" / "b" / "secret"
    placed = place_file(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tree / "real" / "a").stat().st_mode) == 0o700
    with pytest.raises(FileExistsError, match="never overwritten"):
        place_file(path, b"other")
    assert path.read_bytes() == b"secret"
    placed.remove()
    assert not path.exists()


def test_relative_paths_stay_beneath_their_directory(tree: Path, resolution: str) -> None:
    fd = os.open(tree / "real", os.O_RDONLY | os.O_DIRECTORY)
    try:
        place_file("sub/ok", b"1", at=fd, shown_as="/secrets").close()
        assert (tree / "real" / "sub" / "ok").read_bytes() == b"1"
        with pytest.raises(SymlinkRefused, match="/secrets/link is a symbolic link"):
            place_file("link/x", b"1", at=fd, shown_as="/secrets")
        with pytest.raises(OSError, match=r"'\.\.' is not allowed"):
            place_file("sub/../../elsewhere/x", b"1", at=fd)
        with pytest.raises(OSError, match="expected a relative path"):
            open_directory("/tmp", at=fd)
    finally:
        os.close(fd)
    assert sorted(p.name for p in (tree / "elsewhere").iterdir()) == ["precious"]


def test_removal_goes_through_the_verified_directory(tree: Path, resolution: str) -> None:
    """The directory is swapped for a link after the file was written: removal still deletes
    the file written, in the directory it was written in, and never follows the link."""
    placed = place_file(tree / "real" / "dir" / "precious", b"secret")
    (tree / "real" / "dir").rename(tree / "moved")
    (tree / "real" / "dir").symlink_to(tree / "elsewhere")
    placed.remove()
    assert not (tree / "moved" / "precious").exists()
    assert (tree / "elsewhere" / "precious").read_bytes() == b"keep me"


def test_a_recorded_file_is_removed_only_if_it_is_still_the_same(
    tree: Path, resolution: str
) -> None:
    path = tree / "real" / "recorded"
    placed = place_file(path, b"secret")
    placed.close()
    assert not remove_recorded_file(str(path), placed.device, placed.inode + 1)
    assert path.exists()
    # Reached through a link: not removed either.
    assert not remove_recorded_file(str(tree / "real" / "link" / "precious"), 0, 0)
    assert remove_recorded_file(str(path), placed.device, placed.inode)
    assert not path.exists()
    assert (tree / "elsewhere" / "precious").read_bytes() == b"keep me"


@pytest.mark.parametrize("after", ["stat", "open"])
def test_a_file_swapped_in_during_removal_is_neither_zeroed_nor_removed(
    tree: Path, resolution: str, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    """Another file is renamed under the recorded name right after Geode's first look at it
    (``after="stat"``) or right after it opened it (``"open"``): whatever the order of checks,
    the file swapped in keeps its content and its name."""
    path = tree / "real" / "recorded"
    placed = place_file(path, b"secret")
    placed.close()
    other = tree / "elsewhere" / "other"
    other.write_bytes(b"someone else's data")
    real = getattr(os, after)
    swapped: list[bool] = []

    def look_then_swap(name: object, *args: object, **kwargs: object) -> object:
        result = real(name, *args, **kwargs)
        if name == "recorded" and kwargs.get("dir_fd") is not None and not swapped:
            swapped.append(True)
            path.rename(tree / "real" / "moved")
            other.rename(path)
        return result

    monkeypatch.setattr(os, after, look_then_swap)
    assert not remove_recorded_file(str(path), placed.device, placed.inode)
    monkeypatch.undo()
    assert swapped
    assert path.read_bytes() == b"someone else's data"


def test_removal_leaves_a_file_put_under_the_name_since(tree: Path, resolution: str) -> None:
    path = tree / "real" / "secret"
    placed = place_file(path, b"secret")
    path.rename(tree / "real" / "moved")
    path.write_bytes(b"the app's own file")
    placed.remove()
    assert path.read_bytes() == b"the app's own file"


def test_a_hard_link_to_a_file_elsewhere_is_unlinked_never_zeroed(tree: Path) -> None:
    """The app plants, in a directory Geode cleans, a hard link to a file the launcher's user
    can write: the link goes, the file it points at keeps its content."""
    precious = tree / "elsewhere" / "precious"
    private = tree / "private"
    (private / "sub").mkdir(parents=True)
    os.link(precious, private / "sub" / "planted")
    (private / "own").write_bytes(b"secret")
    own_fd = os.open(private / "own", os.O_RDONLY)
    try:
        wipe_tree(private)
        assert os.read(own_fd, 100) == bytes(6)  # Geode's own file is zeroed, as before
    finally:
        os.close(own_fd)
    assert not private.exists()
    assert precious.read_bytes() == b"keep me"
    # A recorded file hard-linked elsewhere since: unlinked, not zeroed.
    placed = place_file(tree / "real" / "recorded", b"secret")
    placed.close()
    os.link(tree / "real" / "recorded", tree / "elsewhere" / "copy")
    assert remove_recorded_file(str(tree / "real" / "recorded"), placed.device, placed.inode)
    assert (tree / "elsewhere" / "copy").read_bytes() == b"secret"


def test_only_regular_files_are_opened_to_be_zeroed(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO (or a device) is not even opened: opening one can block or act on its own."""
    os.mkfifo(tree / "real" / "fifo")
    reader = os.open(tree / "real" / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    opened: list[object] = []
    real_open = os.open

    def recording_open(name: object, *args: object, **kwargs: object) -> int:
        opened.append(name)
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    try:
        dir_fd = os.open(tree / "real", os.O_RDONLY | os.O_DIRECTORY)
        monkeypatch.setattr(os, "open", recording_open)
        try:
            wipe_file_at(dir_fd, "fifo")
            wipe_file_at(dir_fd, "file-link")
        finally:
            monkeypatch.undo()
            os.close(dir_fd)
        assert opened == []
        assert os.read(reader, 1) == b""  # nothing written into the pipe
    finally:
        os.close(reader)
    assert (tree / "elsewhere" / "precious").read_bytes() == b"keep me"


def test_without_openat2_the_walk_takes_over(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel (or a seccomp filter) without openat2 answers ENOSYS: the walk is used from
    then on, with the same refusals."""
    calls: list[bytes] = []

    def missing(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
        calls.append(path)
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(_files, "_openat2", missing)
    with pytest.raises(SymlinkRefused):
        place_file(tree / "real" / "link" / "x", b"1")
    assert calls
    assert _files._openat2 is None
    place_file(tree / "real" / "y", b"1").remove()


def test_a_private_file_replaced_is_zeroed_unless_named_elsewhere(tmp_path: Path) -> None:
    """A renewed key replaces the old one by rename: the old one's pages are zeroed, read here
    through a descriptor kept on it; one that still has another name keeps its content."""
    key = tmp_path / "key.pem"
    key.write_bytes(b"old key")
    kept = os.open(key, os.O_RDONLY)
    try:
        replace_private_file(key, b"new key")
        assert os.pread(kept, 100, 0) == bytes(7)
    finally:
        os.close(kept)
    assert key.read_bytes() == b"new key"
    os.link(key, tmp_path / "elsewhere")
    replace_private_file(key, b"newer key")
    assert (tmp_path / "elsewhere").read_bytes() == b"new key"
    assert key.read_bytes() == b"newer key"
