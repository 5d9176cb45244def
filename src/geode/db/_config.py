"""The MariaDB option file Geode writes: the settings every Geode database shares, and the
confidential ones (encryption at rest keyed by the Coordinator's secret, TLS only) that nothing
else may override.

Extra options (``--option``) come from whoever starts ``geode db serve``: under ``geode run``,
from outside the measured bundle. So they are an allow list of tuning options (sizes, limits,
timeouts, SQL behaviour) rather than a deny list: nothing that loads a plugin, reads or writes a
file or directory, runs SQL or changes access control can be named, whatever MariaDB adds later."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geode._files import create_private_file, wipe_file, wipe_tree
from geode.errors import DatabaseError
from geode.runtime.launcher import LauncherRecord, clean_leftovers

__all__ = [
    "CONFIDENTIAL_NAMES",
    "TUNING_OPTIONS",
    "Option",
    "RuntimeFiles",
    "check_extra_options",
    "common_options",
    "confidential_options",
    "os_user",
    "render_option_file",
]

Option = tuple[str, str]

# Every option the confidential settings rely on; extra options may not name any of them.
CONFIDENTIAL_NAMES = frozenset(
    {
        "plugin_load_add",
        "plugin_load",
        "plugin_maturity",
        "file_key_management",
        "file_key_management_filename",
        "file_key_management_filekey",
        "file_key_management_encryption_algorithm",
        "innodb_encrypt_tables",
        "innodb_encrypt_log",
        "innodb_encrypt_temporary_tables",
        "innodb_encryption_threads",
        "encrypt_tmp_files",
        "encrypt_tmp_disk_tables",
        "encrypt_binlog",
        "aria_encrypt_tables",
        "aria_log_dir_path",
        "enforce_storage_engine",
        "default_storage_engine",
        "default_tmp_storage_engine",
        "require_secure_transport",
        "ssl",
        "ssl_cert",
        "ssl_key",
        "ssl_ca",
        "ssl_capath",
        "ssl_crl",
        "ssl_crlpath",
        "ssl_cipher",
        "tls_version",
        "networking",  # skip_networking, once unprefixed
        "bind_address",
        "port",
        "socket",
        "datadir",
        "pid_file",
        "user",
        "log_bin",
        "general_log",
        "general_log_file",
        "slow_query_log",
        "slow_query_log_file",
        "log_error",
        "local_infile",
        # What common_options sets besides (skip_name_resolve is name_resolve once unprefixed).
        "name_resolve",
        "server_id",
        "binlog_expire_logs_seconds",
        "character_set_server",
        "collation_server",
    }
)
# The only extra options accepted: tuning that neither loads code or files nor runs SQL nor
# changes who may connect (each name is checked against mariadbd's own list in the tests).
TUNING_OPTIONS = frozenset(
    {
        # InnoDB
        "innodb_buffer_pool_size",
        "innodb_buffer_pool_chunk_size",
        "innodb_log_file_size",
        "innodb_log_buffer_size",
        "innodb_flush_log_at_trx_commit",
        "innodb_flush_method",
        "innodb_io_capacity",
        "innodb_io_capacity_max",
        "innodb_read_io_threads",
        "innodb_write_io_threads",
        "innodb_purge_threads",
        "innodb_lock_wait_timeout",
        "innodb_deadlock_detect",
        "innodb_print_all_deadlocks",
        "innodb_sort_buffer_size",
        "innodb_open_files",
        "innodb_adaptive_hash_index",
        "innodb_autoinc_lock_mode",
        "innodb_strict_mode",
        "innodb_stats_persistent",
        "innodb_ft_min_token_size",
        "innodb_ft_max_token_size",
        # connections and threads
        "max_connections",
        "max_user_connections",
        "max_connect_errors",
        "max_allowed_packet",
        "net_buffer_length",
        "wait_timeout",
        "interactive_timeout",
        "connect_timeout",
        "net_read_timeout",
        "net_write_timeout",
        "thread_cache_size",
        "thread_handling",
        "thread_pool_size",
        "back_log",
        # caches and buffers
        "table_open_cache",
        "table_definition_cache",
        "open_files_limit",
        "sort_buffer_size",
        "join_buffer_size",
        "read_buffer_size",
        "read_rnd_buffer_size",
        "tmp_table_size",
        "max_heap_table_size",
        "key_buffer_size",
        "aria_pagecache_buffer_size",
        "query_cache_type",
        "query_cache_size",
        "query_cache_limit",
        # statements and SQL behaviour
        "max_statement_time",
        "lock_wait_timeout",
        "long_query_time",
        "transaction_isolation",
        "sql_mode",
        "default_time_zone",
        "explicit_defaults_for_timestamp",
        "group_concat_max_len",
        "max_prepared_stmt_count",
        "max_sp_recursion_depth",
        "ft_min_word_len",
        "optimizer_switch",
        "optimizer_search_depth",
        "div_precision_increment",
        "default_week_format",
        # binary log (it stays in the data directory, encrypted) and diagnostics
        "binlog_format",
        "binlog_cache_size",
        "max_binlog_size",
        "sync_binlog",
        "performance_schema",
        "log_warnings",
    }
)
_PREFIXES = ("loose_", "skip_", "disable_", "enable_", "maximum_")


def os_user() -> str:
    """The name of the user this process runs as (MariaDB's socket authentication uses it)."""
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass(frozen=True)
class RuntimeFiles:
    """A private (0700) directory on a tmpfs for the option file, the key file, the CA bundle,
    the socket, the pid file and the (unencrypted) Aria log. Zeroed and removed by ``remove``.

    Like ``geode run``'s, the directory holds a locked record for as long as this process lives
    (``geode.runtime.launcher.LauncherRecord``): one left by a ``geode db serve`` killed outright
    is removed by the next one started on the same tmpfs."""

    directory: Path
    record: LauncherRecord | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, parent: Path | None = None) -> RuntimeFiles:
        if parent is None:
            shm = Path("/dev/shm")  # noqa: S108 - a tmpfs keeps the key off the disk
            parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        clean_leftovers(parent if parent is not None else Path(tempfile.gettempdir()))
        directory = Path(tempfile.mkdtemp(prefix="geode-db-", dir=parent))
        try:
            record = LauncherRecord.create(directory, "geode db serve")
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise DatabaseError(f"cannot write in {directory}: {exc.strerror}") from None
        return cls(directory, record)

    @property
    def option_file(self) -> Path:
        return self.directory / "mariadb.cnf"

    @property
    def key_file(self) -> Path:
        return self.directory / "keys.txt"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def socket(self) -> Path:
        return self.directory / "mariadb.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mariadbd.pid"

    def write_key(self, key: bytes) -> None:
        """The key in ``file_key_management``'s format: key id 1, hex."""
        self.remove_key()
        create_private_file(self.key_file, f"1;{key.hex()}\n".encode())

    def remove_key(self) -> None:
        """Zero the key file, then delete it (``geode._files.wipe_file``)."""
        wipe_file(self.key_file)

    def write_ca_bundle(self, ca_files: Sequence[Path]) -> None:
        data = b"".join(path.read_bytes().rstrip(b"\n") + b"\n" for path in ca_files)
        scratch = self.ca_file.with_suffix(".new")
        wipe_file(scratch)
        create_private_file(scratch, data)
        scratch.replace(self.ca_file)

    def write_options(self, options: Iterable[Option]) -> None:
        wipe_file(self.option_file)
        create_private_file(self.option_file, render_option_file(options).encode())

    def remove(self) -> None:
        wipe_tree(self.directory)
        if self.record is not None:
            self.record.close()


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "/._-,:" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_option_file(options: Iterable[Option]) -> str:
    """The ``[mariadbd]`` option file; later options win, as in MariaDB."""
    lines = ["# Written by geode db serve; lives on a tmpfs and is removed at exit.", "[mariadbd]"]
    for name, value in options:
        if "\n" in name or "\n" in value:
            raise DatabaseError(f"option {name!r}: a line break is not allowed")
        lines.append(f"{name} = {_quote(value)}" if value else name)
    return "\n".join(lines) + "\n"


