"""``geode up``: the deployment file's errors, the bundles it builds and the measurements it
pins, and a service that fails to start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geode.attestation import measure_bundle
from geode.cli._up_deployment import package_pins, prepare_manifest
from geode.errors import GeodeError
from tests.support import free_port
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
        (
            {"manifest": "m.yaml",
             "services": [{"name": "a", "bundle": "a", "command": ["x"], "lock": "python3"}]},
            "services.0.lock",
        ),
        (
            {"manifest": "m.yaml", "services": [
                {"name": "a", "bundle": "a", "command": ["x"], "lock": ["/usr/bin/python3"]}]},
            "services.0.lock.0",
        ),
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


PLACEHOLDER = "00" * 32  # what geode up replaces with the measurement of the bundle it built


def deployment_of(bundle: Path, **service: object) -> tuple[dict[str, object], dict[str, object]]:
    """A deployment of one Python service ``app`` in ``bundle`` (python3 locked), on free
    ports, and its manifest (placeholder measurement)."""
    manifest = {
        "version": 1,
        "trust_domain": "t.local",
        "packages": {"app": {"tee": "simulated", "measurement": PLACEHOLDER}},
        "services": {"app": {"package": "app"}, "other": {"package": "app"}},
    }
    deployment = {
        "manifest": "manifest.json",
        "coordinator": {
            "client_addr": f"127.0.0.1:{free_port()}",
            "mesh_addr": f"127.0.0.1:{free_port()}",
        },
        "services": [
            {"name": "app", "bundle": bundle.name, "lock": ["python3"],
             "command": ["python3", "app.py"], **service},
        ],
    }  # fmt: skip
    return deployment, manifest


def nothing_listens(address: object) -> bool:
    host, _, port = str(address).rpartition(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) != 0


def test_geode_up_pins_the_bundle_it_built(tmp_path: Path) -> None:
    """The service runs from the bundle geode up built (python3 locked in it), and the
    manifest it set pins that bundle's measurement, not the file's placeholder."""
    bundle = tmp_path / "d" / "app"
    bundle.mkdir(parents=True)
    ready = free_port()
    (bundle / "app.py").write_text(
        "import socket, time\n"
        f"server = socket.create_server(('127.0.0.1', {ready}))\n"
        "time.sleep(600)\n"
    )
    deployment, manifest = deployment_of(bundle, ready=f"127.0.0.1:{ready}")
    run = tmp_path / "run"
    done = geode_up(
        write(tmp_path / "d", deployment, manifest), "--run-dir", str(run), "--for", "1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = run / "bundles" / "app"
    lock = json.loads((built / "geode.lock").read_text())
    python3 = lock["executables"]["python3"]
    assert Path(python3["path"]).parent == Path(sys.executable).parent  # this environment's
    assert python3["interpreter"] is True
    measurement = measure_bundle(built).hex()
    assert measurement != measure_bundle(bundle).hex()  # the lock is part of it
    assert f"pinned app {measurement[:16]}" in done.stdout
    set_manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    assert set_manifest["packages"]["app"]["measurement"] == measurement
    assert "Stopped: no process left." in done.stderr
    assert not (bundle / "geode.lock").exists()  # the deployment's own bundle is left alone


def test_a_lock_naming_a_missing_executable_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "d" / "app"
    bundle.mkdir(parents=True)
    (bundle / "app.py").write_text("print('never runs')\n")
    deployment, manifest = deployment_of(bundle, lock=["python3", "no-such-executable-here"])
    run = tmp_path / "run"
    done = geode_up(write(tmp_path / "d", deployment, manifest), "--run-dir", str(run))
    error = one_line_error(done)
    assert "app: lock: no-such-executable-here is not found" in error
    assert "Coordinator:" not in done.stdout
    assert not (run / "logs").exists()  # no process was started, not even the Coordinator
    coordinator = deployment["coordinator"]
    assert isinstance(coordinator, dict)
    assert nothing_listens(coordinator["client_addr"])


def test_each_package_is_pinned_to_the_bundle_of_its_services(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "trust_domain": "t.local",
                "packages": {
                    "app": {"tee": "simulated", "measurement": PLACEHOLDER, "debug": False},
                    "enclave": {"tee": "sgx", "measurement": PLACEHOLDER},
                },
                "services": {
                    "a": {"package": "app"},
                    "b": {"package": "app"},
                    "e": {"package": "enclave"},
                },
            }
        )
    )
    assert package_pins(manifest, {"a": "11" * 32, "b": "11" * 32}) == {"app": "11" * 32}
    pinned = yaml.safe_load(prepare_manifest(manifest, False, pins={"app": "11" * 32}))
    assert pinned["packages"]["app"] == {
        "tee": "simulated",
        "measurement": "11" * 32,
        "debug": False,
    }
    assert pinned["packages"]["enclave"]["measurement"] == PLACEHOLDER
    with pytest.raises(GeodeError, match=r"packages.app: the bundles of its services measure"):
        package_pins(manifest, {"a": "11" * 32, "b": "22" * 32})
    with pytest.raises(GeodeError, match=r"packages.enclave.tee: 'sgx', not 'simulated'"):
        package_pins(manifest, {"e": "11" * 32})
    with pytest.raises(GeodeError, match=r"services.x.package: missing"):
        package_pins(manifest, {"x": "11" * 32})


def test_a_service_that_dies_at_start_stops_the_deployment(tmp_path: Path) -> None:
    """Its log is shown, a skipped service is said, and nothing is left running."""
    bundle = tmp_path / "d" / "app"
    bundle.mkdir(parents=True)
    (bundle / "app.py").write_text(
        "import sys\nprint('cannot start: no config', sys.argv[1:])\nsys.exit(3)\n"
    )
    ready = free_port()
    deployment, manifest = deployment_of(bundle, ready=f"127.0.0.1:{ready}")
    services = deployment["services"]
    assert isinstance(services, list)
    services.insert(
        0,
        {"name": "other", "bundle": "app", "lock": ["no-such-program-here"],
         "command": ["python3", "app.py"], "requires": "no-such-program-here",
         "skipped_note": "it is optional", "skipped_args": {"app": ["--without-other"]}},
    )  # fmt: skip
    done = geode_up(write(tmp_path / "d", deployment, manifest))
    error = one_line_error(done)
    assert "app exited (3) before it was ready" in error  # activated: its bundle was pinned
    # The log's tail; the skipped service's skipped_args reached the app's command.
    assert "cannot start: no config ['--without-other']" in done.stderr
    assert "other: SKIPPED: no-such-program-here is not installed (it is optional)" in done.stdout
    assert "Stopped: no process left." in done.stderr
    coordinator = deployment["coordinator"]
    assert isinstance(coordinator, dict)
    assert nothing_listens(coordinator["client_addr"])  # the Coordinator is gone
