"""``geode db serve``: MariaDB with its data encrypted under the Coordinator's key, reachable
over the network only with TLS and a client certificate its manifest names.

Start-up checks everything it can before any MariaDB program touches the data directory (the
programs, the TLS files, the key against the directory's key check, the address), because a
``mariadbd`` that fails half-way has already written to it. A new data directory is built next
to the final one and moved into place only once MariaDB, the Geode hardening and the manifest's
initialisation SQL have all succeeded, so the initialisation runs exactly once and a failed one
leaves nothing behind.

The configuration is ``_database_config``; the data directory on disk (its lock, its moving
into place, its permissions) is ``_datadir``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType

from geode.db._config import Option, RuntimeFiles, common_options, confidential_options, os_user
from geode.db._database_config import DatabaseConfig
from geode.db._datadir import inspect_datadir, lock_datadir, make_private, move_into_place
from geode.db._key import KEY_CHECK_FILE, KeyCheck
from geode.db._mariadb import TRUSTED_DIRS, MariaDB, ServerProcess, _SQLFailed
from geode.errors import DatabaseError
from geode.protocol import mesh_server_context
from geode.runtime import BUNDLE_LOCK_ENV

__all__ = ["DatabaseServer", "serve"]

log = logging.getLogger("geode.db")

_ENCRYPTION_PENDING = """
SELECT COUNT(*) FROM information_schema.INNODB_SYS_TABLESPACES t
LEFT JOIN information_schema.INNODB_TABLESPACES_ENCRYPTION e ON e.SPACE = t.SPACE
WHERE t.NAME <> 'innodb_temporary'
  AND (e.SPACE IS NULL OR e.ENCRYPTION_SCHEME = 0 OR e.ROTATING_OR_FLUSHING = 1);
"""
_DROP_TEST_DATABASE = """
DROP DATABASE IF EXISTS test;
DELETE FROM mysql.db WHERE Db = 'test' OR Db LIKE 'test\\\\_%';
FLUSH PRIVILEGES;
"""
# Variables a child MariaDB program may see; nothing else (a key passed in the environment
# stays with Geode).
_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def _ensure_port_free(host: str, port: int) -> None:
    """Fail before mariadbd does: it would have written to the data directory first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DatabaseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mariadbd does
        try:
            probe.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise DatabaseError(f"cannot listen on {host}:{port}: {reason.lower()}") from None


