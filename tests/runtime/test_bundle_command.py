"""``geode run``'s command against what could load code from outside the bundle: Python's options,
``-m``, ``#!`` lines, scripts locked as executables, and the ``geode`` subcommands."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geode.errors import LaunchError
from geode.runtime import LOCK_FILE, read_lock, write_lock
from geode.runtime.launcher import (
    StagedBundle,
    check_executables,
    remove_staged,
    resolve_command,
    stage_bundle,
)
from tests.support import native_executable


def _file(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    native_executable(directory / "python3", "python")
    native_executable(directory / "tool", "tool")
    return directory


@pytest.fixture
def staged(tmp_path: Path, tools: Path) -> Iterator[StagedBundle]:
    bundle = tmp_path / "bundle"
    _file(bundle / "app.py", "print('app')\n")
    _file(bundle / "timeit.py", "print('a module named as the standard library')\n")
    _file(bundle / "ns" / "__main__.py", "print('namespace')\n")  # no __init__.py
    _file(bundle / "pkg" / "__init__.py", "")
    _file(bundle / "pkg" / "__main__.py", "print('pkg')\n")
    _file(bundle / "pkg" / "sub.py", "print('sub')\n")
    _file(bundle / "ns" / "mod.py", "print('in a namespace')\n")
    _file(bundle / "by-env", "#!/usr/bin/env python3\nprint(1)\n", 0o755)
    _file(bundle / "by-path", f"#!{tools}/python3 -u\nprint(1)\n", 0o755)
    _file(bundle / "by-env-perl", "#!/usr/bin/env perl\nprint 1;\n", 0o755)
    _file(bundle / "by-env-split", "#!/usr/bin/env -S python3 -u\nprint(1)\n", 0o755)
    _file(bundle / "by-sh", "#!/bin/sh\necho 1\n", 0o755)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "py").symlink_to(tools / "python3")  # as /bin/sh is /usr/bin/sh
    _file(bundle / "by-link", f"#!{tmp_path}/other/py\nprint(1)\n", 0o755)
    _file(bundle / "by-path-c", f"#!{tools}/python3 -c\nprint(1)\n", 0o755)
    write_lock(bundle, ["python3", "tool"], path=str(tools))
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    staged = stage_bundle(bundle, runtime, service="web")
    yield staged
    remove_staged(staged)


def _refused(staged: StagedBundle, argv: list[str]) -> str:
    with pytest.raises(LaunchError) as refused:
        resolve_command(staged, argv)
    message = str(refused.value)
    assert "\n" not in message
    return message


# --- Python's options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ["-X", "importtime"],
        ["-Xdev"],
        ["-X", "utf8=1"],
        ["-X", "int_max_str_digits=0"],
        ["-X", "tracemalloc=5", "-X", "faulthandler"],
        ["-W", "ignore::DeprecationWarning"],
        ["-Werror"],
        ["-W", "ignore:msg:UserWarning:some.module:3"],  # the module field is a pattern
    ],
)
def test_python_options_that_load_no_code_are_kept(
    staged: StagedBundle, tools: Path, options: list[str]
) -> None:
    root = os.path.realpath(staged.directory)
    assert resolve_command(staged, ["python3", *options, "app.py"]) == [
        str(tools / "python3"),
        *options,
        f"{root}/app.py",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-X", "pycache_prefix=/tmp/x"], "the option -X pycache_prefix of python3 is not allowed"),
        (["-Xpycache_prefix=/tmp/x"], "the option -X pycache_prefix of python3 is not allowed"),
        (["-uX", "pycache_prefix=/x"], "the option -X pycache_prefix of python3 is not allowed"),
        (["-X", "frozen_modules=off"], "the option -X frozen_modules of python3 is not allowed"),
        (["-X", "presite=evil"], "the option -X presite of python3 is not allowed"),
        (["-X", "no_such_option"], "the option -X no_such_option of python3 is not allowed"),
        (
            ["-W", "ignore::evil.Category"],
            "-W ignore::evil.Category of python3 names a warning category in a module",
        ),
        (["-Werror::a.b.C"], "-W error::a.b.C of python3 names a warning category in a module"),
        (["-i"], "the option -i of python3 is not allowed"),
    ],
)
def test_python_options_that_could_load_code_from_elsewhere_are_refused(
    staged: StagedBundle, options: list[str], message: str
) -> None:
    assert message in _refused(staged, ["python3", *options, "app.py"])


def test_a_module_of_the_copy_runs_with_m(staged: StagedBundle, tools: Path) -> None:
    python = str(tools / "python3")
    assert resolve_command(staged, ["python3", "-m", "pkg"]) == [python, "-m", "pkg"]
    assert resolve_command(staged, ["python3", "-u", "-m", "pkg.sub", "x"]) == [
        python,
        "-u",
        "-m",
        "pkg.sub",
        "x",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # -P, -I (and -E, -s) change where Python looks: the standard library's timeit runs.
        (["-P", "-m", "pkg"], "-m pkg with -P of python3 is not allowed by geode run"),
        (["-I", "-m", "pkg"], "-m pkg with -I of python3 is not allowed by geode run"),
        (["-Em", "pkg"], "-m pkg with -E of python3 is not allowed by geode run"),
        (["-s", "-mpkg"], "-m pkg with -s of python3 is not allowed by geode run"),
        (["-uP", "-m", "timeit"], "-m timeit with -P of python3 is not allowed by geode run"),
        # A name of the standard library: a module imported at start-up is taken from there.
        (["-m", "timeit"], "-m timeit names a module of Python's standard library"),
        # A namespace directory is shadowed by any regular package of the same name.
        (["-m", "ns"], "-m ns runs a module that is not in the bundle"),
        (["-m", "ns.mod"], "-m ns.mod runs a module that is not in the bundle"),
    ],
)
def test_m_runs_only_what_python_finds_first_in_the_copy(
    staged: StagedBundle, argv: list[str], message: str
) -> None:
    assert message in _refused(staged, ["python3", *argv])


# --- #! lines --------------------------------------------------------------------------------


def test_a_script_runs_with_its_locked_interpreter(staged: StagedBundle, tools: Path) -> None:
    root = os.path.realpath(staged.directory)
    python = str(tools / "python3")
    assert resolve_command(staged, ["by-env", "a"]) == [python, f"{root}/by-env", "a"]
    assert resolve_command(staged, ["./by-path", "a"]) == [python, "-u", f"{root}/by-path", "a"]
    # Another path to the locked target: run by the locked path.
    assert resolve_command(staged, ["by-link"]) == [python, f"{root}/by-link"]


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (
            "by-env-perl",
            "the program by-env-perl runs perl (#!/usr/bin/env perl), which is not locked: "
            "lock it with 'geode bundle lock DIR perl'",
        ),
        (
            "./by-env-split",
            "the program ./by-env-split starts with #!/usr/bin/env -S python3 -u, which names "
            "no locked executable",
        ),
        (
            "by-sh",
            "the program by-sh starts with #!/bin/sh, and /bin/sh is not a locked "
            "executable's path",
        ),
        ("by-path-c", "-c runs code that is not in the bundle"),
    ],
)
def test_a_script_whose_interpreter_is_not_locked_is_refused(
    staged: StagedBundle, program: str, message: str
) -> None:
    assert _refused(staged, [program]) == message


def test_a_script_is_not_locked_as_an_executable(tmp_path: Path, tools: Path) -> None:
    shim = _file(tools / "python3", '#!/usr/bin/env bash\nexec python3.11 "$@"\n', 0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with pytest.raises(LaunchError) as refused:
        write_lock(bundle, ["python3"], path=str(tools))
    assert str(refused.value) == (
        f"python3 at {shim} is a script (#!/usr/bin/env bash): lock its interpreter instead"
    )
    # A lock written by hand for the script is refused when checked.
    write_lock(bundle, ["tool"], path=str(tools))
    document = json.loads((bundle / LOCK_FILE).read_text())
    entry = document["executables"]["tool"]
    _file(tools / "tool", "#!/bin/sh\necho evil\n", 0o755)
    document["executables"]["tool"] = {**entry, "sha256": _sha(tools / "tool")}
    (bundle / LOCK_FILE).write_text(json.dumps(document))
    with pytest.raises(LaunchError, match=r"^tool at .*/tool is a script \(#!/bin/sh\): lock its"):
        check_executables(read_lock(bundle))
    _file(tools / "tool", "echo no header\n", 0o755)
    document["executables"]["tool"] = {**entry, "sha256": _sha(tools / "tool")}
    (bundle / LOCK_FILE).write_text(json.dumps(document))
    with pytest.raises(LaunchError, match=r"tool at .* is not a native \(ELF\) executable"):
        check_executables(read_lock(bundle))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- geode -----------------------------------------------------------------------------------


def test_geode_runs_only_db_serve(staged: StagedBundle) -> None:
    _file(staged.directory / "geode", "#!/bin/sh\n", 0o755)  # no file of the bundle replaces it
    assert resolve_command(staged, ["geode", "db", "serve", "--port", "1"]) == [
        sys.executable,
        "-P",
        "-m",
        "geode",
        "db",
        "serve",
        "--port",
        "1",
    ]
    shown = "(a bundle runs 'geode db serve')"
    assert (
        _refused(staged, ["geode", "up", "x.yaml"]) == f"geode up is not run by geode run {shown}"
    )
    assert _refused(staged, ["geode", "db", "init"]) == (
        f"geode db init is not run by geode run {shown}"
    )
    assert _refused(staged, ["geode"]) == f"geode (no subcommand) is not run by geode run {shown}"
    assert "geode --version is not run" in _refused(staged, ["geode", "--version", "db", "serve"])
