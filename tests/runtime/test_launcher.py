"""``geode run``'s lay-out of credentials and its command supervision, without a Coordinator."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from geode.errors import LaunchError
from geode.manifest import SERVICE_KEY_MARKER
from geode.runtime import Activation
from geode.runtime.launcher import lay_out, remove_plan, run_command
from tests.support.activation import fake_activation


def _activation(files: dict[str, bytes], env: dict[str, bytes] | None = None) -> Activation:
    return fake_activation(files, env, argv=[b"--flag", b"x"])


def test_layout_modes_marker_and_cleanup(tmp_path: Path) -> None:
    absolute = tmp_path / "etc" / "app" / "key.pem"
    activation = _activation(
        {"rel/db.key": b"\x00\x01", str(absolute): SERVICE_KEY_MARKER.encode()},
        {"TOKEN": b"abc"},
    )
    plan = lay_out(activation, "web", ["prog"], base_dir=tmp_path, environ={})
    assert plan.argv == ["prog", "--flag", "x"]
    assert plan.env["TOKEN"] == "abc"
    assert plan.env["GEODE_SERVICE"] == "web"
    secrets_dir = Path(plan.env["GEODE_SECRETS_DIR"])
    assert (secrets_dir / "rel" / "db.key").read_bytes() == b"\x00\x01"
    assert absolute.read_bytes() == activation.private_key_pem()
    for path in (absolute, secrets_dir / "rel" / "db.key", Path(plan.env["GEODE_KEY_FILE"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(plan.directory.stat().st_mode) == 0o700
    remove_plan(plan)
    assert not plan.directory.exists()
    assert not absolute.exists()


def test_failed_layout_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    activation = _activation({"ok": b"1", str(blocker / "sub" / "x"): b"2"})
    (tmp_path / "base").mkdir()
    with pytest.raises(LaunchError, match="cannot write"):
        lay_out(activation, "web", ["prog"], base_dir=tmp_path / "base", environ={})
    assert list((tmp_path / "base").iterdir()) == []


def test_run_command_exit_codes_and_cleanup(tmp_path: Path) -> None:
    activation = _activation({})
    plan = lay_out(
        activation,
        "web",
        [sys.executable, "-c", "import sys; sys.exit(5)"],
        base_dir=tmp_path,
        environ=dict(os.environ),
    )
    assert run_command(plan) == 5
    assert not plan.directory.exists()
    killed = lay_out(
        activation,
        "web",
        [sys.executable, "-c", "import os; os.kill(os.getpid(), 15)"],
        base_dir=tmp_path,
        environ=dict(os.environ),
    )
    assert run_command(killed) == 128 + 15
    missing = lay_out(activation, "web", ["/nonexistent/prog"], base_dir=tmp_path, environ={})
    with pytest.raises(LaunchError, match="cannot start"):
        run_command(missing)
    assert not missing.directory.exists()


def test_mesh_view_and_ports_reach_the_app(tmp_path: Path) -> None:
    from dataclasses import replace

    from geode.manifest import EgressRoute, IngressRoute, MeshConfig

    mesh = MeshConfig(
        trust_domain="t",
        service="web",
        spiffe_id="spiffe://t/service/web",
        ingress=[IngressRoute(port=14001, app_port=24001, protocol="http")],
        egress=[
            EgressRoute(host="db", port=3306, local_port=23306, peers=["spiffe://t/service/db"])
        ],
    )
    plan = lay_out(replace(_activation({}), mesh=mesh), "web", ["p"], base_dir=tmp_path, environ={})
    assert plan.env["GEODE_INGRESS"] == "14001=127.0.0.1:24001"
    assert plan.env["GEODE_EGRESS"] == "db:3306=127.0.0.1:23306"
    assert MeshConfig.model_validate_json(Path(plan.env["GEODE_MESH_FILE"]).read_text()) == mesh
    remove_plan(plan)


def _later(seconds: float, action: object) -> None:
    import threading

    threading.Timer(seconds, action).start()  # type: ignore[arg-type]


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    import signal
    import time

    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    plan = lay_out(
        _activation({}),
        "web",
        [sys.executable, "-c", ignore],
        base_dir=tmp_path,
        environ=dict(os.environ),
    )
    _later(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    assert run_command(plan, grace=1.0) == 128 + signal.SIGKILL
    assert time.monotonic() - started < 10
    assert not plan.directory.exists()


def test_what_the_command_leaves_behind_is_ended(tmp_path: Path) -> None:
    import time

    pid_file = tmp_path / "straggler.pid"
    spawn = (
        "import subprocess, sys; "
        "p = subprocess.Popen(['sleep', '30']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    plan = lay_out(
        _activation({}),
        "web",
        [sys.executable, "-c", spawn],
        base_dir=tmp_path,
        environ=dict(os.environ),
    )
    assert run_command(plan, grace=2.0) == 0
    straggler = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{straggler}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the command's child outlived it")


def test_a_stop_signal_during_start_up_still_cleans_up(tmp_path: Path) -> None:
    import signal

    class SlowCompanion:
        def start(self) -> object:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while companions start
            return self

        def stop(self) -> None:
            pass

    plan = lay_out(_activation({}), "web", ["true"], base_dir=tmp_path, environ={})
    assert run_command(plan, companions=[SlowCompanion()]) == 128 + signal.SIGTERM
    assert not plan.directory.exists()


def test_the_command_keeps_the_open_file_limit_the_launcher_started_with(tmp_path: Path) -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    original = (min(1024, before[1]), before[1])  # a soft limit below the hard one
    resource.setrlimit(resource.RLIMIT_NOFILE, original)
    report = tmp_path / "limit"

    class RaisesLimit:  # as the transparent proxy does
        def start(self) -> object:
            resource.setrlimit(resource.RLIMIT_NOFILE, (original[1], original[1]))
            return self

        def stop(self) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, original)

    show = f"import resource; open({str(report)!r}, 'w').write(str(resource.getrlimit(7)[0]))"
    plan = lay_out(
        _activation({}),
        "web",
        [sys.executable, "-c", show],
        base_dir=tmp_path,
        environ=dict(os.environ),
    )
    try:
        assert run_command(plan, companions=[RaisesLimit()]) == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
    assert original[0] < original[1]
    assert int(report.read_text()) == original[0]


# Where the manifest's files go: never through a symbolic link, never over an existing file;
# what a dead launcher left is removed by the next one.
@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(runtime directory, a real directory holding a link to a victim directory, the victim)"""
    runtime, app, victim = tmp_path / "runtime", tmp_path / "app", tmp_path / "victim"
    for directory in (runtime, app, victim):
        directory.mkdir()
    (victim / "secret").write_bytes(b"the victim's own file")
    (app / "conf").symlink_to(victim)
    (app / "key.pem").symlink_to(victim / "secret")
    return runtime, app, victim


