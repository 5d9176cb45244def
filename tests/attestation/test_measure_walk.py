"""The one walk of a bundle (``bundle_entries``): what it yields and skips, that it never
follows a link swapped in while it walks, and that the measurement built on it is unchanged."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from geode.attestation import BundleError, bundle_entries, measure_bundle

# measure_bundle of _tree() by the walk before bundle_entries existed: the measurement must
# not change.
PINNED = "55becb316cfcc32bff7f78f05cc26486c84fed9b5dfb4275d2077938a04f7bf3"


def _tree(root: Path) -> Path:
    for directory in ("pkg/sub", "a.d", "__pycache__"):
        (root / directory).mkdir(parents=True)
    (root / "a.txt").write_bytes(b"x")
    (root / "a").write_bytes(b"y")
    (root / "pkg" / "sub" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "pkg" / "sub" / "run.sh").chmod(0o755)
    (root / "pkg" / "mod.py").write_bytes(b"z")
    (root / "pkg" / "link").symlink_to("../a.txt")
    (root / "dangling").symlink_to("nowhere")
    (root / "__pycache__" / "x.pyc").write_bytes(b"c")
    (root / "old.pyc").write_bytes(b"p")
    (root / "\u00e9.txt").write_bytes("\u00e9".encode())
    return root


def test_the_measurement_is_unchanged(tmp_path: Path) -> None:
    assert measure_bundle(_tree(tmp_path / "b")).hex() == PINNED


def test_the_walk_yields_typed_entries_and_skips_what_python_writes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "b")
    os.mkfifo(root / "pipe")
    entries = {e.rel: e for e in bundle_entries(root)}
    assert {rel: e.kind for rel, e in entries.items()} == {
        "a": "file",
        "a.d": "dir",
        "a.txt": "file",
        "dangling": "link",
        "pipe": "special",
        "pkg": "dir",
        "pkg/link": "link",
        "pkg/mod.py": "file",
        "pkg/sub": "dir",
        "pkg/sub/run.sh": "file",
        "\u00e9.txt": "file",
    }
    assert entries["pkg/sub/run.sh"].path == root / "pkg" / "sub" / "run.sh"
    assert stat.S_IMODE(entries["pkg/sub/run.sh"].mode) == 0o755
    with pytest.raises(BundleError, match="special file in bundle: pipe"):
        measure_bundle(root)


def test_the_walk_opens_through_the_entry_it_listed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "b")
    seen = {}
    for entry in bundle_entries(root):
        if entry.kind == "file":
            fd = entry.open()
            try:
                seen[entry.rel] = os.read(fd, 100)
            finally:
                os.close(fd)
        elif entry.kind == "link":
            seen[entry.rel] = entry.read_link().encode()
    assert seen["pkg/mod.py"] == b"z"
    assert seen["pkg/link"] == b"../a.txt"


def _walk_swapping_pkg(root: Path, outside: Path, walked: list[str]) -> None:
    for entry in bundle_entries(root):
        walked.append(entry.rel)
        if entry.rel == "pkg":  # listed as a directory; swapped before it is entered
            (root / "pkg").rename(root / "moved")
            (root / "pkg").symlink_to(outside, target_is_directory=True)


def test_a_directory_swapped_for_a_link_during_the_walk_is_not_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not in the bundle")
    walked: list[str] = []
    with pytest.raises(BundleError, match="pkg"):
        _walk_swapping_pkg(root, outside, walked)
    assert walked[-1] == "pkg"
    assert not any(rel.startswith("pkg/") for rel in walked)


def test_a_file_swapped_after_it_was_listed_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "b")
    outside = tmp_path / "secret"
    outside.write_text("not in the bundle")
    for entry in bundle_entries(root):
        if entry.rel == "a":
            (root / "a.txt").unlink()
            (root / "a.txt").symlink_to(outside)
        if entry.rel == "a.txt":
            with pytest.raises(BundleError, match=r"a\.txt"):
                entry.open()
            break
    else:
        pytest.fail("a.txt was not walked")
