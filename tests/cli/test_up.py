"""``geode up``: the deployment file's errors, and a service that fails to start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geode.attestation import measure_bundle
from tests.support import free_port, make_bundle
from tests.support.bookstore import kill_tree


def geode_up(directory: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "geode", "up", str(directory), "--view", "plain", *args]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)  # and what it started: later tests need the ports
            raise
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def write(directory: Path, deployment: object, manifest: object | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "geode-up.yaml").write_text(yaml.safe_dump(deployment))
    if manifest is not None:
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_missing_deployment_file_is_named(tmp_path: Path) -> None:
    error = one_line_error(geode_up(tmp_path))
    assert "geode-up.yaml" in error


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        ({"manifest": "m.yaml", "services": [{"name": "a", "bundle": "a"}]}, "services.0.command"),
        ({"manifest": "m.yaml", "services": []}, "services"),
        (
            {"manifest": "m.yaml", "services": [{"name": "a", "bundle": "a", "command": ["x"]}],
             "extra": 1},
            "extra",
        ),
        (
            {"manifest": "m.yaml", "services": [
                {"name": "a", "bundle": "a", "command": ["x"]},
                {"name": "a", "bundle": "b", "command": ["y"]},
            ]},
            "a name appears twice",
        ),
        ("- not a mapping", "(top)"),
    ],
)  # fmt: skip
def test_a_bad_deployment_file_is_one_line_naming_the_field(
    tmp_path: Path, deployment: object, expected: str
) -> None:
    error = one_line_error(geode_up(write(tmp_path / "d", deployment)))
    assert expected in error


def test_a_missing_manifest_is_named_before_anything_starts(tmp_path: Path) -> None:
    deployment = {
        "manifest": "nope.yaml",
        "services": [{"name": "a", "bundle": "a", "command": ["x"]}],
    }
    error = one_line_error(geode_up(write(tmp_path / "d", deployment)))
    assert "nope.yaml" in error
    assert not (tmp_path / "d" / ".geode-run").exists()


def test_a_run_directory_of_something_else_is_not_emptied(tmp_path: Path) -> None:
    deployment = {
        "manifest": "manifest.json",
        "services": [{"name": "a", "bundle": "a", "command": ["x"]}],
    }
    directory = write(tmp_path / "d", deployment, {})
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    error = one_line_error(geode_up(directory, "--run-dir", str(precious)))
    assert "not a geode up run directory" in error
    assert (precious / "data").read_text() == "keep me"


def test_a_coordinator_address_in_use_is_refused(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        deployment = {
            "manifest": "manifest.json",
            "coordinator": {
                "client_addr": f"127.0.0.1:{port}",
                "mesh_addr": f"127.0.0.1:{free_port()}",
            },
            "services": [{"name": "a", "bundle": "a", "command": ["x"]}],
        }
        error = one_line_error(geode_up(write(tmp_path / "d", deployment, {})))
    assert f"127.0.0.1:{port} is in use" in error


def test_a_service_that_dies_at_start_stops_the_deployment(tmp_path: Path) -> None:
    """Its log is shown, a skipped service is said, and nothing is left running."""
    bundle = make_bundle(
        tmp_path / "d" / "app",
        {"app.py": "import sys\nprint('cannot start: no config')\nsys.exit(3)\n"},
    )
    manifest = {
        "version": 1,
        "trust_domain": "t.local",
        "packages": {"app": {"tee": "simulated", "measurement": measure_bundle(bundle).hex()}},
        "services": {"app": {"package": "app"}, "other": {"package": "app"}},
    }
    client, mesh, ready = free_port(), free_port(), free_port()
    deployment = {
        "manifest": "manifest.json",
        "coordinator": {"client_addr": f"127.0.0.1:{client}", "mesh_addr": f"127.0.0.1:{mesh}"},
        "services": [
            {"name": "other", "bundle": "app", "command": ["python3", "app.py"],
             "requires": "no-such-program-here", "skipped_note": "it is optional"},
            {"name": "app", "bundle": "app", "command": ["python3", "app.py"],
             "ready": f"127.0.0.1:{ready}"},
        ],
    }  # fmt: skip
    done = geode_up(write(tmp_path / "d", deployment, manifest))
    error = one_line_error(done)
    assert "app exited (3) before it was ready" in error
    assert "cannot start: no config" in done.stderr  # the log's tail
    assert "other: SKIPPED: no-such-program-here is not installed (it is optional)" in done.stdout
    assert "Stopped: no process left." in done.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", client)) != 0  # the Coordinator is gone
