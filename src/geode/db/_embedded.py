"""Embedded mode: an SQLCipher database file, opened with a raw 256-bit key from the
Coordinator (no password derivation: the key is already random)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any, cast

import sqlcipher3

from geode.db._key import KEY_SIZE
from geode.errors import DatabaseError, WrongDatabaseKey

__all__ = ["connect_embedded"]


def _create_private(path: str) -> None:
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        return
    except OSError as exc:
        raise DatabaseError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)


def connect_embedded(path: str | os.PathLike[str], key: bytes, **kwargs: Any) -> sqlite3.Connection:
    """Open (or create) the SQLCipher database at ``path`` with the 256-bit ``key``.

    The connection is an ``sqlcipher3`` connection, which has the interface of
    ``sqlite3.Connection`` (and is typed as one); ``kwargs`` go to ``sqlcipher3.connect``.
    Raises ``WrongDatabaseKey`` when the file was written with another key (or is not an
    encrypted database) and ``DatabaseError`` for a key of the wrong size.

    A new database file is created with mode 0600 (SQLite gives its journal and WAL files the
    database file's mode), whatever the process umask."""
    if len(key) != KEY_SIZE:
        raise DatabaseError(f"the database key must be {KEY_SIZE * 8} bits, not {len(key) * 8}")
    if not kwargs.get("uri") and os.fspath(path) not in ("", ":memory:"):
        _create_private(os.fspath(path))
    connection = sqlcipher3.connect(os.fspath(path), **kwargs)
    try:
        # x'…' with exactly the key's hex: SQLCipher uses it as the key, no PBKDF2.
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        # Pages are authenticated with HMAC-SHA256 (SQLCipher 4's default is SHA-512): as
        # strong for a 256-bit key, and about 10 % less work per page read or written.
        connection.execute("PRAGMA cipher_hmac_algorithm = HMAC_SHA256")
        # The key is only tried on the first read of the file.
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        connection.close()
        raise WrongDatabaseKey(
            f"{os.fspath(path)}: written with another key, or not an encrypted database"
        ) from None
    return cast(sqlite3.Connection, connection)
