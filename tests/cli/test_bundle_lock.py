"""``geode bundle lock``: pins executables found on $PATH in the bundle's ``geode.lock`` and says
what it pinned."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from click.testing import CliRunner

from geode.cli import cli
from geode.runtime import read_lock


def test_lock_pins_and_prints_what_it_pinned(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    real = tmp_path / "real-tool"
    real.write_bytes(Path("/bin/true").read_bytes())  # only a native executable is locked
    real.chmod(0o755)
    (tools / "python3").symlink_to(real)
    (tools / "runner").symlink_to(real)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    env = {"PATH": str(tools)}

    done = CliRunner().invoke(cli, ["bundle", "lock", str(bundle), "python3"], env=env)
    assert done.exit_code == 0, done.output
    assert f"python3: {tools / 'python3'} sha256 {digest[:16]}... (interpreter)" in done.output
    done = CliRunner().invoke(
        cli, ["bundle", "lock", str(bundle), "runner", "--interpreter", "runner"], env=env
    )
    assert done.exit_code == 0, done.output
    assert f"runner: {tools / 'runner'} sha256 {digest[:16]}... (interpreter)" in done.output
    lock = read_lock(bundle)
    assert set(lock.executables) == {"python3", "runner"}
    assert lock.executables["runner"].interpreter
    assert lock.executables["python3"].path == tools / "python3"  # not resolved


def test_lock_of_a_missing_name_is_one_line(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        cli, ["bundle", "lock", str(tmp_path), "nope"], env={"PATH": os.fspath(tmp_path)}
    )
    assert done.exit_code == 1
    assert done.output.strip() == "Error: nope is not found on $PATH"


def test_lock_of_a_script_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "python3").write_text('#!/usr/bin/env bash\nexec python3.11 "$@"\n')
    (tmp_path / "python3").chmod(0o755)
    done = CliRunner().invoke(
        cli, ["bundle", "lock", str(tmp_path), "python3"], env={"PATH": os.fspath(tmp_path)}
    )
    assert done.exit_code == 1
    assert done.output.strip() == (
        f"Error: python3 at {tmp_path / 'python3'} is a script (#!/usr/bin/env bash): "
        "lock its interpreter instead"
    )
