"""``geode db serve``: MariaDB with its data encrypted under the Coordinator's key, reachable
over the network only with TLS and a client certificate its manifest names.

Start-up checks everything it can before any MariaDB program touches the data directory (the
programs, the TLS files, the key against the directory's key check, the address), because a
``mariadbd`` that fails half-way has already written to it. A new data directory is built next
to the final one and moved into place only once MariaDB, the Geode hardening and the manifest's
initialisation SQL have all succeeded, so the initialisation runs exactly once and a failed one
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from geode.db._config import (
    Option,
    RuntimeFiles,
    check_extra_options,
    common_options,
    confidential_options,
    os_user,
)
from geode.db._key import KEY_CHECK_FILE, KEY_SIZE, KeyCheck, parse_key, read_key_file
from geode.db._mariadb import MariaDB, ServerProcess, _SQLFailed
from geode.errors import DatabaseError
from geode.protocol import mesh_server_context
from geode.runtime import Credentials

__all__ = ["DatabaseConfig", "DatabaseServer", "serve"]

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


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """What ``geode db serve`` needs: where the data lives, the 256-bit master key, the TLS
    files (the server's certificate chain and key, and the CAs whose certificates clients may
    present), the address, and the initialisation SQL run once on first start."""

    datadir: Path
    key: bytes = field(repr=False)
    cert_file: Path
    key_file: Path
    ca_files: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 3306
    init_sql: str | None = field(default=None, repr=False)
    options: tuple[Option, ...] = ()
    mariadb_bin: Path | None = None
    runtime_parent: Path | None = None
    start_timeout: float = 300.0

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise DatabaseError(f"the database key must be {KEY_SIZE * 8} bits")
        if not 0 < self.port < 65536:
            raise DatabaseError(f"port {self.port} is out of range")
        if not self.ca_files:
            raise DatabaseError("no CA certificate to verify clients with")
        check_extra_options(self.options)

    @classmethod
    def from_activation(
        cls,
        datadir: Path,
        *,
        environ: Mapping[str, str] | None = None,
        key_file: str | None = None,
        key_env: str | None = None,
        init_sql_file: str | None = None,
        host: str = "127.0.0.1",
        port: int = 3306,
        options: Iterable[Option] = (),
        mariadb_bin: Path | None = None,
    ) -> DatabaseConfig:
        """The configuration of a service started by ``geode run``: its certificate, key and
        CAs (``GEODE_CERT_FILE``, ``GEODE_KEY_FILE``, ``GEODE_CA_FILE`` and
        ``GEODE_ROOT_CA_FILE``), the master key from ``key_file`` (default ``db.key``) or the
        hex in variable ``key_env``, and the init SQL in ``init_sql_file`` (default
        ``init.sql``, if present). Relative paths are in ``GEODE_SECRETS_DIR`` (the manifest's
        files); a relative init SQL the manifest does not give is the working directory's: the
        bundle's, under ``geode run``, which runs the command in its measured copy."""
        env = os.environ if environ is None else environ
        credentials = Credentials.from_env(env)
        secrets_dir = env.get("GEODE_SECRETS_DIR")

        def resolve(name: str) -> Path:
            path = Path(name)
            return path if path.is_absolute() or not secrets_dir else Path(secrets_dir, path)

        if key_env is not None:
            if not env.get(key_env):
                raise DatabaseError(f"${key_env} is not set: it should hold the database key")
            key = parse_key(env[key_env].encode(), f"${key_env}")
        else:
            key = read_key_file(resolve(key_file or "db.key"))
        init_name = Path(init_sql_file or "init.sql")
        init_path = resolve(str(init_name))
        if not init_path.exists() and not init_name.is_absolute() and init_name.is_file():
            init_path = init_name.absolute()  # the bundle's, in the working directory
        init_sql = None
        if init_sql_file is not None or init_path.is_file():
            try:
                init_sql = init_path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise DatabaseError(f"cannot read the init SQL {init_path}: {exc}") from None
        ca_files = [credentials.ca_file]
        if env.get("GEODE_ROOT_CA_FILE"):
            ca_files.append(Path(env["GEODE_ROOT_CA_FILE"]))
        return cls(
            datadir=datadir,
            key=key,
            cert_file=credentials.cert_file,
            key_file=credentials.key_file,
            ca_files=tuple(ca_files),
            init_sql=init_sql,
            host=host,
            port=port,
            options=tuple(options),
            mariadb_bin=mariadb_bin,
        )


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
        existing = self._inspect(datadir)
        if existing:
            self._lock(datadir)
            check = KeyCheck.read(datadir)
            if check is None:
                raise DatabaseError(f"{datadir}/{KEY_CHECK_FILE} has disappeared")
            check.verify(config.key, datadir)
        elif datadir.exists():
            self._lock(datadir)  # an empty directory, e.g. a mount point: filled in place
        _ensure_port_free(config.host, config.port)
        self._files = RuntimeFiles.create(config.runtime_parent)
        if not existing:
            self._initialise(datadir)
            if self._lock_fd is None:
                self._lock(datadir)
        _make_private(datadir)
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

    @staticmethod
    def _inspect(datadir: Path) -> bool:
        """True for an existing Geode data directory, False for a missing or empty one."""
        if not datadir.exists():
            return False
        if not datadir.is_dir():
            raise DatabaseError(f"{datadir} is not a directory")
        if not any(datadir.iterdir()):
            return False
        if not (datadir / KEY_CHECK_FILE).exists():
            raise DatabaseError(
                f"{datadir} is not empty and has no {KEY_CHECK_FILE}: "
                "not a Geode database directory; nothing was changed"
            )
        return True

    def _lock(self, datadir: Path) -> None:
        fd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseError(f"{datadir} is in use by another geode db serve") from None
        self._lock_fd = fd

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
            self._move_into_place(staging, datadir)
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

    @staticmethod
    def _move_into_place(staging: Path, datadir: Path) -> None:
        if not datadir.exists():
            staging.rename(datadir)
            return
        # The key check goes last: a directory without it is never taken for a complete one.
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == KEY_CHECK_FILE):
            entry.rename(datadir / entry.name)
        staging.rmdir()


def _make_private(datadir: Path) -> None:
    """Take group and other permissions off everything in the data directory (itself
    included): MariaDB and Geode create it all private now, but a directory made by an earlier
    version, or a mount point filled in place, may still have files others can read. Links are
    neither followed nor changed."""
    changed = 0
    for directory, subdirs, names, dir_fd in os.fwalk(datadir, follow_symlinks=False):
        entries = [(".", os.stat(dir_fd).st_mode)] if directory == str(datadir) else []
        for name in [*subdirs, *names]:
            entries.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode))
        for name, mode in entries:
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                continue
            if name == ".":
                os.chmod(dir_fd, stat.S_IMODE(mode) & 0o700)
            else:
                os.chmod(name, stat.S_IMODE(mode) & 0o700, dir_fd=dir_fd)
            changed += 1
    if changed:
        log.warning("%s: made %d entries private (no access for group or others)", datadir, changed)


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
