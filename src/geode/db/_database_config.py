"""The configuration of ``geode db serve``: the value ``DatabaseServer`` runs from, and how a
service started by ``geode run`` builds it from its activation (environment, manifest files and
the command line).

Under ``geode run`` the command line is the caller's, not the measured bundle's, so the files it
names may only be measured or handed out ones. The init SQL must resolve, links and ``..``
followed, inside the staged bundle (``$GEODE_BUNDLE_DIR``, covered by the measurement) or the
manifest's files (``$GEODE_SECRETS_DIR``, covered by the manifest). The master key must be a secret
the Coordinator handed out: a file of the manifest's only (the bundle is measured, not secret), and
never a variable (``--key-env``), since the launcher cannot tell the manifest's variables from ones
the caller's environment passed through."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from geode.db._config import Option, check_extra_options
from geode.db._key import KEY_SIZE, parse_key, read_key_file
from geode.errors import DatabaseError
from geode.runtime import BUNDLE_DIR_ENV, Credentials

__all__ = ["DatabaseConfig"]


@dataclass(frozen=True)
class _ActivationFiles:
    """Where the file arguments of ``geode db serve`` are found: relative ones in the manifest's
    files, else (the init SQL) the bundle's; under ``geode run``, only inside those two."""

    secrets_dir: Path | None
    bundle_dir: Path | None  # set under geode run only

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> _ActivationFiles:
        secrets, bundle = env.get("GEODE_SECRETS_DIR"), env.get(BUNDLE_DIR_ENV)
        return cls(Path(secrets) if secrets else None, Path(bundle) if bundle else None)

    def manifest_file(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() or self.secrets_dir is None else self.secrets_dir / path

    def bundle_file(self, name: str) -> Path:
        """Under ``geode run``, the staged bundle's; outside it, the working directory's."""
        return self.bundle_dir / name if self.bundle_dir is not None else Path(name).absolute()

    def confine(self, path: Path, option: str, *, secret: bool = False) -> Path:
        """``path`` itself outside ``geode run``; under it, its real path, which must be in the
        manifest's files or (unless ``secret``) the bundle."""
        if self.bundle_dir is None:
            return path
        real = Path(os.path.realpath(path))
        roots = [*([] if secret else [self.bundle_dir]), *filter(None, [self.secrets_dir])]
        if any(real.is_relative_to(os.path.realpath(root)) for root in roots):
            return real
        if secret:
            raise DatabaseError(
                f"{option} {path}: under geode run it must be a file of the manifest "
                "($GEODE_SECRETS_DIR): the bundle is measured, not secret"
            )
        raise DatabaseError(
            f"{option} {path}: under geode run it must be a file of the bundle "
            f"(${BUNDLE_DIR_ENV}) or of the manifest ($GEODE_SECRETS_DIR)"
        )


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
        files); a relative init SQL the manifest does not give is the working directory's (the
        bundle's, under ``geode run``, which runs the command in its measured copy). Under
        ``geode run`` the init SQL must be the bundle's or the manifest's, the key file the
        manifest's (``_ActivationFiles``), and ``key_env`` and ``mariadb_bin`` (programs from
        elsewhere) are refused."""
        env = os.environ if environ is None else environ
        credentials = Credentials.from_env(env)
        files = _ActivationFiles.from_env(env)
        if mariadb_bin is not None and files.bundle_dir is not None:
            raise DatabaseError(
                f"--mariadb-bin {mariadb_bin}: under geode run the MariaDB programs are the ones "
                "the bundle's geode.lock names"
            )
        if key_env is not None and files.bundle_dir is not None:
            raise DatabaseError(
                f"--key-env {key_env}: under geode run the database key must be a file of the "
                "manifest: use --key-file"
            )
        if key_env is not None:
            if not env.get(key_env):
                raise DatabaseError(f"${key_env} is not set: it should hold the database key")
            key = parse_key(env[key_env].encode(), f"${key_env}")
        else:
            key_path = files.manifest_file(key_file or "db.key")
            key = read_key_file(files.confine(key_path, "--key-file", secret=True))
        init_name = init_sql_file or "init.sql"
        init_path = files.manifest_file(init_name)
        if not init_path.exists() and not Path(init_name).is_absolute():
            in_bundle = files.bundle_file(init_name)
            if in_bundle.is_file():
                init_path = in_bundle
        init_sql = None
        if init_sql_file is not None or init_path.is_file():
            init_path = files.confine(init_path, "--init-sql")
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
