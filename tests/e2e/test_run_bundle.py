"""``geode run`` runs what it measured: real Coordinator, real ``geode run`` processes. A command
outside the bundle, a bundle changed after the manifest pinned its measurement, and an
undeclared or changed system executable are each refused; what runs is the staged copy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient
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

    def run(self, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = geode_run_argv(self.coordinator.mesh_addr, "web", self.bundle, self.root, *command)
        return subprocess.run(
            argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60
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
    locked = geode_cli("bundle", "lock", str(deployment.bundle), "say", env=env, check=True)
    assert f"say: {tools / 'say'} sha256 " in locked.stdout
    deployment.pin()

    ran = deployment.run("say", "hello from the locked echo")
    assert ran.returncode == 0, ran.stderr
    assert "hello from the locked echo" in ran.stdout
    assert deployment.activations() == 1

    undeclared = deployment.run("shout", "x")
    assert undeclared.returncode == 1
    assert _error_line(undeclared) == (
        "Error: geode run: shout is outside the bundle: lock it with 'geode bundle lock DIR shout'"
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