def _child_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
    env.setdefault("PATH", os.defpath)
    if os.environ.get(BUNDLE_LOCK_ENV):
        # Under geode run, what the install script runs by name comes from root's directories.
        env["PATH"] = os.pathsep.join(TRUSTED_DIRS)
    # mysys reads the creation modes of files and directories from these.
    env["UMASK"], env["UMASK_DIR"] = "0600", "0700"
    return env


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class DatabaseServer:
    """One Geode database: ``start()``, then ``wait()`` until it stops, or ``stop()``.

    ``request_stop()`` may be called from a signal handler at any time, start-up included."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.admin_user = os_user()
        self._stop_requested = threading.Event()
        self._process: ServerProcess | None = None
        self._mariadb: MariaDB | None = None
        self._files: RuntimeFiles | None = None
        self._lock_fd: int | None = None
        self._tls_stamp: tuple[int, ...] = ()

    # -- public ---------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """The local socket (root and the administrator connect only through it)."""
        if self._files is None:
            raise DatabaseError("the database is not started")
        return self._files.socket

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def start(self) -> None:
        """Check, initialise on first start, and start ``mariadbd``; returns once it is ready.
        Raises ``DatabaseError`` (``WrongDatabaseKey`` for another key's data directory)."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        config = self.config
        log.info(
            "serving on %s:%d (TLS only), data in %s", config.host, config.port, config.datadir
        )

    def request_stop(self) -> None:
        """Ask ``mariadbd`` for its clean shutdown (safe in a signal handler)."""
        self._stop_requested.set()
        if self._process is not None:
            self._process.signal(signal.SIGTERM)

    def wait(self, reload_interval: float = 5.0) -> int:
        """Serve until ``mariadbd`` exits, reloading renewed TLS files every
        ``reload_interval`` seconds. 0 after a clean stop; ``DatabaseError`` otherwise."""
        process = self._require_process()
        while True:
            try:
                code = process.process.wait(timeout=reload_interval)
                break
            except subprocess.TimeoutExpired:
                if not self.stop_requested:
                    self.reload_tls()
        if code == 0:
            log.info("stopped")
            return 0
        raise DatabaseError(f"mariadbd exited with status {code}: {process.failure()}")

    def stop(self) -> int:
        """Stop ``mariadbd`` cleanly and remove the runtime files; its exit status."""
        self._stop_requested.set()
        code = self._process.stop() if self._process is not None else 0
        self.close()
        return code

    def close(self) -> None:
        """Release everything: a ``mariadbd`` still running is stopped, the tmpfs directory
        removed and the data directory's lock released."""
        if self._process is not None and self._process.process.poll() is None:
            self._process.stop()
        if self._files is not None:
            self._files.remove()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run_sql(self, sql: str) -> str:
        """Run ``sql`` as the local administrator (over the socket); tab-separated rows."""
        assert self._mariadb is not None
        return self._mariadb.run_sql(self.socket, self.admin_user, sql)

    def reload_tls(self) -> bool:
        """Load renewed certificate files into the running server; True if they had changed."""
        stamp = self._tls_files_stamp()
        if stamp == self._tls_stamp:
            return False
        try:
            self._check_tls()
            assert self._files is not None
            self._files.write_ca_bundle(self.config.ca_files)
            self.run_sql("FLUSH SSL;")
        except DatabaseError as exc:
            log.info("TLS reload deferred (%s); next poll", exc)
            return False
        self._tls_stamp = stamp
        log.info("reloaded the renewed TLS certificate")
        return True

    def __enter__(self) -> DatabaseServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- start-up ----------------------------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        self._mariadb = MariaDB.locate(config.mariadb_bin)
        self._check_tls()
        datadir = config.datadir.absolute()
        existing = inspect_datadir(datadir)
        if existing:
            self._lock_fd = lock_datadir(datadir)
            check = KeyCheck.read(datadir)
            if check is None:
                raise DatabaseError(f"{datadir}/{KEY_CHECK_FILE} has disappeared")
            check.verify(config.key, datadir)
        elif datadir.exists():
            self._lock_fd = lock_datadir(
                datadir
            )  # an empty directory, e.g. a mount point: filled in place
        _ensure_port_free(config.host, config.port)
        self._files = RuntimeFiles.create(config.runtime_parent)
        if not existing:
            self._initialise(datadir)
            if self._lock_fd is None:
                self._lock_fd = lock_datadir(datadir)
        make_private(datadir)
        self._tls_stamp = self._tls_files_stamp()
        self._process = self._launch(datadir, config.host)

    def _require_process(self) -> ServerProcess:
        if self._process is None:
            raise DatabaseError("the database is not started")
        return self._process

    def _check_tls(self) -> None:
        """Load the files as the server role MariaDB plays here would, before it starts: a
        mesh server, whose clients must present a certificate one of ``ca_files`` issued."""
        config = self.config
        try:
            context = mesh_server_context(config.cert_file, config.key_file, config.ca_files[0])
            for ca in config.ca_files[1:]:
                context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise DatabaseError(f"unusable TLS certificate, key or CA: {exc}") from None

    def _tls_files_stamp(self) -> tuple[int, ...]:
        paths = (self.config.cert_file, self.config.key_file, *self.config.ca_files)
        try:
            return tuple(path.stat().st_mtime_ns for path in paths)
        except OSError:
            return ()

    def _options(self, datadir: Path, host: str | None) -> list[Option]:
        assert self._files is not None
        config = self.config
        return [
            *common_options(datadir, self._files, host, config.port),
            *confidential_options(self._files, config.cert_file, config.key_file),
            *config.options,
        ]

    def _launch(self, datadir: Path, host: str | None) -> ServerProcess:
        """Start mariadbd on ``datadir``; ready, with the key file gone and TLS loaded."""
        assert self._files is not None
        assert self._mariadb is not None
        files = self._files
        files.write_key(self.config.key)
        files.write_ca_bundle(self.config.ca_files)
        files.write_options(self._options(datadir, host))
        self._process = process = ServerProcess(self._mariadb, files.option_file, _child_env())
        try:
            process.wait_ready(self.config.start_timeout, lambda: self.stop_requested)
        finally:
            # file_key_management read the key at start-up; it need not stay on disk.
            files.remove_key()
        if self.run_sql("SELECT @@have_ssl;").strip() != "YES":
            process.stop()
            raise DatabaseError(f"MariaDB could not load the TLS certificate: {process.failure()}")
        return process

    def _initialise(self, datadir: Path) -> None:
        """Build a new data directory beside ``datadir`` and move it into place."""
        assert self._files is not None
        assert self._mariadb is not None
        datadir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=f".{datadir.name}.geode-init-", dir=datadir.parent))
        try:
            log.info("initialising a new encrypted data directory")
            self._files.write_key(self.config.key)
            self._files.write_options(self._options(staging, None))
            self._mariadb.install(self._files.option_file, self.admin_user, _child_env())
            process = self._launch(staging, None)
            self._wait_encrypted()
            self.run_sql(_DROP_TEST_DATABASE)
            self._drop_remote_administrators()
            if self.config.init_sql:
                try:
                    self.run_sql(self.config.init_sql)
                except _SQLFailed as exc:
                    raise DatabaseError(
                        f"the init SQL failed at {exc}; no data directory was created"
                    ) from None
                self._drop_remote_administrators()
            code = process.stop()
            self._process = None
            if code != 0:
                raise DatabaseError(f"mariadbd exited with status {code}: {process.failure()}")
            KeyCheck.create(self.config.key).write(staging)
            move_into_place(staging, datadir)
            log.info("initialised %s", datadir)
        except BaseException:
            if self._process is not None:
                self._process.stop()
                self._process = None
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise

    def _wait_encrypted(self, timeout: float = 120.0) -> None:
        """Wait until every InnoDB tablespace, the system one included, is encrypted: only then
        may data arrive."""
        deadline = time.monotonic() + timeout
        while self.run_sql(_ENCRYPTION_PENDING).strip() != "0":
            if time.monotonic() > deadline:
                raise DatabaseError("InnoDB did not finish encrypting its tablespaces")
            time.sleep(0.1)

    def _drop_remote_administrators(self) -> None:
        """Anonymous accounts go; root (and the local administrator) stay on the socket only."""
        admins = ", ".join(_sql_string(name) for name in {"root", self.admin_user})
        rows = self.run_sql(
            "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.global_priv "  # noqa: S608
            f"WHERE User = '' OR (User IN ({admins}) AND Host <> 'localhost');"  # quoted above
        )
        accounts = [row for row in rows.splitlines() if row]
        if accounts:
            self.run_sql(f"DROP USER {', '.join(accounts)};")
        # mariadb-install-db also lets root@<host name> proxy; that account is gone.
        self.run_sql(
            "DELETE FROM mysql.proxies_priv "  # noqa: S608
            f"WHERE User IN ({admins}) AND Host <> 'localhost'; FLUSH PRIVILEGES;"
        )


def serve(config: DatabaseConfig, *, reload_interval: float = 5.0) -> int:
    """Run the database until SIGTERM or SIGINT (forwarded to ``mariadbd``, which shuts down
    cleanly); 0 after a clean stop. Raises ``DatabaseError`` when it cannot start."""
    server = DatabaseServer(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    handled: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    try:
        try:
            server.start()
        except DatabaseError:
            if server.stop_requested:
                log.info("stopped during start-up")
                return 0
            raise
        return server.wait(reload_interval)
    finally:
        server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
