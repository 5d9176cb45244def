"""MariaDB's programs as Geode drives them: ``mariadb-install-db`` to create a data directory,
``mariadbd`` as a supervised child whose log is passed through, and the ``mariadb`` client over
the local socket for administration. Their failures become one-line ``DatabaseError``s.

Under ``geode run`` (``$GEODE_BUNDLE_LOCK`` set) the server started is the ``mariadbd`` the
bundle's lock names, hashed again before it starts; a lock that does not name it refuses the
start. The others (``mariadb-install-db`` is a shell script, which a lock cannot pin) are the
locked ones where the lock names them, else found only in the system directories
(``TRUSTED_DIRS``, never the caller's ``PATH``), and only as files that only root can change: owned
by root and not writable by group or others, and so is the directory they are in. Outside
``geode run`` the programs are found on ``PATH`` and the system directories."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from geode._process import parent_death_signal
from geode.errors import DatabaseError
from geode.runtime import BUNDLE_LOCK_ENV, locked_executable, read_lock

__all__ = ["MariaDB", "ServerProcess", "describe_sql_error"]

# Where distributions put the server (often not on a normal user's PATH).
_SYSTEM_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
_READY = "ready for connections"
# The process umask of mariadb-install-db and mariadbd. UMASK and UMASK_DIR (set by the caller)
# only reach the files MariaDB creates through its own library; some (mysql_upgrade_info, files
# of the install script) are created with the process umask, which must not let others read.
PRIVATE_UMASK = 0o077
# Under geode run, where an unlocked MariaDB program (and what the install script runs) is found.
TRUSTED_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin")
_ROOT_UID = 0


def _find(names: tuple[str, ...], bin_dir: Path | None) -> Path:
    search = (
        str(bin_dir)
        if bin_dir is not None
        else os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_DIRS])
    )
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return Path(found)
    where = f" in {bin_dir}" if bin_dir is not None else ""
    raise DatabaseError(
        f"MariaDB is not installed: {names[0]!r} was not found{where} "
        "(install the mariadb-server package)"
    )


def _root_only(path: Path) -> str | None:
    """Why someone other than root could change ``path`` (links followed), else None."""
    status = path.stat()
    if status.st_uid != _ROOT_UID:
        return "is not owned by root"
    if status.st_mode & 0o022:
        return "is writable by group or others"
    return None


def _find_trusted(names: tuple[str, ...]) -> Path:
    """The first of ``names`` in ``TRUSTED_DIRS``, as its real path; refused unless it, its
    directory and the directory searched can only be changed by root."""
    for directory in TRUSTED_DIRS:
        for name in names:
            candidate = Path(directory, name)
            if not (candidate.is_file() and os.access(candidate, os.X_OK)):
                continue
            real = Path(os.path.realpath(candidate))
            for path in (Path(directory), real.parent, real):
                why = _root_only(path)
                if why is not None:
                    raise DatabaseError(
                        f"{name} at {candidate}: {path} {why}: under geode run only a "
                        "root-owned system copy is run"
                    )
            return real
    raise DatabaseError(
        f"MariaDB is not installed: {names[0]!r} was not found in {', '.join(TRUSTED_DIRS)} "
        "(under geode run the caller's PATH is not searched; install the mariadb-server package)"
    )


def _locked_or_trusted(names: tuple[str, ...], environ: Mapping[str, str]) -> Path:
    """The program the bundle's lock names (checked), else the root-owned system one."""
    lock = read_lock(Path(environ[BUNDLE_LOCK_ENV]).parent)
    entry = lock.executables.get(names[0])
    return entry.check() if entry is not None else _find_trusted(names)


def describe_sql_error(stderr: str) -> str:
    """The client's error line, without the text it quotes from the SQL (it may hold secrets)."""
    lines = [line for line in stderr.strip().splitlines() if line.startswith("ERROR")]
    line = lines[-1] if lines else (stderr.strip().splitlines() or ["no output"])[-1]
    match = re.match(r"ERROR (\d+) \((\w+)\)(?: at line (\d+))?: (.*)", line)
    if not match:
        return line[:200]
    code, state, at, message = match.groups()
    message = message.split("; check the manual", 1)[0]
    message = re.sub(r" near '.*", "", message)
    where = f"line {at}: " if at else ""
    return f"{where}{message} (error {code}, SQLSTATE {state})"


