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
from geode._files import SymlinkRefused, open_directory, place_file, remove_recorded_file

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
