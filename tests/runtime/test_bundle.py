"""geode.runtime's bundle: the lock (``geode.lock``), staging a private measured copy, and
resolving ``geode run``'s command inside that copy."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from geode.attestation import measure_bundle
from geode.errors import LaunchError
from geode.runtime import (
    BUNDLE_LOCK_ENV,
    LOCK_FILE,
    BundleLock,
    LockedExecutable,
    locked_executable,
    read_lock,
    write_lock,
)
from geode.runtime.launcher import (
    StagedBundle,
    check_executables,
    clean_leftovers,
    remove_staged,
    resolve_command,
    stage_bundle,
)
from tests.support import native_executable

SHA_A = "a" * 64


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A ``$PATH`` directory of native executables: ``tool`` (a file), ``python3`` (a link, as
    in a venv) to ``real/python3.11``, and ``node`` (a file)."""
    directory = tmp_path / "bin"
    native_executable(directory / "tool", "tool")
    native_executable(tmp_path / "real" / "python3.11", "python")
    (directory / "python3").symlink_to(tmp_path / "real" / "python3.11")
    native_executable(directory / "node", "node")
    return directory


@pytest.fixture
def bundle(tmp_path: Path, tools: Path) -> Path:
    directory = tmp_path / "bundle"
    (directory / "pkg").mkdir(parents=True)
    (directory / "app.py").write_text("print('app')\n")
    (directory / "mod.py").write_text("print('mod')\n")
    (directory / "pkg" / "__init__.py").write_text("")
    (directory / "pkg" / "__main__.py").write_text("print('pkg')\n")
    native_executable(directory / "serve", "serve")  # a native program of the bundle
    (directory / "alias.py").symlink_to("app.py")
    write_lock(directory, ["python3", "tool", "node"], path=str(tools))
    return directory


@pytest.fixture
def staged(bundle: Path, tmp_path: Path) -> StagedBundle:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    return stage_bundle(bundle, runtime, service="web")


# --- the lock --------------------------------------------------------------------------------


def test_the_lock_keeps_the_path_as_found_and_hashes_what_it_resolves_to(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    lock = read_lock(bundle)
    python = lock.executables["python3"]
    assert python.path == tools / "python3"  # the link itself, as in a venv
    assert python.target == tmp_path / "real" / "python3.11"
    assert python.sha256 == _sha(tmp_path / "real" / "python3.11")
    assert python.interpreter
    assert not lock.executables["tool"].interpreter
    assert lock.executables["node"].interpreter
    # Round trip through the document.
    document = json.loads((bundle / LOCK_FILE).read_text())
    assert document["version"] == 1
    assert BundleLock.from_json(document, source="x") == lock
    assert BundleLock.from_json(lock.to_json(), source="x") == lock


def test_write_lock_keeps_other_entries_and_interpreter_overrides_the_guess(
    bundle: Path, tools: Path
) -> None:
    lock = write_lock(bundle, ["python3"], interpreters=["tool"], path=str(tools))
    assert set(lock.executables) == {"python3", "tool", "node"}
    assert lock.executables["tool"].interpreter
    assert not lock.executables["python3"].interpreter  # the guess is replaced
    assert read_lock(bundle) == lock


def test_a_bundle_without_a_lock_locks_nothing(tmp_path: Path) -> None:
    assert read_lock(tmp_path) == BundleLock({})


def test_write_lock_refuses_what_is_not_found(bundle: Path, tools: Path) -> None:
    with pytest.raises(LaunchError, match="no-such-tool is not found"):
        write_lock(bundle, ["no-such-tool"], path=str(tools))
    with pytest.raises(LaunchError, match="not a bare executable name"):
        write_lock(bundle, ["/bin/sh"], path=str(tools))


def _entry(**fields: object) -> dict[str, object]:
    return {
        "path": "/usr/bin/python3",
        "sha256": SHA_A,
        "interpreter": True,
        "target": "/usr/bin/python3.11",
        **fields,
    }


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"version": 1, "executables": {}, "extra": 1}, "extra: unknown field"),
        ({"version": 2, "executables": {}}, "version: must be 1"),
        ({"version": True, "executables": {}}, "version: must be 1"),
        ({"executables": {}}, "version: must be 1"),
        ({"version": 1, "executables": []}, "executables: not a JSON object"),
        ({"version": 1, "executables": {"p": _entry(x=1)}}, "executables.p.x: unknown field"),
        (
            {"version": 1, "executables": {"p": _entry(path="bin/python3")}},
            "executables.p.path: not an absolute path",
        ),
        (
            {"version": 1, "executables": {"p": _entry(sha256="A" * 64)}},
            "executables.p.sha256: not 64",
        ),
        (
            {"version": 1, "executables": {"p": _entry(sha256="ab")}},
            "executables.p.sha256: not 64",
        ),
        (
            {"version": 1, "executables": {"p": _entry(interpreter="yes")}},
            "executables.p.interpreter: not true or false",
        ),
        (
            {"version": 1, "executables": {"p": _entry(target="python3.11")}},
            "executables.p.target: not an absolute path",
        ),
        (
            {"version": 1, "executables": {"p": {"path": "/usr/bin/python3", "sha256": SHA_A}}},
            "executables.p.target: not an absolute path",
        ),
        ({"version": 1, "executables": {"a/b": _entry()}}, "executables.a/b: not a bare"),
        ({"version": 1, "executables": {"p": "x"}}, "executables.p: not a JSON object"),
        ([], r"\(document\): not a JSON object"),
    ],
)
def test_a_malformed_lock_is_refused_naming_the_field(
    tmp_path: Path, document: object, field: str
) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps(document))
    with pytest.raises(LaunchError, match=f"geode.lock: {field}"):
        read_lock(tmp_path)


