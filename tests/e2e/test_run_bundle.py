"""``geode run`` runs what it measured: real Coordinator, real ``geode run`` processes. A command
outside the bundle, a bundle changed after the manifest pinned its measurement, and an
undeclared or changed system executable are each refused; what runs is the staged copy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from geode.attestation import measure_bundle
from geode.cli import _run
from geode.client import CoordinatorClient
from geode.errors import LaunchError
from geode.runtime import Activation, write_lock
from tests.conftest import StartCoordinator
from tests.support import (
    CoordinatorProcess,
    geode_cli,
    geode_run_argv,
    make_bundle,
    sample_manifest,
    wait_until,
)

pytestmark = pytest.mark.e2e

EVIL = "open('EVIL_RAN', 'w').write('evil')\n"
# Waits for the test's go-ahead (argv[1] exists), then reports a module and a data file of the
# bundle, both read after the test changed the originals.
APP = """
import os, sys, time
print("started", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
import helper
print("helper:", helper.VALUE, "data:", open("data.txt").read().strip(), flush=True)
"""


class _Deployment:
    def __init__(self, coordinator: CoordinatorProcess, env: dict[str, str], tmp: Path) -> None:
        self.coordinator, self.tmp = coordinator, tmp
        self.runtime = tmp / "runtime"
        self.runtime.mkdir()
        self.env = {**env, "GEODE_RUNTIME_DIR": str(self.runtime)}
        self.bundle = make_bundle(
            tmp / "bundle",
            {"app.py": APP, "helper.py": "VALUE = 'original'\n", "data.txt": "original\n"},
        )
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = tmp / "root.pem"
            self.root.write_text(client.certificates().root)

    def pin(self) -> None:
        """A manifest whose package is the bundle as it is now ('web' gets no extra argv)."""
        manifest = sample_manifest(measure_bundle(self.bundle).hex(), argv=[])
        with CoordinatorClient(self.coordinator.client_addr, insecure=True) as client:
            client.set_manifest(manifest.encode())

    def activations(self) -> int:
        counts = self.coordinator.status().get("activations") or {}
        assert isinstance(counts, dict)
        return int(counts.get("web", 0))

    def run(
        self, *command: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = geode_run_argv(self.coordinator.mesh_addr, "web", self.bundle, self.root, *command)
        return subprocess.run(
            argv,
            env={**self.env, **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def deployment(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> _Deployment:
    return _Deployment(start_coordinator(), geode_env, tmp_path)


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("command", "outside"),
    [
        (["python3", "evil.py"], "the script evil.py is outside the bundle"),
        (["python3", "{tmp}/evil.py"], "the script {tmp}/evil.py is outside the bundle"),
        (["python3", "-c", EVIL], "-c runs code that is not in the bundle"),
        (["sh", "evil.sh"], "sh is outside the bundle: lock it with 'geode bundle lock DIR sh'"),
        (
            ["python3", "-X", "pycache_prefix={tmp}", "app.py"],
            "the option -X pycache_prefix of python3 is not allowed by geode run",
        ),
        (
            ["python3", "-W", "ignore::evil.Warning", "app.py"],
            "-W ignore::evil.Warning of python3 names a warning category in a module, "
            "which Python imports",
        ),
        (
            ["python3", "-P", "-m", "helper"],
            "-m helper with -P of python3 is not allowed by geode run: Python would not look "
            "for the module in the bundle first",
        ),
        (
            ["geode", "up", "{tmp}/other.yaml"],
            "geode up is not run by geode run (a bundle runs 'geode db serve')",
        ),
    ],
)
def test_a_command_outside_the_bundle_is_refused_before_activation(
    deployment: _Deployment, tmp_path: Path, command: list[str], outside: str
) -> None:
    deployment.pin()
    (tmp_path / "evil.py").write_text(EVIL)
    (tmp_path / "evil.sh").write_text("echo evil > EVIL_RAN\n")
    argv = [part.format(tmp=tmp_path) for part in command]
    done = deployment.run(*argv, cwd=tmp_path)  # evil.py is right there, beside the caller
    assert done.returncode == 1
    assert _error_line(done) == f"Error: geode run: {outside.format(tmp=tmp_path)}"
    assert not (tmp_path / "EVIL_RAN").exists()
    assert "activated" not in done.stderr
    assert deployment.activations() == 0
    assert list(deployment.runtime.iterdir()) == []  # the staged copy is gone


def test_a_bundle_changed_after_its_measurement_was_pinned_is_refused(
    deployment: _Deployment,
) -> None:
    deployment.pin()
    (deployment.bundle / "helper.py").write_text("VALUE = 'changed'\n")
    done = deployment.run("python3", "app.py", "go")
    assert done.returncode == 1
    line = _error_line(done)
    assert "measurement" in line, line
    assert "started" not in done.stdout
    assert deployment.activations() == 0
    assert list(deployment.runtime.iterdir()) == []  # removed on the activation's failure


def test_an_undeclared_or_changed_system_executable_is_refused(
    deployment: _Deployment, geode_env: dict[str, str]
) -> None:
    tools = deployment.tmp / "tools"
    tools.mkdir()
    shutil.copy2("/bin/echo", tools / "say")  # an executable we control
    shutil.copy2("/bin/echo", tools / "shout")
    env = {**geode_env, "PATH": f"{tools}:/usr/bin:/bin"}
    locked = geode_cli(
        "bundle", "lock", str(deployment.bundle), "say", "--program", "say", env=env, check=True
    )
    assert f"say: {tools / 'say'} sha256 " in locked.stdout
    assert "(program)" in locked.stdout  # the lock says it may be the command itself
    geode_cli("bundle", "lock", str(deployment.bundle), "shout", env=env, check=True)
    deployment.pin()

    ran = deployment.run("say", "hello from the locked echo")
    assert ran.returncode == 0, ran.stderr
    assert "hello from the locked echo" in ran.stdout
    assert deployment.activations() == 1

    undeclared = deployment.run("yell", "x")
    assert undeclared.returncode == 1
    assert _error_line(undeclared) == (
        "Error: geode run: yell is outside the bundle: lock it with 'geode bundle lock DIR yell'"
    )
    # Locked, but not as a program: for the bundle's own use (as mariadbd is, for db serve).
    own_use = deployment.run("shout", "--plugin-load-add=evil.so")
    assert own_use.returncode == 1
    assert _error_line(own_use) == (
        "Error: geode run: shout is locked for the bundle's own use (e.g. by geode db serve), "
        "not as the command"
    )

    with (tools / "say").open("ab") as f:
        f.write(b"\0")  # still runs, but not what was locked
    changed = deployment.run("say", "x")
    assert changed.returncode == 1
    assert _error_line(changed) == (
        f"Error: geode run: say at {tools / 'say'} has changed since it was locked "
        "(its SHA-256 is not the one in geode.lock)"
    )
    assert deployment.activations() == 1  # neither was activated
    assert list(deployment.runtime.iterdir()) == []


def test_the_command_runs_from_the_staged_copy(deployment: _Deployment) -> None:
    deployment.pin()
    go = deployment.tmp / "go"
    log = deployment.tmp / "app.log"
    argv = geode_run_argv(
        deployment.coordinator.mesh_addr, "web", deployment.bundle, deployment.root,
        "python3", "app.py", str(go),
    )  # fmt: skip
    with log.open("wb") as out:
        launcher = subprocess.Popen(argv, env=deployment.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "started" in log.read_text() or launcher.poll() is not None, 60)
        assert launcher.poll() is None, log.read_text()
        # The originals change once the service runs (before it imports or reads them).
        (deployment.bundle / "helper.py").write_text("VALUE = 'changed'\n")
        (deployment.bundle / "data.txt").write_text("changed\n")
        go.touch()
        assert launcher.wait(timeout=60) == 0, log.read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert "helper: original data: original" in log.read_text()
    # The launcher has exited: its copy and its private directory are gone.
    assert list(deployment.runtime.iterdir()) == []


SHOW_ENV = """
import os
names = ["PYTHONPATH", "BASH_ENV", "LD_PRELOAD", "NODE_OPTIONS", "GREETING"]
print("env:", sorted(n for n in names if n in os.environ), flush=True)
"""


def test_the_callers_environment_cannot_load_code_into_the_command(
    deployment: _Deployment, tmp_path: Path
) -> None:
    (deployment.bundle / "show_env.py").write_text(SHOW_ENV)
    deployment.pin()
    evil = tmp_path / "evil"
    evil.mkdir()
    # Python imports sitecustomize from $PYTHONPATH at start-up, before the script. The
    # launcher is the caller's own process: only the command (GEODE_SPIFFE_ID set) counts.
    (evil / "sitecustomize.py").write_text(
        f"import os\nif os.environ.get('GEODE_SPIFFE_ID'):\n"
        f"    open({str(tmp_path / 'EVIL_RAN')!r}, 'w').write('evil')\n"
    )
    (evil / "evil.sh").write_text(f"echo evil > {tmp_path}/EVIL_RAN\n")
    caller = {
        "PYTHONPATH": str(evil),
        "BASH_ENV": str(evil / "evil.sh"),
        "NODE_OPTIONS": f"--require {evil}/evil.js",
        "LD_PRELOAD": str(evil / "missing.so"),
    }
    done = deployment.run("python3", "show_env.py", cwd=tmp_path, env=caller)
    assert done.returncode == 0, done.stderr
    # The manifest's own env still reaches the command; none of the caller's does.
    assert "env: ['GREETING']" in done.stdout
    assert not (tmp_path / "EVIL_RAN").exists()


def test_a_script_of_the_bundle_runs_with_its_locked_interpreter(
    deployment: _Deployment, tmp_path: Path
) -> None:
    hello = deployment.bundle / "hello"
    hello.write_text("#!/usr/bin/env python3\nimport sys\nprint('hello from', sys.executable)\n")
    hello.chmod(0o755)
    script = deployment.bundle / "script.sh"
    script.write_text("#!/bin/sh\necho evil > EVIL_RAN\n")
    script.chmod(0o755)
    deployment.pin()
    # The caller's $PATH leads /usr/bin/env to another python3.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "python3").write_text(f"#!/bin/sh\necho evil > {tmp_path}/EVIL_RAN\n")
    (fake / "python3").chmod(0o755)
    path = f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    done = deployment.run("./hello", env={"PATH": path})
    assert done.returncode == 0, done.stderr
    assert "hello from" in done.stdout
    assert not (tmp_path / "EVIL_RAN").exists()
    refused = deployment.run("./script.sh")
    assert refused.returncode == 1
    assert _error_line(refused) == (
        "Error: geode run: the program ./script.sh starts with #!/bin/sh, and /bin/sh is not a "
        "locked executable's path"
    )


def test_a_script_is_not_locked_as_an_executable(
    deployment: _Deployment, geode_env: dict[str, str]
) -> None:
    shims = deployment.tmp / "shims"
    shims.mkdir()
    (shims / "python3").write_text('#!/usr/bin/env bash\nexec "$PYENV_VERSION" "$@"\n')
    (shims / "python3").chmod(0o755)
    env = {**geode_env, "PATH": f"{shims}:/usr/bin:/bin"}
    done = geode_cli("bundle", "lock", str(deployment.bundle), "python3", env=env)
    assert done.returncode == 1
    assert _error_line(done) == (
        f"Error: python3 at {shims / 'python3'} is a script (#!/usr/bin/env bash): lock its "
        "interpreter instead"
    )


def test_an_executable_changed_during_the_activation_is_refused(
    deployment: _Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = deployment.tmp / "tools"
    tools.mkdir()
    shutil.copy2("/bin/echo", tools / "say")
    write_lock(deployment.bundle, ["say"], programs=["say"], path=str(tools))
    deployment.pin()
    ran = deployment.tmp / "ran"
    activate = _run.activate

    def activate_then_change(*args: Any, **kwargs: Any) -> Activation:
        activation = activate(*args, **kwargs)
        with (tools / "say").open("ab") as f:  # after the first check, before the start
            f.write(b"\0")
        return activation

    monkeypatch.setattr(_run, "activate", activate_then_change)
    monkeypatch.setenv("GEODE_RUNTIME_DIR", str(deployment.runtime))
    args = [
        "--service", "web", "--coordinator", deployment.coordinator.mesh_addr,
        "--bundle", str(deployment.bundle), "--root-ca", str(deployment.root),
        "--", "say", str(ran),
    ]  # fmt: skip
    with pytest.raises(LaunchError) as refused:
        _run.run.main(args, standalone_mode=False)
    assert str(refused.value) == (
        f"geode run: say at {tools / 'say'} has changed since it was locked "
        "(its SHA-256 is not the one in geode.lock)"
    )
    assert deployment.activations() == 1  # activated, then refused before the start
    assert list(deployment.runtime.iterdir()) == []