@dataclass(frozen=True)
class MariaDB:
    """The MariaDB programs Geode needs, found on ``PATH`` (plus the system directories) or in
    ``bin_dir``."""

    server: Path
    install_db: Path
    client: Path

    @classmethod
    def locate(
        cls, bin_dir: Path | None = None, environ: Mapping[str, str] = os.environ
    ) -> MariaDB:
        """Under ``geode run`` (``$GEODE_BUNDLE_LOCK`` set), the server is the ``mariadbd`` the
        bundle's lock names, its hash checked again (``LaunchError`` when the lock does not name
        it or it changed); the other programs are the locked ones where the lock names them, else
        root-owned ones in ``TRUSTED_DIRS`` (``bin_dir`` is refused)."""
        if environ.get(BUNDLE_LOCK_ENV):
            if bin_dir is not None:
                raise DatabaseError(
                    f"--mariadb-bin {bin_dir}: under geode run the MariaDB programs are the ones "
                    "the bundle's geode.lock names"
                )
            server = locked_executable("mariadbd", environ)
            if server is None:  # pragma: no cover - the variable is set
                raise DatabaseError(f"${BUNDLE_LOCK_ENV} is empty")
            return cls(
                server=server,
                install_db=_locked_or_trusted(("mariadb-install-db", "mysql_install_db"), environ),
                client=_locked_or_trusted(("mariadb", "mysql"), environ),
            )
        return cls(
            server=_find(("mariadbd", "mysqld"), bin_dir),
            install_db=_find(("mariadb-install-db", "mysql_install_db"), bin_dir),
            client=_find(("mariadb", "mysql"), bin_dir),
        )

    def install(self, option_file: Path, admin_user: str, env: Mapping[str, str]) -> None:
        """Create the system tables in the (empty) data directory the option file names. It runs
        in the option file's (private) directory: the script takes ``./extra/my_print_defaults``,
        and then ``./sql/mariadbd``, from its working directory when there is one."""
        result = subprocess.run(
            [
                str(self.install_db),
                f"--defaults-file={option_file}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
                f"--auth-root-socket-user={admin_user}",
            ],
            env=dict(env),
            cwd=option_file.parent,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            umask=PRIVATE_UMASK,
        )
        if result.returncode != 0:
            last = _last_error(result.stdout + result.stderr)
            raise DatabaseError(f"mariadb-install-db failed: {last}")

    def run_sql(self, socket_path: Path, user: str, sql: str, *, timeout: float = 600) -> str:
        """Run ``sql`` as ``user`` over the local socket; the tab-separated output."""
        result = subprocess.run(
            [
                str(self.client),
                "--no-defaults",
                "--protocol=SOCKET",
                f"--socket={socket_path}",
                f"--user={user}",
                "--batch",
                "--skip-column-names",
            ],
            input=sql,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise _SQLFailed(describe_sql_error(result.stderr))
        return result.stdout


class _SQLFailed(DatabaseError):
    pass


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "[ERROR]" in line]
    line = (errors or lines or ["no output"])[-1]
    # Drop the timestamp and thread id: "2026-01-01  1:02:03 0 [ERROR] text" -> "text".
    return re.sub(r"^.*?\[ERROR\]\s*", "", line)[:300]


class ServerProcess:
    """One ``mariadbd`` child. Its log goes to our stderr line by line; the last error lines
    are kept to explain a failure."""

    def __init__(self, mariadb: MariaDB, option_file: Path, env: Mapping[str, str]) -> None:
        self._ready = threading.Event()
        self._log: deque[str] = deque(maxlen=50)
        self.process = subprocess.Popen(
            [str(mariadb.server), f"--defaults-file={option_file}"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=parent_death_signal(signal.SIGTERM),  # a prctl call: safe after fork
            umask=PRIVATE_UMASK,
        )
        self._reader = threading.Thread(target=self._pump, name="mariadbd-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self._log.append(line)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line)
                sys.stderr.flush()
            if _READY in line:
                self._ready.set()

    def failure(self) -> str:
        """Why it failed, from its log."""
        self._reader.join(timeout=5)
        return _last_error("".join(self._log))

    def wait_ready(self, timeout: float, cancelled: Callable[[], bool]) -> None:
        """Wait for "ready for connections"; ``DatabaseError`` if it exits or times out."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                raise DatabaseError(
                    f"mariadbd exited with status {self.process.returncode}: {self.failure()}"
                )
            if cancelled():
                raise DatabaseError("stopped during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise DatabaseError(f"mariadbd was not ready within {timeout:g} s")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, timeout: float = 600) -> int:
        """SIGTERM (mariadbd's clean shutdown), wait; SIGKILL only after ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code
