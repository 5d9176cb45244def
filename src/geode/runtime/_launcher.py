"""``geode run``: activate, lay out credentials, run the service's command, clean up.

Credentials are written to a private directory (mode 0700, files 0600) on a tmpfs where one is
available (``/dev/shm``), and removed when the command exits: Geode's own under ``credentials/``,
the manifest's files with relative paths under ``files/`` (``$GEODE_SECRETS_DIR``). Absolute paths
are written where they say, and removed too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from geode._process import parent_death_signal
from geode.errors import LaunchError
from geode.manifest import SERVICE_KEY_MARKER
from geode.pki import certificate_pem
from geode.runtime._activation import Activation

__all__ = ["Companion", "LaunchPlan", "lay_out", "remove_plan", "run_command"]


log = logging.getLogger("geode.runtime")


@dataclass(frozen=True)
class LaunchPlan:
    """Where the credentials went, and the command and environment to run with."""

    directory: Path
    written: tuple[Path, ...]
    argv: list[str]
    env: dict[str, str]


def _private_dir(instance_id: str, base: Path | None) -> Path:
    if base is None:
        shm = Path("/dev/shm")  # noqa: S108 - a tmpfs keeps secrets off the disk
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=f"geode-{instance_id[:8]}-", dir=base))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # No symlink is followed to somewhere else, and the mode is 0600 before a byte is written
    # (an existing file keeps its old mode through O_CREAT).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def lay_out(
    activation: Activation,
    service: str,
    command: Sequence[str],
    *,
    base_dir: Path | None = None,
    environ: dict[str, str] | None = None,
) -> LaunchPlan:
    """Write the instance's credentials and files; build the command's argv and environment."""
    directory = _private_dir(activation.instance_id, base_dir)
    key_pem = activation.private_key_pem()
    marker = SERVICE_KEY_MARKER.encode()

    def substitute(value: bytes) -> bytes:
        return value.replace(marker, key_pem) if marker in value else value

    written: list[Path] = []
    credentials = {
        "cert.pem": "".join(certificate_pem(c) for c in activation.certificate_chain).encode(),
        "key.pem": key_pem,
        "ca.pem": certificate_pem(activation.mesh_ca).encode(),
        "root.pem": certificate_pem(activation.root_ca).encode(),
    }
    if activation.mesh is not None:
        credentials["mesh.json"] = activation.mesh.model_dump_json(indent=2).encode()
    own, files = directory / "credentials", directory / "files"
    try:
        files.mkdir(mode=0o700)
        for name, data in credentials.items():
            _write_private(own / name, data)
        for raw_path, data in activation.files.items():
            path = Path(raw_path) if raw_path.startswith("/") else files / raw_path
            if not path.is_relative_to(directory):
                written.append(path)
            _write_private(path, substitute(data))
    except OSError as exc:
        # Nothing half-written stays behind: the files hold secrets.
        remove_plan(LaunchPlan(directory, tuple(written), [], {}))
        raise LaunchError(f"cannot write {exc.filename}: {exc.strerror}") from None

    # Geode's own variables are set afresh: none is inherited from the launcher's environment.
    inherited = os.environ if environ is None else environ
    env = {k: v for k, v in inherited.items() if not k.startswith("GEODE_")}
    env.update(  # each GEODE_* variable is documented in docs/runtime.md
        {
            "GEODE_SERVICE": service,
            "GEODE_INSTANCE_ID": activation.instance_id,
            "GEODE_SPIFFE_ID": activation.spiffe_id,
            "GEODE_CERT_FILE": str(own / "cert.pem"),
            "GEODE_KEY_FILE": str(own / "key.pem"),
            "GEODE_CA_FILE": str(own / "ca.pem"),
            "GEODE_ROOT_CA_FILE": str(own / "root.pem"),
            "GEODE_SECRETS_DIR": str(files),
        }
    )
    if activation.mesh is not None:
        env["GEODE_MESH_FILE"] = str(own / "mesh.json")
        # Where an unmodified app listens, and where it connects, behind transparent TLS.
        env["GEODE_INGRESS"] = ",".join(
            f"{r.port}=127.0.0.1:{r.app_port}" for r in activation.mesh.ingress
        )
        env["GEODE_EGRESS"] = ",".join(
            f"{r.host}:{r.port}=127.0.0.1:{r.local_port}" for r in activation.mesh.egress
        )
    for key, value in activation.env.items():
        env[key] = os.fsdecode(substitute(value))
    argv = [*command, *(os.fsdecode(substitute(a)) for a in activation.argv)]
    return LaunchPlan(directory, tuple(written), argv, env)


def remove_plan(plan: LaunchPlan) -> None:
    for path in plan.written:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
    shutil.rmtree(plan.directory, ignore_errors=True)


class Companion(Protocol):
    """Something that runs beside the command (renewal, transparent TLS) and stops with it."""

    def start(self) -> object: ...
    def stop(self) -> None: ...


def _child_setup(open_files: tuple[int, int]) -> Callable[[], None] | None:
    """A pre-exec hook: give the command the open-file limit the launcher started with (the
    transparent proxy raises the launcher's own), and ask Linux to SIGKILL the command if the
    launcher itself dies (even by SIGKILL). Everything is looked up here, in the parent, so the
    child only makes two system calls."""
    die_with_launcher = parent_death_signal(signal.SIGKILL)
    if die_with_launcher is None:
        return None
    setrlimit, nofile = resource.setrlimit, resource.RLIMIT_NOFILE

    def hook() -> None:
        setrlimit(nofile, open_files)
        die_with_launcher()

    return hook


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class _Supervisor:
    """Signal handling for the launcher's whole life, from before the companions start until
    the files are removed: a signal that arrives before the command exists stops the launch; one
    that arrives later goes to the command's process group, and a stop signal also starts the
    grace period after which the group is killed."""

    STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping: int | None = None
        self._timer: threading.Timer | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Supervisor:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.STOP}
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signum
        if self.process is None:
            return  # checked before the command is started
        _signal_group(self.process, signum)
        if self._timer is None:
            process = self.process
            self._timer = threading.Timer(
                self.grace, lambda: _signal_group(process, signal.SIGKILL)
            )
            self._timer.daemon = True
            self._timer.start()


def run_command(
    plan: LaunchPlan, *, companions: Sequence[Companion] = (), grace: float = 10.0
) -> int:
    """Run the planned command, forwarding signals; returns its exit status (128+N on signal N).

    The command runs in its own process group. A stop signal is forwarded to the group, and
    ``grace`` seconds later the group is killed; when the command exits, whatever it left in the
    group is ended the same way. If the launcher is killed outright, Linux kills the command
    (descendants that leave the group, e.g. with ``setsid``, are out of reach). Companions start
    before the command (its transparent TLS must be listening when it starts) and stop after
    it; the files are removed in every case, a signal during start-up included.
    """
    started: list[Companion] = []
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)  # before a companion raises it
    with _Supervisor(grace) as supervisor:
        try:
            for companion in companions:
                companion.start()
                started.append(companion)
            if supervisor.stopping is not None:
                return 128 + supervisor.stopping
            try:
                # The pre-exec hook only calls a libc function resolved beforehand, and glibc
                # resets its allocator locks in the child, so companions' threads cannot block it.
                process = subprocess.Popen(
                    plan.argv, env=plan.env, process_group=0, preexec_fn=_child_setup(open_files)
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {plan.argv[0]!r}: {exc.strerror}") from None
            supervisor.process = process
            if supervisor.stopping is not None:  # arrived while the command was starting
                _signal_group(process, supervisor.stopping)
            try:
                code = process.wait()
            finally:
                _end_group(process, grace)
            return 128 - code if code < 0 else code
        finally:
            for companion in reversed(started):
                companion.stop()
            remove_plan(plan)


def _end_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """Stop whatever is left of the command's process group: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    if _group_alive(process.pid):
        _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(process, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
