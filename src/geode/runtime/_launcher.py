"""``geode run``: activate, lay out credentials, run the service's command, clean up.

Credentials are written to a private directory (mode 0700, files 0600) on a tmpfs where one is
available (``/dev/shm``), and removed when the command exits: Geode's own under ``credentials/``,
the manifest's files with relative paths under ``files/`` (``$GEODE_SECRETS_DIR``). Absolute paths
are written where they say, and removed too. No symbolic link is followed on the way to any of
them, and no existing file is overwritten (``geode._files``).

The command's whole process group dies with the launcher, however the launcher dies (a watchdog
in the group, ``geode._process.GroupWatchdog``), and what a launcher killed outright left on the
tmpfs is removed by the next launcher on the same runtime directory (``_leftovers``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
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

from geode._files import PlacedFile, open_directory, place_file, wipe_tree
from geode._process import GroupWatchdog, group_members, parent_death_signal
from geode.errors import LaunchError
from geode.manifest import SERVICE_KEY_MARKER
from geode.pki import certificate_pem
from geode.runtime._activation import Activation
from geode.runtime._leftovers import LauncherRecord, clean_leftovers

__all__ = [
    "INHERITED_ENV",
    "INHERITED_ENV_PREFIXES",
    "Companion",
    "LaunchPlan",
    "default_runtime_dir",
    "lay_out",
    "remove_plan",
    "run_command",
]


log = logging.getLogger("geode.runtime")

# What the command inherits from the launcher's environment: an allow list, since the variables
# that make an interpreter, a shell, OpenSSL or the dynamic loader run code from outside the
# bundle (or write its secrets out: ``SSLKEYLOGFILE``) are too many to name. Kept: where programs
# are found (``PATH``: the locked ones run by their locked paths anyway), the locale, the time
# zone, the terminal, who the user is, the temporary directory, and the ``PYTHON*`` variables that
# change only how output is written. ``HOME`` is the instance's own empty directory instead
# (a caller's ``HOME`` holds Python's user site-packages, ``~/.my.cnf`` and other start-up files),
# and ``PYTHONNOUSERSITE=1``. The manifest's ``env`` is applied after, and may set anything: it is
# part of what the manifest pins. Documented in docs/runtime.md ("Environment").
KEPT_PYTHON_ENV = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONUTF8"}
)
INHERITED_ENV = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "TMPDIR"} | KEPT_PYTHON_ENV
)
INHERITED_ENV_PREFIXES = ("LC_",)


def _inherited(name: str) -> bool:
    return name in INHERITED_ENV or name.startswith(INHERITED_ENV_PREFIXES)


@dataclass(frozen=True)
class LaunchPlan:
    """Where the credentials went, and the command and environment to run with."""

    directory: Path
    written: tuple[PlacedFile, ...]  # files outside ``directory``, removed through their dir fd
    argv: list[str]
    env: dict[str, str]
    record: LauncherRecord | None = None
    cwd: Path | None = None  # where the command runs (``geode run``: the staged bundle)


def default_runtime_dir() -> Path:
    """Where launchers make their private directories: a tmpfs (``/dev/shm``) where there is a
    writable one, else the temporary directory."""
    shm = Path("/dev/shm")  # noqa: S108 - a tmpfs keeps secrets off the disk
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def lay_out(
    activation: Activation,
    service: str,
    command: Sequence[str],
    *,
    base_dir: Path | None = None,
    environ: dict[str, str] | None = None,
) -> LaunchPlan:
    """Write the instance's credentials and files; build the command's argv and environment.

    First, what dead launchers left in the runtime directory (``base_dir``, default
    ``default_runtime_dir()``) is removed. A file path that goes through a symbolic link, or
    names an existing file, is refused (``LaunchError``) and nothing is left written."""
    base = default_runtime_dir() if base_dir is None else base_dir
    clean_leftovers(base)
    try:
        directory = Path(tempfile.mkdtemp(prefix=f"geode-{activation.instance_id[:8]}-", dir=base))
    except OSError as exc:
        raise LaunchError(f"cannot make a private directory in {base}: {exc.strerror}") from None
    key_pem = activation.private_key_pem()
    marker = SERVICE_KEY_MARKER.encode()

    def substitute(value: bytes) -> bytes:
        return value.replace(marker, key_pem) if marker in value else value

    written: list[PlacedFile] = []
    credentials = {
        "cert.pem": "".join(certificate_pem(c) for c in activation.certificate_chain).encode(),
        "key.pem": key_pem,
        "ca.pem": certificate_pem(activation.mesh_ca).encode(),
        "root.pem": certificate_pem(activation.root_ca).encode(),
    }
    if activation.mesh is not None:
        credentials["mesh.json"] = activation.mesh.model_dump_json(indent=2).encode()
    own, files, home = directory / "credentials", directory / "files", directory / "home"
    record: LauncherRecord | None = None
    try:
        record = LauncherRecord.create(directory, service)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.mkdir(files.name, 0o700, dir_fd=dir_fd)
            os.mkdir(home.name, 0o700, dir_fd=dir_fd)
            for name, data in credentials.items():
                place_file(f"{own.name}/{name}", data, at=dir_fd, shown_as=str(directory)).close()
            files_fd = open_directory(files.name, at=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            for raw_path, data in activation.files.items():
                if raw_path.startswith("/"):
                    placed = place_file(raw_path, substitute(data))
                    written.append(placed)
                    record.file(placed)
                else:
                    place_file(raw_path, substitute(data), at=files_fd, shown_as=str(files)).close()
        finally:
            os.close(files_fd)
    except OSError as exc:
        # Nothing half-written stays behind: the files hold secrets.
        remove_plan(LaunchPlan(directory, tuple(written), [], {}, record))
        raise LaunchError(f"cannot write {exc.filename}: {exc.strerror}") from None

    # Only the allow list is inherited (INHERITED_ENV); Geode's own variables are set afresh.
    inherited = os.environ if environ is None else environ
    env = {k: v for k, v in inherited.items() if _inherited(k)}
    env.update(  # each GEODE_* variable is documented in docs/runtime.md
        {
            "HOME": str(home),
            "PYTHONNOUSERSITE": "1",
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
    return LaunchPlan(directory, tuple(written), argv, env, record)


def remove_plan(plan: LaunchPlan) -> None:
    """Zero and delete every file of the plan (those outside its directory through the
    directory descriptors they were created in, and only if still the very file written), then
    the directory; the record's lock goes last, so a launcher dying half-way still leaves its
    record to the next one."""
    for placed in plan.written:
        placed.remove()
    wipe_tree(plan.directory)
    if plan.record is not None:
        plan.record.close()


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
    plan: LaunchPlan,
    *,
    companions: Sequence[Companion] = (),
    grace: float = 10.0,
    before_start: Callable[[], None] | None = None,
) -> int:
    """Run the planned command, forwarding signals; returns its exit status (128+N on signal N).

    The command runs in its own process group. A stop signal is forwarded to the group, and
    ``grace`` seconds later the group is killed; when the command exits, whatever it left in the
    group is ended the same way. If the launcher is killed outright, the group's watchdog kills
    the whole group (descendants that leave the group, e.g. with ``setsid``, are out of reach),
    and the next launcher removes the files. Companions start
    before the command (its transparent TLS must be listening when it starts) and stop after
    it; the files are removed in every case, a signal during start-up included.
    ``before_start`` runs last before the command is started (``geode run``: the locked
    executables are hashed again), and its exception ends the launch the same way.
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
            if before_start is not None:
                before_start()
            try:
                # The pre-exec hook only calls a libc function resolved beforehand, and glibc
                # resets its allocator locks in the child, so companions' threads cannot block it.
                process = subprocess.Popen(
                    plan.argv,
                    env=plan.env,
                    cwd=plan.cwd,
                    process_group=0,
                    preexec_fn=_child_setup(open_files),
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {plan.argv[0]!r}: {exc.strerror}") from None
            if plan.record is not None:
                plan.record.group(process.pid)
            watchdog = GroupWatchdog.start(process.pid)
            supervisor.process = process
            if supervisor.stopping is not None:  # arrived while the command was starting
                _signal_group(process, supervisor.stopping)
            try:
                code = process.wait()
            finally:
                _end_group(process, grace, watchdog.pid if watchdog is not None else None)
                if watchdog is not None:
                    watchdog.release()
            return 128 - code if code < 0 else code
        finally:
            for companion in reversed(started):
                companion.stop()
            remove_plan(plan)


def _end_group(process: subprocess.Popen[bytes], grace: float, watchdog: int | None) -> None:
    """Stop whatever is left of the command's process group, ``watchdog`` aside: SIGTERM,
    then SIGKILL."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    if _group_alive(process.pid, watchdog):
        _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(process.pid, watchdog) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(process.pid, watchdog):
            _signal_group(process, signal.SIGKILL)


def _group_alive(pgid: int, watchdog: int | None) -> bool:
    """Whether a process other than the watchdog is left in the group."""
    if watchdog is not None:
        return any(pid != watchdog for pid in group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
