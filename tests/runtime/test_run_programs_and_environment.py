"""``geode run``: a locked executable that is not an interpreter is the command only when the lock
says ``program``; the shells are interpreters; ``#!`` lines as Linux splits them; Python's
directory operand and lone ``--version``; the command's environment is an allow list."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from geode.cli import cli
from geode.errors import LaunchError
from geode.runtime import LOCK_FILE, BundleLock, read_lock, write_lock
from geode.runtime.launcher import (
    INHERITED_ENV,
    StagedBundle,
    lay_out,
    remove_plan,
    resolve_command,
    stage_bundle,
)
from tests.support import native_executable
from tests.support.activation import fake_activation


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    for name in ("mariadbd", "tool", "python3", "sh", "dash", "zsh", "ksh"):
        native_executable(directory / name, name)
    return directory


def _staged(tmp_path: Path, bundle: Path) -> StagedBundle:
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    return stage_bundle(bundle, runtime, service="web")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    directory = tmp_path / "bundle"
    (directory / "app").mkdir(parents=True)
    (directory / "app" / "__main__.py").write_text("print('app')\n")
    (directory / "empty").mkdir()
    (directory / "empty" / "x.py").write_text("")
    (directory / "run.sh").write_text("#!/bin/sh -\nexit 0\n")
    return directory


# --- item 1: a locked non-interpreter is not the command unless the lock says program ---------


def test_a_locked_executable_for_the_bundles_own_use_is_not_the_command(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    write_lock(bundle, ["mariadbd"], path=str(tools))
    staged = _staged(tmp_path, bundle)
    for argv in (
        ["mariadbd", "--plugin-dir=/tmp/x", "--plugin-load-add=evil.so"],
        ["mariadbd"],
        [str(tools / "mariadbd")],
    ):
        with pytest.raises(LaunchError) as refused:
            resolve_command(staged, argv)
        assert str(refused.value) == (
            "mariadbd is locked for the bundle's own use (e.g. by geode db serve), "
            "not as the command"
        )


def test_a_program_of_the_lock_is_the_command_with_the_callers_arguments(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    lock = write_lock(bundle, ["mariadbd"], programs=["tool"], path=str(tools))
    assert lock.executables["tool"].program
    assert not lock.executables["tool"].interpreter
    assert not lock.executables["mariadbd"].program
    document = json.loads((bundle / LOCK_FILE).read_text())
    assert document["executables"]["tool"]["program"] is True
    assert "program" not in document["executables"]["mariadbd"]  # default false
    assert BundleLock.from_json(document, source="x") == lock
    staged = _staged(tmp_path, bundle)
    argv = ["tool", "/etc/x", "-c"]
    assert resolve_command(staged, argv) == [str(tools / "tool"), "/etc/x", "-c"]


def test_a_malformed_program_field_is_refused(bundle: Path, tools: Path) -> None:
    document = write_lock(bundle, ["tool"], path=str(tools)).to_json()
    entry = document["executables"]["tool"]  # type: ignore[index]
    entry["program"] = "yes"
    with pytest.raises(LaunchError, match=r"x: executables\.tool\.program: not true or false"):
        BundleLock.from_json(document, source="x")


@pytest.mark.parametrize("shell", ["sh", "dash", "zsh", "ksh"])
def test_every_shell_is_an_interpreter(
    bundle: Path, tools: Path, tmp_path: Path, shell: str
) -> None:
    assert write_lock(bundle, [shell], path=str(tools)).executables[shell].interpreter
    staged = _staged(tmp_path, bundle)
    with pytest.raises(LaunchError, match="-c runs code that is not in the bundle"):
        resolve_command(staged, [shell, "-c", "id"])


def test_geode_bundle_lock_program(bundle: Path, tools: Path) -> None:
    done = CliRunner().invoke(
        cli, ["bundle", "lock", str(bundle), "mariadbd", "--program", "tool"],
        env={"PATH": str(tools)},
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert f"tool: {tools / 'tool'} sha256 " in done.output
    assert "(program)" in done.output
    lock = read_lock(bundle)
    assert lock.executables["tool"].program
    assert not lock.executables["mariadbd"].program


# --- findings 5 and 6 --------------------------------------------------------------------------


def test_sh_dash_ends_the_options(bundle: Path, tools: Path, tmp_path: Path) -> None:
    write_lock(bundle, ["sh"], path=str(tools))
    (bundle / "run.sh").write_text(f"#!{tools / 'sh'} -\nexit 0\n")
    staged = _staged(tmp_path, bundle)
    root = os.path.realpath(staged.directory)
    script = f"{root}/run.sh"
    assert resolve_command(staged, ["./run.sh", "a"]) == [str(tools / "sh"), "-", script, "a"]
    assert resolve_command(staged, ["sh", "-e", "-", "run.sh"]) == [
        str(tools / "sh"), "-e", "-", script,
    ]  # fmt: skip
    with pytest.raises(LaunchError, match="would read its program from standard input"):
        resolve_command(staged, ["sh", "-"])  # nothing after it: standard input


def test_a_shebang_splits_on_a_tab_like_linux(bundle: Path, tools: Path, tmp_path: Path) -> None:
    write_lock(bundle, ["python3"], path=str(tools))
    (bundle / "tab.py").write_text("#!/usr/bin/env\tpython3\nprint(1)\n")
    (bundle / "tabs.py").write_text(f"#! \t{tools / 'python3'}\t -B \nprint(1)\n")
    staged = _staged(tmp_path, bundle)
    root = os.path.realpath(staged.directory)
    python = str(tools / "python3")
    assert resolve_command(staged, ["./tab.py"]) == [python, f"{root}/tab.py"]
    assert resolve_command(staged, ["./tabs.py"]) == [python, "-B", f"{root}/tabs.py"]


def test_python_runs_a_directory_of_the_copy_with_main(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    write_lock(bundle, ["python3"], path=str(tools))
    staged = _staged(tmp_path, bundle)
    root = os.path.realpath(staged.directory)
    python = str(tools / "python3")
    assert resolve_command(staged, ["python3", "app", "x"]) == [python, f"{root}/app", "x"]
    assert resolve_command(staged, ["python3", "-B", "./app"]) == [python, "-B", f"{root}/app"]
    with pytest.raises(LaunchError, match=r"the script empty is a directory without __main__\.py"):
        resolve_command(staged, ["python3", "empty"])
    with pytest.raises(LaunchError, match=r"the script \. is a directory without __main__\.py"):
        resolve_command(staged, ["python3", "."])
    with pytest.raises(LaunchError, match="the script / is outside the bundle"):
        resolve_command(staged, ["python3", "/"])


@pytest.mark.parametrize("option", ["--version", "-V", "-VV", "--help", "-h", "--help-all"])
def test_python_version_and_help_alone(
    bundle: Path, tools: Path, tmp_path: Path, option: str
) -> None:
    write_lock(bundle, ["python3"], path=str(tools))
    staged = _staged(tmp_path, bundle)
    assert resolve_command(staged, ["python3", option]) == [str(tools / "python3"), option]
    with pytest.raises(LaunchError, match="is not allowed by geode run"):
        resolve_command(staged, ["python3", "--version", "--check-hash-based-pycs", "x"])


# --- item 2: the environment is an allow list --------------------------------------------------


def test_only_the_allow_list_is_inherited(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "OPENSSL_CONF": "/tmp/ossl.cnf",
        "OPENSSL_MODULES": "/tmp/evil",
        "OPENSSL_ENGINES": "/tmp/evil",
        "SSLKEYLOGFILE": "/tmp/keys.log",
        "HOME": "/tmp/h",
        "PYTHONUSERBASE": "/tmp/h",
        "PYTHONPATH": "/tmp/evil",
        "LD_PRELOAD": "/tmp/evil.so",
        "SOMETHING_ELSE": "x",
        "GEODE_SERVICE": "other",
    }
    plan = lay_out(fake_activation(env={}), "web", ["prog"], base_dir=tmp_path, environ=inherited)
    try:
        kept = {k for k, v in inherited.items() if plan.env.get(k) == v}
        assert kept == {"PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONUNBUFFERED"}
        assert plan.env["GEODE_SERVICE"] == "web"
        assert plan.env["PYTHONNOUSERSITE"] == "1"
        home = Path(plan.env["HOME"])
        assert home.parent == plan.directory
        assert home.is_dir()
        assert list(home.iterdir()) == []
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert "HOME" not in INHERITED_ENV
    finally:
        remove_plan(plan)
    assert not home.exists()


def test_the_manifest_env_wins(tmp_path: Path) -> None:
    activation = fake_activation(
        env={"HOME": b"/srv/app", "PYTHONNOUSERSITE": b"", "OPENSSL_CONF": b"/c"}
    )
    plan = lay_out(activation, "web", ["prog"], base_dir=tmp_path, environ={})
    try:
        assert plan.env["HOME"] == "/srv/app"
        assert plan.env["PYTHONNOUSERSITE"] == ""
        assert plan.env["OPENSSL_CONF"] == "/c"
    finally:
        remove_plan(plan)


def test_a_callers_home_site_packages_do_not_run(tmp_path: Path) -> None:
    """A real Python with the laid-out environment: the caller's HOME's user site is not read.
    The base interpreter, not this venv's (a venv has no user site anyway)."""
    python = getattr(sys, "_base_executable", sys.executable)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = tmp_path / "h" / ".local" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (site / "evil.pth").write_text("import sys; sys.stdout.write('EVIL-PTH ')\n")
    caller = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "h")}
    probe = ["-c", "import site; print(site.ENABLE_USER_SITE)"]
    # The probe itself sees the hole with the caller's environment.
    assert (
        "EVIL-PTH"
        in subprocess.run(
            [python, "-c", "pass"], env=caller, capture_output=True, text=True, check=True
        ).stdout
    )
    (tmp_path / "rt").mkdir()
    plan = lay_out(
        fake_activation(env={}), "web", ["prog"], base_dir=tmp_path / "rt", environ=caller
    )
    try:
        done = subprocess.run(
            [python, *probe], env=plan.env, capture_output=True, text=True, check=True
        )
        assert "EVIL-PTH" not in done.stdout
        assert done.stdout.strip() == "False"
    finally:
        remove_plan(plan)
