"""``geode up DIR``: a whole deployment on this machine, in simulation, with a live view.

``DIR/geode-up.yaml`` names the manifest, the Coordinator's addresses and the services in start
order (bundle, the system executables to lock in it, command, the port that says it is ready, its
page). ``geode up`` builds each service's bundle (copied to the run directory, its executables
locked, measured: ``_up_bundles``), starts the Coordinator, verifies its deployment statement,
sets the manifest with the built bundles' measurements pinned (written to ``manifest.yaml`` in the
run directory), launches each service under ``geode run`` with its built bundle, and shows the
services and their counters until Ctrl-C (or ``--for``), then stops everything: services in
reverse order, then the Coordinator. All state and logs are in the run directory
(``DIR/.geode-run`` by default, emptied at start).

With ``operator: true`` in the deployment file, ``geode up`` makes a user ``operator`` for the
run (``operator.crt``/``operator.key`` in the run directory) whom the manifest lets update it
alone; when the Coordinator's manifest changes, the services are restarted under it.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import click

from geode.cli._up_bundles import build_bundles, service_path
from geode.cli._up_deployment import (
    accepts,
    fresh_run_dir,
    load_deployment,
    package_pins,
    prepare_manifest,
)
from geode.cli._up_runner import STOP_SIGNALS, Runner, Stop, stop_signals
from geode.errors import GeodeError

__all__ = ["up"]


@click.command()
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State and logs of this run [default: DIRECTORY/.geode-run, emptied at start].",
)
@click.option(
    "--permissive",
    is_flag=True,
    help="Set the manifest with policies.mode = permissive: any attested service may call any.",
)
@click.option(
    "--for",
    "seconds",
    type=float,
    help="Stop this many seconds after every service has started.",
)
@click.option(
    "--view",
    type=click.Choice(["auto", "live", "plain"]),
    default="auto",
    show_default=True,
    help="Live table (a terminal) or a line every few seconds.",
)
def up(
    directory: Path,
    run_dir: Path | None,
    permissive: bool,
    seconds: float | None,
    view: Literal["auto", "live", "plain"],
) -> None:
    """Run the deployment in DIRECTORY (its geode-up.yaml) until Ctrl-C, with a live view."""
    directory = directory.resolve()
    deployment = load_deployment(directory)
    run_dir = (run_dir or directory / ".geode-run").resolve()
    manifest_file = directory / deployment.manifest
    prepare_manifest(manifest_file, permissive)  # readable, before anything
    spec = deployment.coordinator
    for address in (spec.client_addr, spec.mesh_addr):  # before anything is emptied
        if accepts(address):
            raise GeodeError(f"{address} is in use: is another deployment up?")
    lock = fresh_run_dir(run_dir)
    try:
        path = service_path()
        built = build_bundles(directory, deployment, run_dir, path)  # before anything starts
        pins = package_pins(manifest_file, {b.service: b.measurement for b in built})
        click.echo(f"Bundles built in {run_dir / 'bundles'}:")
        for package, measurement in pins.items():
            click.echo(f"  pinned {package} {measurement[:16]}")
        _run(Runner(directory, deployment, run_dir, path), pins, permissive, seconds, view)
    finally:
        lock.close()


def _run(
    runner: Runner,
    pins: dict[str, str],
    permissive: bool,
    seconds: float | None,
    view: Literal["auto", "live", "plain"],
) -> None:
    deployment, run_dir, spec = runner.deployment, runner.run_dir, runner.deployment.coordinator
    manifest_file = runner.directory / deployment.manifest
    previous = {s: signal.signal(s, stop_signals.handler) for s in STOP_SIGNALS}
    click.secho(
        "geode up: SIMULATION mode — no hardware isolation; for development and demos only",
        fg="yellow",
        err=True,
    )
    try:
        click.echo(f"Coordinator: client API {spec.client_addr}, mesh API {spec.mesh_addr}")
        runner.start_coordinator()
        operator = runner.make_operator()[0] if deployment.operator else None
        manifest = prepare_manifest(manifest_file, permissive, operator, pins)
        (run_dir / "manifest.yaml").write_bytes(manifest)  # exactly what was set
        runner.verify_and_set(manifest)
        policy = " (PERMISSIVE policy)" if permissive else ""
        click.echo(
            f"Deployment statement verified; manifest set{policy} "
            f"(as set: {run_dir / 'manifest.yaml'})."
        )
        click.echo(
            f"Root certificate to trust: {runner.root_file} (sha256:{runner.root_fingerprint})"
        )
        runner.start_services()
        click.echo("Pages (HTTPS, trust the root certificate above):")
        for service in deployment.services:
            if service.page:
                click.echo(f"  {service.name:<14} {service.page}")
        if deployment.operator:
            click.echo(
                f"Operator (may update the manifest): --cert {runner.operator_cert} "
                f"--key {runner.operator_key}"
            )
        click.echo(f"Logs: {runner.logs}   Ctrl-C stops everything.")
        _watch(runner, seconds, view)
    except Stop:
        pass
    finally:
        _shut_down(runner, previous)


def _shut_down(runner: Runner, previous: dict[signal.Signals, Any]) -> None:
    """Stop everything; a second stop signal kills what is left at once."""

    def escalate(_signum: int, _frame: FrameType | None) -> None:
        click.echo("Killing ...", err=True)
        runner.kill()

    for signum in STOP_SIGNALS:
        signal.signal(signum, escalate)
    try:
        click.echo("Stopping ...", err=True)
        left = runner.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if left:
        raise GeodeError(f"processes of {', '.join(left)} are still running")
    click.echo("Stopped: no process left.", err=True)


def _watch(runner: Runner, seconds: float | None, view: str) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    live = view == "live" or (view == "auto" and sys.stdout.isatty())
    if live:
        from rich.live import Live

        with Live(runner.table(), refresh_per_second=2) as screen:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(1)
                _take_updates(runner, screen.console.print)
                runner.poll()
                screen.update(runner.table())
        return
    last = 0.0
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.5)
        if time.monotonic() - last >= 3:
            _take_updates(runner, click.echo)
            runner.poll()
            runner.show_plain(sys.stdout)
            last = time.monotonic()


def _take_updates(runner: Runner, say: Any) -> None:
    """After a manifest update, restart the services so that they take it up."""
    changed = runner.manifest_changed()
    if changed is not None:
        say(f"The manifest was updated ({changed[:16]}…): restarting the services under it.")
        runner.restart_services()
        say("Services restarted.")