def common_options(datadir: Path, files: RuntimeFiles, host: str | None, port: int) -> list[Option]:
    """What a Geode database and the plain MariaDB it is compared with share. ``host=None``:
    no TCP at all (first-start initialisation)."""
    options: list[Option] = [
        ("datadir", str(datadir)),
        ("socket", str(files.socket)),
        ("pid_file", str(files.pid_file)),
    ]
    if os.geteuid() == 0:
        # mariadbd refuses to run as root unless told so; it then keeps the current user.
        options.append(("user", os_user()))
    if host is None:
        options.append(("skip_networking", "ON"))
    else:
        options += [("bind_address", host), ("port", str(port))]
    options += [
        ("skip_name_resolve", "ON"),
        ("local_infile", "OFF"),
        ("log_bin", "binlog"),
        ("server_id", "1"),
        ("binlog_expire_logs_seconds", str(7 * 86400)),
        ("character_set_server", "utf8mb4"),
        ("collation_server", "utf8mb4_unicode_ci"),
    ]
    return options


def confidential_options(files: RuntimeFiles, cert_file: Path, key_file: Path) -> list[Option]:
    """Encryption at rest of everything MariaDB writes, keyed by the key in ``files``, and
    TLS with client certificates as the only way in over the network."""
    return [
        ("plugin_load_add", "file_key_management"),
        # Refuse to start at all, rather than start unencrypted, if the plugin cannot load.
        ("file_key_management", "FORCE_PLUS_PERMANENT"),
        ("file_key_management_filename", str(files.key_file)),
        ("file_key_management_encryption_algorithm", "AES_CTR"),
        ("innodb_encrypt_tables", "FORCE"),
        ("innodb_encrypt_log", "ON"),
        ("innodb_encrypt_temporary_tables", "ON"),
        ("innodb_encryption_threads", "2"),
        ("encrypt_tmp_files", "ON"),
        ("encrypt_tmp_disk_tables", "ON"),
        ("encrypt_binlog", "ON"),
        ("aria_encrypt_tables", "ON"),
        # MariaDB cannot encrypt the Aria log (changes to its own system tables: accounts,
        # grants, routines): it lives on the tmpfs, inside the TEE, and goes at exit.
        ("aria_log_dir_path", str(files.directory)),
        # Every user table is InnoDB, whose tables, logs and undo are all encrypted.
        ("enforce_storage_engine", "InnoDB"),
        ("require_secure_transport", "ON"),
        ("ssl_cert", str(cert_file)),
        ("ssl_key", str(key_file)),
        ("ssl_ca", str(files.ca_file)),
        ("tls_version", "TLSv1.2,TLSv1.3"),
    ]