def test_a_lock_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("{")
    with pytest.raises(LaunchError, match=r"geode.lock: \(document\): not JSON"):
        read_lock(tmp_path)


def test_check_resolves_the_path_now_and_refuses_another_target(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    lock = read_lock(bundle)
    check_executables(lock)
    # The link now leads to another file, even one with the same content: the file that is
    # executed is not the one that was locked.
    twin = tmp_path / "twin"
    twin.write_bytes((tmp_path / "real" / "python3.11").read_bytes())
    twin.chmod(0o755)
    (tools / "python3").unlink()
    (tools / "python3").symlink_to(twin)
    with pytest.raises(
        LaunchError,
        match=rf"python3 at .*/bin/python3 now resolves to {twin}, not to .*python3.11 as locked",
    ):
        check_executables(lock)
    # Back to the locked file, whose content changed: refused.
    (tools / "python3").unlink()
    (tools / "python3").symlink_to(tmp_path / "real" / "python3.11")
    native_executable(tmp_path / "real" / "python3.11", "evil")
    with pytest.raises(LaunchError, match=r"python3 at .* has changed since it was locked"):
        check_executables(lock)


def test_check_refuses_a_changed_file(bundle: Path, tools: Path) -> None:
    lock = read_lock(bundle)
    native_executable(tools / "tool", "changed")
    with pytest.raises(LaunchError, match=r"tool at .* has changed"):
        check_executables(lock)


def test_check_refuses_a_path_that_is_no_longer_an_executable_file(
    bundle: Path, tools: Path, tmp_path: Path
) -> None:
    lock = read_lock(bundle)
    (tmp_path / "real" / "python3.11").chmod(0o644)
    with pytest.raises(LaunchError, match="no longer an executable file"):
        check_executables(lock)
    (tmp_path / "real" / "python3.11").unlink()
    (tmp_path / "real" / "python3.11").mkdir()
    with pytest.raises(LaunchError, match="no longer an executable file"):
        check_executables(lock)
    (tools / "tool").unlink()
    with pytest.raises(LaunchError, match="no longer exists"):
        check_executables(BundleLock({"tool": lock.executables["tool"]}))


def test_locked_executable(staged: StagedBundle, tools: Path) -> None:
    assert locked_executable("tool", {}) is None  # outside geode run
    environ = {BUNDLE_LOCK_ENV: str(staged.lock_file)}
    assert locked_executable("tool", environ) == tools / "tool"
    with pytest.raises(LaunchError, match="mariadbd is outside the bundle: lock it with"):
        locked_executable("mariadbd", environ)
    native_executable(tools / "tool", "changed")
    with pytest.raises(LaunchError, match="has changed"):
        locked_executable("tool", environ)


# --- staging ---------------------------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in root.rglob("*")
        if not p.is_symlink()
    }


