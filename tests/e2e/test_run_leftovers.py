"""``geode run`` killed outright leaves nothing behind: real Coordinator, real launchers, an
app started through a shell (whose background child ``PR_SET_PDEATHSIG`` alone never reaches),
SIGKILL, and the next start on the same runtime directory."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient
from tests.conftest import StartCoordinator
from tests.support import (
    CoordinatorProcess,
    geode_run_argv,
    make_bundle,
    sample_manifest,
    wait_until,
)

pytestmark = pytest.mark.e2e

# The app is a script of the bundle, run by the locked shell (see _Deployment).
APP = ["sh", "app.sh"]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid:
            found += [int(entry.name), *_descendants(int(entry.name))]
    return found


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class _Deployment:
    def __init__(self, coordinator: CoordinatorProcess, env: dict[str, str], tmp: Path) -> None:
        self.coordinator, self.tmp = coordinator, tmp
        self.bundle = make_bundle(
            tmp / "bundle",
            {"app.sh": "sleep 1000 & exec sleep 1000\n", "done.sh": "exit 0\n"},
            lock=("sh",),
        )
        self.outside = tmp / "outside"
        self.runtime = tmp / "runtime"
        self.runtime.mkdir()
        self.env = {**env, "GEODE_RUNTIME_DIR": str(self.runtime)}
        self.started: list[int] = []
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = tmp / "root.pem"
            self.root.write_text(client.certificates().root)
        files = {
            "keys/db.key": "{{ secrets.db_key | hex }}",
            "service.key": "{{ geode.service_key | pem }}",
            str(self.outside / "token"): "{{ secrets.api_token | hex }}",
        }
        manifest = sample_manifest(measure_bundle(self.bundle).hex(), files=files)
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            client.set_manifest(manifest.encode())

    def argv(self, *command: str) -> list[str]:
        return geode_run_argv(self.coordinator.mesh_addr, "web", self.bundle, self.root, *command)

    def start_app(self, name: str) -> tuple[subprocess.Popen[bytes], list[int]]:
        """A launcher running APP; once both sleeps run: it and every process under it."""
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            launcher = subprocess.Popen(
                self.argv(*APP), env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

        def sleeping() -> bool:
            assert launcher.poll() is None, log.read_text()
            tree = _descendants(launcher.pid)
            return sum(_command(pid).startswith(b"sleep\0") for pid in tree) == 2

        self.started.append(launcher.pid)
        wait_until(sleeping, 60, log.read_text)
        tree = _descendants(launcher.pid)
        self.started += tree
        return launcher, tree

    def close(self) -> None:
        """Whatever a failed test left running goes (only processes it started)."""
        for pid in self.started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[Path]:
        return sorted(self.runtime.iterdir())

    def private_and_staged(self) -> tuple[Path, Path]:
        """The launcher's private directory and its staged copy of the bundle."""
        [staged] = [p for p in self.leftovers() if p.name.startswith("geode-bundle-")]
        [private] = [p for p in self.leftovers() if p != staged]
        return private, staged


@pytest.fixture
def deployment(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> Iterator[_Deployment]:
    d = _Deployment(start_coordinator(), geode_env, tmp_path)
    yield d
    d.close()


def test_a_launcher_killed_outright_leaves_no_process_and_its_files_go_at_the_next_start(
    deployment: _Deployment,
) -> None:
    launcher, tree = deployment.start_app("first")
    private, staged = deployment.private_and_staged()
    assert (private / "credentials" / "key.pem").exists()
    assert (staged / "bundle" / "app.sh").read_text() == "sleep 1000 & exec sleep 1000\n"
    assert (deployment.outside / "token").exists()

    launcher.kill()
    launcher.wait(timeout=10)
    wait_until(
        lambda: not any(_alive(pid) for pid in tree),
        5,
        lambda: f"still running: {[(p, _command(p)) for p in tree if _alive(p)]}",
    )
    # Nobody could clean up: the private directory, the staged copy of the bundle and the file
    # outside them are still there.
    assert deployment.leftovers() == sorted([private, staged])

    # The next start removes them (and, here, runs a command that ends at once).
    done = subprocess.run(
        deployment.argv("sh", "done.sh"),
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "left when it died" in done.stderr
    assert deployment.leftovers() == []
    assert not (deployment.outside / "token").exists()


def test_the_next_start_kills_a_group_whose_watchdog_died_with_the_launcher(
    deployment: _Deployment,
) -> None:
    launcher, tree = deployment.start_app("first")
    [watchdog] = [pid for pid in tree if b"_process.py" in _command(pid)]
    subprocess.run(["kill", "-9", str(watchdog)], check=True)
    launcher.kill()
    launcher.wait(timeout=10)
    # Without the watchdog, the shell's background child outlives the launcher...
    survivors = [pid for pid in tree if _alive(pid)]
    assert survivors, "PR_SET_PDEATHSIG alone does not reach the shell's child"
    # ... until the next launcher on the same runtime directory.
    done = subprocess.run(
        deployment.argv("sh", "done.sh"),
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: not any(_alive(pid) for pid in survivors), 5)
    assert deployment.leftovers() == []
    assert not (deployment.outside / "token").exists()