def _base_name(name: str) -> str:
    name = name.strip().lower().replace("-", "_")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _loads_from_outside(base: str) -> bool:
    """Options that load a plugin, name a file or directory, or run SQL."""
    return base.startswith(("plugin", "init_", "secure_", "local_infile")) or base.endswith(
        ("_dir", "_file", "_path", "_filename", "_directory", "_connect", "_slave", "_replica")
    )


def check_extra_options(options: Iterable[Option]) -> None:
    """Refuse every extra option but the ``TUNING_OPTIONS`` (with MariaDB's ``loose-``,
    ``skip-``, ``enable-``, ``disable-`` and ``maximum-`` prefixes), in one line naming it."""
    for name, _value in options:
        base = _base_name(name)
        if not base or not all(c.isalnum() or c == "_" for c in base):
            raise DatabaseError(f"option {name!r}: not a MariaDB option name")
        if base in CONFIDENTIAL_NAMES or base.startswith(("ssl_", "file_key_management")):
            raise DatabaseError(f"option {name!r} is managed by Geode and cannot be changed")
        if base in TUNING_OPTIONS:
            continue
        if _loads_from_outside(base):
            raise DatabaseError(
                f"option {name!r} would load code, files or SQL from outside the measured "
                "bundle: refused"
            )
        raise DatabaseError(
            f"option {name!r} is not one of the tuning options geode db serve accepts "
            "(docs/database.md)"
        )