def test_the_copy_is_private_measured_and_registered(
    bundle: Path, staged: StagedBundle, tmp_path: Path
) -> None:
    holder = staged.directory.parent
    assert holder.parent == tmp_path / "runtime"
    assert holder.name.startswith("geode-bundle-")
    assert stat.S_IMODE(holder.stat().st_mode) == 0o700
    assert staged.measurement == measure_bundle(staged.directory) == measure_bundle(bundle)
    assert staged.lock == read_lock(bundle)
    modes = _modes(staged.directory)
    assert stat.S_IMODE(staged.directory.stat().st_mode) == 0o500  # read-only once measured
    assert modes["pkg"] == 0o500
    assert modes["serve"] == 0o500  # execute bits kept
    assert modes["app.py"] == 0o400  # nothing readable by others
    assert modes["geode.lock"] == 0o400
    assert os.readlink(staged.directory / "alias.py") == "app.py"  # copied as a link
    # The record is held: another launcher's clean-up leaves the copy alone.
    assert (holder / "launcher.state").exists()
    assert clean_leftovers(tmp_path / "runtime") == 0
    assert staged.directory.exists()
    remove_staged(staged)
    assert list((tmp_path / "runtime").iterdir()) == []


def test_changing_the_original_does_not_change_the_copy(bundle: Path, staged: StagedBundle) -> None:
    (bundle / "app.py").write_text("print('changed')\n")
    assert (staged.directory / "app.py").read_text() == "print('app')\n"
    assert measure_bundle(staged.directory) == staged.measurement
    remove_staged(staged)


