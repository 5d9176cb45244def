"""The processes of one ``geode up``: the Coordinator and each service under ``geode run`` with
the bundle ``geode up`` built for it, started, watched, restarted after a manifest update, and
stopped; stop signals."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click
import httpx
from cryptography import x509

from geode._files import create_private_file
from geode._process import parent_death_signal
from geode.attestation import SimulatedPlatform
from geode.cli._up_bundles import bundle_dir, skipped
from geode.cli._up_deployment import Deployment, accepts, log_tail
from geode.client import CoordinatorClient
from geode.coordinator import coordinator_measurement
from geode.errors import GeodeError
from geode.pki import UserCertificate, certificate_pem
from geode.protocol import public_client_context
from geode.tee import ReferenceValues

__all__ = ["STOP_SIGNALS", "Runner", "Stop", "die_with_parent", "stop_signals"]


@dataclass
class _Process:
    name: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    skipped: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    page_error: str | None = None

    def state(self) -> str:
        if self.skipped is not None:
            return "skipped"
        if self.process is None:
            return "waiting"
        code = self.process.poll()
        return "running" if code is None else f"exited ({code})"

    def stop(self, grace: float) -> None:
        """SIGTERM (``geode run`` forwards it and ends its command's group), then SIGKILL to
        the whole group after ``grace`` seconds."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if self.group_alive():  # the group outlived its leader
            self.kill()

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def group_alive(self) -> bool:
        """Whether any process of its group is left (a reaped leader does not count)."""
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Stop(Exception):
    """A stop signal (Ctrl-C, SIGTERM, a closed terminal): stop everything."""


class _Signals:
    """Turns a stop signal into ``Stop``, except while a process is being started: then it
    is raised once that process is recorded (a child must never be lost between fork and
    bookkeeping; blocking the signals instead would hand the blocked mask to the child)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def handler(self, _signum: int, _frame: FrameType | None) -> None:
        if self.holding:
            self.pending = True
            return
        raise Stop

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            self.pending = False
            raise Stop


stop_signals = _Signals()


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook: Linux sends the child SIGTERM if ``geode up`` dies, even by SIGKILL
    (``geode run`` then ends its command's group)."""
    return parent_death_signal(signal.SIGTERM)


class Runner:
    """One ``geode up``: the processes it started and how to show and stop them."""

    def __init__(self, directory: Path, deployment: Deployment, run_dir: Path, path: str) -> None:
        self.directory = directory
        self.deployment = deployment
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.root_file = run_dir / "root.pem"
        self.coordinator = _Process("coordinator", self.logs / "coordinator.log")
        self.services = [_Process(s.name, self.logs / f"{s.name}.log") for s in deployment.services]
        self.env = {
            **os.environ,
            "PATH": path,  # the PATH the bundles' executables were locked from
            "GEODE_SEALING_KEY": str(run_dir / "keys" / "sealing.key"),
            "GEODE_PLATFORM_KEY": str(run_dir / "keys" / "platform.key"),
            "GEODE_CONFIG_DIR": str(run_dir / "config"),
            "PYTHONDONTWRITEBYTECODE": "1",  # a bundle must not change while it runs
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("GEODE_ROOT_CA", None)
        self.root_fingerprint = ""
        self.root: x509.Certificate | None = None
        self.manifest_sha256 = ""
        self.operator_cert = run_dir / "operator.crt"
        self.operator_key = run_dir / "operator.key"
        self._root_context: ssl.SSLContext | None = None
        # The simulated platform key is made here, before the Coordinator starts, and its
        # public half kept: the statement is verified against this copy, not a file the
        # Coordinator could have written.
        platform_key = Path(self.env["GEODE_PLATFORM_KEY"])
        platform_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.platform = SimulatedPlatform.load_or_create(platform_key).public_key

    # --- start ------------------------------------------------------------------------------

    def _spawn(self, entry: _Process, argv: list[str], cwd: Path | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with stop_signals.held(), entry.log.open("ab") as log:
            entry.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches geode up alone: it stops them in order
                preexec_fn=die_with_parent(),
            )

    def _wait_ready(self, entry: _Process, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert entry.process is not None
        while not accepts(address):
            code = entry.process.poll()
            late = time.monotonic() > deadline
            if code is not None or late:
                click.echo(f"--- the end of {entry.log}:\n{log_tail(entry.log)}", err=True)
                what = (
                    f"exited ({code}) before it was ready"
                    if code is not None
                    else (f"not ready on {address} after {timeout:g} s")
                )
                raise GeodeError(f"{entry.name} {what} (log: {entry.log})")
            time.sleep(0.1)

    def start_coordinator(self) -> None:
        spec = self.deployment.coordinator
        for address in (spec.client_addr, spec.mesh_addr):
            if accepts(address):
                raise GeodeError(f"{address} is in use: is another deployment up?")
        argv = [
            sys.executable, "-m", "geode", "coordinator", "--simulation",
            "--data-dir", str(self.run_dir / "coordinator"),
            "--client-addr", spec.client_addr, "--mesh-addr", spec.mesh_addr,
        ]  # fmt: skip
        if spec.leaf_ttl:
            argv += ["--leaf-ttl", spec.leaf_ttl]
        self._spawn(self.coordinator, argv)
        self._wait_ready(self.coordinator, spec.client_addr, 60)

    def verify_and_set(self, manifest: bytes) -> None:
        """Verify the Coordinator's statement (its measurement, this machine's simulated
        platform key, a fresh nonce); then set the manifest over TLS pinned to its root."""
        spec = self.deployment.coordinator
        reference = ReferenceValues(tee="simulated", measurement=coordinator_measurement().hex())
        with CoordinatorClient(spec.client_addr, insecure=True) as client:
            verified = client.verified_statement(reference=reference, platform_keys=[self.platform])
        self.root_fingerprint = verified.root_fingerprint
        self.root_file.write_text(certificate_pem(verified.root))
        with CoordinatorClient(spec.client_addr, root=verified.root) as client:
            self.manifest_sha256 = client.set_manifest(manifest).sha256
        self._root_context = public_client_context(verified.root)
        self.root = verified.root

    def make_operator(self) -> tuple[str, str]:
        """The operator's certificate (PEM, for the manifest) and its key, written to the run
        directory (mode 0600): a user who may update the manifest on their own."""
        operator = UserCertificate.create("geode up operator")
        pem = operator.certificate_pem
        self.operator_cert.write_text(pem)
        create_private_file(self.operator_key, operator.key_pem)
        return pem, str(self.operator_key)

    def manifest_changed(self) -> str | None:
        """The manifest's new hash, if an update changed it since it was set (or last seen)."""
        assert self.root is not None
        try:
            with CoordinatorClient(self.deployment.coordinator.client_addr, root=self.root) as c:
                current = c.status().manifest_sha256 or ""
        except GeodeError:
            return None
        if current and current != self.manifest_sha256:
            self.manifest_sha256 = current
            return current
        return None

    def restart_services(self) -> None:
        """Stop every service and start them again: they activate under the new manifest (its
        policy, and the mesh CA every update rotates)."""
        for entry in reversed(self.services):
            entry.stop(grace=15)
        self.services = [
            _Process(s.name, self.logs / f"{s.name}.log") for s in self.deployment.services
        ]
        self.start_services()

    def start_services(self) -> None:
        mesh = self.deployment.coordinator.mesh_addr
        extra_args: dict[str, list[str]] = {}
        for spec, entry in zip(self.deployment.services, self.services, strict=True):
            if skipped(spec, self.env["PATH"]):
                entry.skipped = f"{spec.requires} is not installed"
                note = f" ({spec.skipped_note})" if spec.skipped_note else ""
                click.echo(f"  {spec.name}: SKIPPED: {entry.skipped}{note}")
                for name, args in spec.skipped_args.items():
                    extra_args.setdefault(name, []).extend(args)
                continue
            if spec.ready and accepts(spec.ready):
                raise GeodeError(f"{spec.name}: {spec.ready} is in use before it started")
            bundle = bundle_dir(self.run_dir, spec.name)
            argv = [
                sys.executable, "-m", "geode", "run", "--service", spec.name,
                "--coordinator", mesh, "--bundle", str(bundle), "--root-ca", str(self.root_file),
                "--", *self._command(spec.command), *extra_args.get(spec.name, []),
            ]  # fmt: skip
            click.echo(f"  {spec.name}: starting under geode run (log {entry.log})")
            self._spawn(entry, argv, cwd=bundle)
            if spec.ready:
                self._wait_ready(entry, spec.ready, 120)

    def _command(self, command: list[str]) -> list[str]:
        """The command as written (``geode run`` resolves its program in the bundle or its
        lock, and ``geode`` as itself), with ``{run}`` the run directory."""
        return [command[0], *(arg.replace("{run}", str(self.run_dir)) for arg in command[1:])]

    # --- watch ------------------------------------------------------------------------------

    def poll(self) -> None:
        assert self._root_context is not None, "the statement is verified first"
        for spec, entry in zip(self.deployment.services, self.services, strict=True):
            if spec.page is None or entry.state() != "running":
                continue
            try:
                answer = httpx.get(
                    spec.page.rstrip("/") + "/raw", verify=self._root_context, timeout=1
                )
                entry.counters = answer.json() if answer.status_code == 200 else {}
                entry.page_error = None if answer.status_code == 200 else str(answer.status_code)
            except (httpx.HTTPError, ValueError) as exc:
                entry.counters = {}
                entry.page_error = f"page: {type(exc).__name__}: {exc}"[:120]

    def activations(self) -> dict[str, int]:
        """Activations by outcome, from the Coordinator's metrics."""
        assert self._root_context is not None
        try:
            text = httpx.get(
                f"https://{self.deployment.coordinator.client_addr}/metrics",
                verify=self._root_context,
                timeout=1,
            ).text
        except httpx.HTTPError:
            return {}
        totals: dict[str, int] = {}
        for match in re.finditer(
            r'^geode_activations_total\{[^}]*outcome="([^"]+)"[^}]*\} (\S+)', text, re.MULTILINE
        ):
            totals[match.group(1)] = totals.get(match.group(1), 0) + int(float(match.group(2)))
        return totals

    def rows(self) -> Iterator[tuple[str, str, str]]:
        for entry in [self.coordinator, *self.services]:
            numbers = {
                k: v
                for k, v in entry.counters.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "uptime_s"
            }
            shown = " ".join(f"{k}={v}" for k, v in numbers.items())
            if entry is self.coordinator:
                outcomes = self.activations()
                shown = "activations: " + (
                    " ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "none"
                )
            elif entry.skipped:
                shown = entry.skipped
            elif entry.page_error:
                shown = entry.page_error
            yield entry.name, entry.state(), shown

    def show_plain(self, out: IO[str]) -> None:
        line = " | ".join(f"{name} {state}: {shown}" for name, state, shown in self.rows())
        print(time.strftime("%H:%M:%S ") + line, file=out, flush=True)

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="Geode up — SIMULATION (no hardware isolation)   Ctrl-C stops")
        table.add_column("service")
        table.add_column("state")
        table.add_column("counters (each page's /raw; a caller's refused = policy denials)")
        for name, state, shown in self.rows():
            style = "green" if state == "running" else "yellow" if state == "skipped" else "red"
            table.add_row(name, f"[{style}]{state}[/{style}]", shown)
        return table

    # --- stop -------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every service (reverse order), then the Coordinator; the names of those with a
        process left (none, normally)."""
        for entry in [*reversed(self.services), self.coordinator]:
            try:
                entry.stop(grace=15)
            except Exception as exc:  # stop the others all the same
                click.echo(f"stopping {entry.name}: {exc}; killing its processes", err=True)
                entry.kill()
        return [e.name for e in [*self.services, self.coordinator] if e.group_alive()]

    def kill(self) -> None:
        for entry in [*self.services, self.coordinator]:
            entry.kill()