def test_a_file_whose_directory_is_a_link_is_refused(places: tuple[Path, Path, Path]) -> None:
    runtime, app, victim = places
    activation = _activation({"ok": b"1", str(app / "conf" / "secret"): b"SECRET"})
    with pytest.raises(LaunchError, match=f"{app / 'conf'} is a symbolic link"):
        lay_out(activation, "web", ["prog"], base_dir=runtime, environ={})
    assert (victim / "secret").read_bytes() == b"the victim's own file"
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]
    assert list(runtime.iterdir()) == []


def test_a_file_that_is_a_link_is_refused(places: tuple[Path, Path, Path]) -> None:
    runtime, app, victim = places
    activation = _activation({str(app / "key.pem"): b"SECRET"})
    with pytest.raises(LaunchError, match=f"cannot write {app / 'key.pem'}: .*symbolic link"):
        lay_out(activation, "web", ["prog"], base_dir=runtime, environ={})
    assert (victim / "secret").read_bytes() == b"the victim's own file"
    assert (app / "key.pem").is_symlink()
    assert list(runtime.iterdir()) == []


def test_an_existing_file_is_neither_overwritten_nor_deleted(
    places: tuple[Path, Path, Path],
) -> None:
    runtime, app, _victim = places
    (app / "existing").write_bytes(b"mine")
    activation = _activation({"first": b"1", str(app / "existing"): b"SECRET"})
    with pytest.raises(LaunchError, match="already exists"):
        lay_out(activation, "web", ["prog"], base_dir=runtime, environ={})
    assert (app / "existing").read_bytes() == b"mine"
    assert list(runtime.iterdir()) == []