def test_what_is_not_measured_is_not_copied(bundle: Path, tmp_path: Path) -> None:
    (bundle / "__pycache__").mkdir()
    (bundle / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0" * 16)
    (bundle / "stale.pyc").write_bytes(b"\0" * 16)
    staged = stage_bundle(bundle, tmp_path)
    assert not (staged.directory / "__pycache__").exists()
    assert not (staged.directory / "stale.pyc").exists()
    remove_staged(staged)


def _refused(bundle: Path, base: Path, match: str) -> None:
    base.mkdir(exist_ok=True)
    with pytest.raises(LaunchError, match=match):
        stage_bundle(bundle, base)
    assert list(base.iterdir()) == []  # nothing half-copied is left


def test_an_absolute_link_is_refused(bundle: Path, tmp_path: Path) -> None:
    (bundle / "passwd").symlink_to("/etc/passwd")
    _refused(bundle, tmp_path / "rt", "the link passwd points outside the bundle")


def test_a_relative_link_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("print('evil')\n")
    (bundle / "pkg" / "evil.py").symlink_to("../../evil.py")
    _refused(bundle, tmp_path / "rt", "the link pkg/evil.py points outside the bundle")


def test_links_that_lead_out_only_together_are_refused(bundle: Path, tmp_path: Path) -> None:
    # Each stays inside when read alone ("pkg/up" -> "../mod.py" is "mod.py"), but
    # "escape" -> "pkg/up/../.." goes through the link: mod.py's directory, then its parent.
    (bundle / "pkg" / "up").symlink_to("..")
    (bundle / "escape").symlink_to("pkg/up/..")
    _refused(bundle, tmp_path / "rt", "the link escape points outside the bundle")


def test_a_special_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    os.mkfifo(bundle / "pipe")
    _refused(bundle, tmp_path / "rt", "pipe in the bundle is a special file")


def test_a_killed_launchers_copy_is_removed_by_the_next(bundle: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    code = (
        "import os, sys; from pathlib import Path; "
        "from geode.runtime.launcher import stage_bundle; "
        "s = stage_bundle(Path(sys.argv[1]), Path(sys.argv[2])); print(s.directory, flush=True); "
        "os._exit(9)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(runtime)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 9, done.stderr
    left = Path(done.stdout.strip())
    assert (left / "app.py").exists()  # nobody removed it
    again = stage_bundle(bundle, runtime)
    assert not left.parent.exists()
    assert [p.name for p in runtime.iterdir()] == [again.directory.parent.name]
    remove_staged(again)


# --- resolving the command --------------------------------------------------------------------


def test_an_interpreter_runs_a_script_of_the_copy_by_its_locked_path(
    staged: StagedBundle, tools: Path
) -> None:
    root = os.path.realpath(staged.directory)
    python = str(tools / "python3")  # the link: a venv's python keeps its packages
    assert resolve_command(staged, ["python3", "app.py", "x"]) == [python, f"{root}/app.py", "x"]
    assert resolve_command(staged, ["python3", "-u", "-W", "ignore", "-Xdev", "alias.py"]) == [
        python,
        "-u",
        "-W",
        "ignore",
        "-Xdev",
        f"{root}/app.py",
    ]
    assert resolve_command(staged, [python, "app.py"]) == [python, f"{root}/app.py"]
    assert resolve_command(staged, ["python3", "-m", "mod"]) == [python, "-m", "mod"]
    assert resolve_command(staged, ["python3", "-m", "pkg", "a"]) == [python, "-m", "pkg", "a"]
    assert resolve_command(staged, ["node", "app.py"]) == [str(tools / "node"), f"{root}/app.py"]


def test_programs_of_the_copy_and_locked_programs(staged: StagedBundle, tools: Path) -> None:
    root = os.path.realpath(staged.directory)
    assert resolve_command(staged, ["serve", "a"]) == [f"{root}/serve", "a"]
    assert resolve_command(staged, ["./serve"]) == [f"{root}/serve"]
    assert resolve_command(staged, [f"{root}/serve"]) == [f"{root}/serve"]
    # Not an interpreter, and not marked program: locked for the bundle's own use only.
    with pytest.raises(LaunchError, match="tool is locked for the bundle's own use"):
        resolve_command(staged, ["tool", "/etc/x", "-c"])


def test_geode_is_the_running_runtime(staged: StagedBundle) -> None:
    _executable(staged.directory / "geode")  # not even a file of the bundle replaces it
    assert resolve_command(staged, ["geode", "db", "serve"]) == [
        sys.executable,
        "-P",
        "-m",
        "geode",
        "db",
        "serve",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["python"], "python is outside the bundle: lock it with 'geode bundle lock DIR python'"),
        (["bash", "app.py"], "bash is outside the bundle: lock it with"),
        (["python3", "/tmp/evil.py"], "the script /tmp/evil.py is outside the bundle"),
        (["python3", "evil.py"], "the script evil.py is outside the bundle"),
        (["python3", "../launcher.state"], "the script ../launcher.state is outside the bundle"),
        (["python3", "evil"], "the script evil is outside the bundle"),
        (["python3", "-c", "print(1)"], "-c runs code that is not in the bundle"),
        (["python3", "-Bc", "print(1)"], "-Bc runs code that is not in the bundle"),
        (["python3", "-m", "json.tool"], "-m json.tool runs a module that is not in the bundle"),
        (["python3", "-mhttp.server"], "-m http.server runs a module that is not in the bundle"),
        (["python3"], "python3 would read its program from standard input"),
        (["python3", "-"], "python3 would read its program from standard input"),
        (["python3", "-i", "app.py"], "the option -i of python3 is not allowed"),
        (["python3", "--check-hash-based-pycs", "never", "app.py"], "is not allowed"),
        (["node", "-e", "1"], "-e runs code that is not in the bundle"),
        (["node", "--require=/tmp/x.js", "app.py"], "is not allowed"),
        (["../x"], "the program ../x is outside the bundle"),
        (["/bin/sh", "app.py"], "the program /bin/sh is outside the bundle"),
        (["./missing"], "the program ./missing is outside the bundle"),
        ([""], "the command is empty"),
    ],
)
def test_what_is_outside_the_bundle_is_refused_in_one_line(
    staged: StagedBundle, argv: list[str], message: str
) -> None:
    with pytest.raises(LaunchError) as refused:
        resolve_command(staged, argv)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_link_in_the_copy_that_leads_out_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    _executable(tmp_path / "evil.py")
    (copy / "app.py").symlink_to(tmp_path / "evil.py")
    (copy / "run").symlink_to("../evil.py")
    python = LockedExecutable(
        "python3", Path(sys.executable), SHA_A, interpreter=True, target=Path(sys.executable)
    )
    staged = StagedBundle(copy, b"", BundleLock({"python3": python}))
    with pytest.raises(LaunchError, match=r"the script app\.py is outside the bundle"):
        resolve_command(staged, ["python3", "app.py"])
    with pytest.raises(LaunchError, match=r"the program \./run is outside the bundle"):
        resolve_command(staged, ["./run"])
    with pytest.raises(LaunchError, match="-m app runs a module that is not in the bundle"):
        resolve_command(staged, ["python3", "-m", "app"])


def test_a_shell_runs_a_script_of_the_copy(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "app.sh").write_text("exit 0\n")
    sh = LockedExecutable("sh", Path("/bin/sh"), SHA_A, interpreter=True, target=Path("/bin/sh"))
    staged = StagedBundle(copy, b"", BundleLock({"sh": sh}))
    root = os.path.realpath(copy)
    assert resolve_command(staged, ["sh", "-eu", "app.sh"]) == ["/bin/sh", "-eu", f"{root}/app.sh"]
    with pytest.raises(LaunchError, match="-c runs code that is not in the bundle"):
        resolve_command(staged, ["sh", "-c", "echo evil"])
    with pytest.raises(LaunchError, match="-ec runs code that is not in the bundle"):
        resolve_command(staged, ["sh", "-ec", "echo evil"])
