"""``geode db``: the confidential database."""

from __future__ import annotations

import logging
from pathlib import Path

import click

__all__ = ["db"]


def _listen(value: str) -> tuple[str, int]:
    from geode.coordinator import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _option(value: str) -> tuple[str, str]:
    name, _, setting = value.partition("=")
    if not name.strip():
        raise click.BadParameter(f"{value!r}: expected NAME or NAME=VALUE")
    return name.strip(), setting.strip()


@click.group()
def db() -> None:
    """The confidential database."""


@db.command()
@click.option(
    "--datadir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    envvar="GEODE_DB_DATADIR",
    help="Data directory (created and initialised on first start; env GEODE_DB_DATADIR).",
)
@click.option("--listen", default="127.0.0.1:3306", show_default=True, help="HOST:PORT.")
@click.option(
    "--key-file",
    help="File holding the 256-bit master key, raw or hex [default: db.key].",
)
@click.option("--key-env", metavar="NAME", help="Take the key (hex) from this variable instead.")
@click.option(
    "--init-sql",
    help="SQL run once, on first start [default: init.sql if present].",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="NAME=VALUE",
    help="A mariadbd tuning option (repeatable; the accepted ones are in docs/database.md).",
)
@click.option(
    "--mariadb-bin",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="GEODE_MARIADB_BIN",
    help="Directory of the MariaDB programs (default: PATH and the system directories).",
)
def serve(
    datadir: Path,
    listen: str,
    key_file: str | None,
    key_env: str | None,
    init_sql: str | None,
    options: tuple[str, ...],
    mariadb_bin: Path | None,
) -> None:
    """Run MariaDB encrypted under the activation's key, TLS only (under 'geode run').

    Relative --key-file and --init-sql paths are in $GEODE_SECRETS_DIR: the manifest's files;
    an init SQL the manifest does not give is the working directory's (the bundle's). Under
    'geode run' both must be files of the bundle or of the manifest."""
    from geode.db import DatabaseConfig
    from geode.db import serve as serve_database

    if key_file is not None and key_env is not None:
        raise click.UsageError("give --key-file or --key-env, not both")
    logging.basicConfig(level=logging.INFO, format="geode db: %(levelname)s %(message)s")
    host, port = _listen(listen)
    config = DatabaseConfig.from_activation(
        datadir,
        key_file=key_file,
        key_env=key_env,
        init_sql_file=init_sql,
        host=host,
        port=port,
        options=[_option(value) for value in options],
        mariadb_bin=mariadb_bin,
    )
    raise SystemExit(serve_database(config))