def test_the_next_launcher_removes_what_a_dead_one_left(places: tuple[Path, Path, Path]) -> None:
    runtime, app, _victim = places
    outside = app / "out" / "token"
    dead = lay_out(_activation({str(outside): b"SECRET"}), "web", ["p"], base_dir=runtime)
    assert dead.record is not None
    dead.record.close()  # as if its process had died: the lock goes, nothing else
    for placed in dead.written:
        placed.close()
    assert outside.exists()
    # A live launcher's files are left alone.
    live = lay_out(_activation({"x": b"1"}), "web", ["p"], base_dir=runtime)
    assert not dead.directory.exists()
    assert not outside.exists()
    assert (app / "out").is_dir()
    again = lay_out(_activation({}), "web", ["p"], base_dir=runtime)
    assert live.directory.exists()
    remove_plan(again)
    remove_plan(live)
    assert list(runtime.iterdir()) == []


def test_a_missing_runtime_directory_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="cannot make a private directory in"):
        lay_out(_activation({}), "web", ["p"], base_dir=tmp_path / "missing", environ={})


def test_what_would_load_code_from_outside_the_bundle_is_not_inherited(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/tmp/evil",
        "PYTHONSTARTUP": "/tmp/evil.py",
        "PYTHONINSPECT": "1",
        "PYTHONPYCACHEPREFIX": "/tmp/evil",
        "PYTHONHOME": "/tmp/evil",
        "PYTHONWARNINGS": "ignore::evil.W",
        "BASH_ENV": "/tmp/evil.sh",
        "ENV": "/tmp/evil.sh",
        "BASH_FUNC_mariadbd%%": "() { echo evil; }",
        "NODE_OPTIONS": "--require /tmp/evil.js",
        "NODE_PATH": "/tmp/evil",
        "PERL5OPT": "-Mevil",
        "PERL5LIB": "/tmp/evil",
        "PERLLIB": "/tmp/evil",
        "RUBYOPT": "-revil",
        "RUBYLIB": "/tmp/evil",
        "LD_PRELOAD": "/tmp/evil.so",
        "LD_LIBRARY_PATH": "/tmp/evil",
        "LD_AUDIT": "/tmp/evil.so",
        "GCONV_PATH": "/tmp/evil",
        "PYTHONUNBUFFERED": "1",  # how output is written, not what runs: kept
    }
    # The manifest's env is applied after: it may set them (it is what the manifest pins).
    activation = _activation({}, {"PYTHONPATH": b"/opt/app/lib", "GREETING": b"hi"})
    plan = lay_out(activation, "web", ["prog"], base_dir=tmp_path, environ=inherited)
    try:
        assert plan.env["PATH"] == "/usr/bin:/bin"
        assert plan.env["LANG"] == "C.UTF-8"
        assert plan.env["PYTHONPATH"] == "/opt/app/lib"
        assert plan.env["GREETING"] == "hi"
        left = set(inherited) & set(plan.env)
        assert left == {"PATH", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED"}
    finally:
        remove_plan(plan)


def test_the_last_check_before_the_start_refuses_the_launch(tmp_path: Path) -> None:
    started = tmp_path / "started"
    plan = lay_out(
        _activation({}), "web", ["sh", "-c", f"touch {started}"], base_dir=tmp_path, environ={}
    )

    def changed() -> None:
        raise LaunchError("tool at /x has changed since it was locked")

    with pytest.raises(LaunchError, match="has changed since it was locked"):
        run_command(plan, before_start=changed)
    assert not started.exists()
    assert not plan.directory.exists()  # removed as on any other failure
