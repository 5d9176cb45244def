"""``geode coordinator`` and its TEE: without one (this machine has none) it exits at once,
listing every interface it probed, before it makes a data directory or binds a port; the
simulated platform's keys are refused on hardware; ``geode status`` names the TEE. Fakes reach
the command only as click's ``obj`` (``CliDeps``), never through a flag or the environment."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from geode.attestation import HostTee
from geode.cli import cli
from geode.cli._common import CliDeps
from geode.errors import NoTeeError
from tests.support import CoordinatorProcess, free_port, geode_cli

# The interfaces probe_host looks at, as its message names them.
INTERFACES = ("configfs-tsm", "/dev/sev-guest", "/dev/tdx_guest", "/dev/attestation")


@pytest.mark.parametrize("tee", [(), ("--tee", "tdx")])
def test_without_a_tee_it_exits_at_once_listing_what_it_probed(
    tee: tuple[str, ...], tmp_path: Path, geode_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    client_port, mesh_port = free_port(), free_port()
    with socket.socket() as held:  # had it got as far as binding, this would be in the way
        held.bind(("127.0.0.1", client_port))
        held.listen()
        started = time.monotonic()
        result = geode_cli(
            "coordinator", "--data-dir", str(data), *tee,
            "--client-addr", f"127.0.0.1:{client_port}", "--mesh-addr", f"127.0.0.1:{mesh_port}",
            env=geode_env, timeout=30,
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert took < 5, f"took {took:.1f} s"
    assert "no usable TEE" in result.stderr
    for interface in INTERFACES if not tee else ("configfs-tsm", "/dev/tdx_guest"):
        assert interface in result.stderr
    assert "--tee simulated" in result.stderr
    assert "Traceback" not in result.stderr
    assert "address already in use" not in result.stderr.lower()
    assert "client API" not in result.stderr
    assert not data.exists()
    # Nor did it make or read a simulated platform's keys.
    assert not Path(geode_env["GEODE_PLATFORM_KEY"]).exists()
    assert not Path(geode_env["GEODE_SEALING_KEY"]).exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--tee", "sev-snp", "--trust-platform-key", "K"),
        ("--trust-coordinator-platform-key", "K"),
        ("--tee", "tdx", "--platform-key", "K"),
        ("--tee", "sgx-gramine", "--sealing-key", "K"),
        ("--simulation", "--tee", "tdx"),
    ],
)
def test_simulation_options_are_usage_errors_on_hardware(
    args: tuple[str, ...], tmp_path: Path, geode_env: dict[str, str]
) -> None:
    (tmp_path / "K").write_bytes(b"a key file")
    named = tuple(str(tmp_path / a) if a == "K" else a for a in args)
    result = geode_cli(
        "coordinator", "--data-dir", str(tmp_path / "data"), *named, env=geode_env, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "simulation only" in result.stderr or "contradicts" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_the_command_probes_through_its_deps(tmp_path: Path) -> None:
    """``CliDeps.probe`` is the one way a test puts a TEE under the command: it is asked for
    the TEE ``--tee`` names, and its NoTeeError is the command's one line, exit 1."""
    asked: list[tuple[str, str]] = []

    def probe(choice: str, *, sgx_sealing: str) -> HostTee:
        asked.append((choice, sgx_sealing))
        raise NoTeeError(choice, (("/dev/tdx_guest", "/dev/tdx_guest", "absent"),))

    data = tmp_path / "data"
    result = CliRunner().invoke(
        cli, ["coordinator", "--data-dir", str(data), "--tee", "tdx"], obj=CliDeps(probe=probe)
    )
    assert result.exit_code == 1, result.output
    assert asked == [("tdx", "mrenclave")]
    assert "no usable TEE (tdx)" in result.output
    assert not data.exists()


def test_the_probe_is_told_the_sgx_sealing_choice(tmp_path: Path) -> None:
    """``--sgx-sealing`` reaches a test's probe as it reaches ``probe_host``: what the command
    runs on is what the flags say, whoever probes."""
    asked: list[tuple[str, str]] = []

    def probe(choice: str, *, sgx_sealing: str) -> HostTee:
        asked.append((choice, sgx_sealing))
        raise NoTeeError(choice, (("gramine", "/dev/attestation", "absent"),))

    args = ["coordinator", "--data-dir", str(tmp_path / "data"), "--tee", "sgx-gramine"]
    result = CliRunner().invoke(cli, [*args, "--sgx-sealing", "mrsigner"], obj=CliDeps(probe=probe))
    assert result.exit_code == 1, result.output
    assert asked == [("sgx-gramine", "mrsigner")]


def test_status_names_the_tee(tmp_path: Path, geode_env: dict[str, str]) -> None:
    coordinator = CoordinatorProcess(tmp_path / "data", geode_env, tmp_path / "c.log")
    try:
        coordinator.start()
        result = geode_cli(
            "status", "--coordinator", coordinator.client_addr, "--insecure", env=geode_env
        )
    finally:
        coordinator.stop()
    assert result.returncode == 0, result.stderr
    assert "tee:          simulated (simulated platform key)" in result.stdout
    assert "sealing:      sealing key file" in result.stdout
    assert "measurement:  " in result.stdout
