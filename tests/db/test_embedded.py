"""Embedded mode: SQLCipher files keyed with a raw 256-bit key."""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest

from geode.db import connect_embedded
from geode.errors import DatabaseError, WrongDatabaseKey


def test_no_plaintext_and_the_same_key_reads_it_back(tmp_path: Path) -> None:
    path, key = tmp_path / "books.db", os.urandom(32)
    marker = f"GEODE-MARKER-{uuid.uuid4().hex}"
    with connect_embedded(path, key) as conn:
        conn.execute("CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)")
        conn.executemany("INSERT INTO books (title) VALUES (?)", [(marker,)] * 100)
    conn.close()
    data = path.read_bytes()
    assert marker.encode() not in data
    assert b"SQLite format 3" not in data  # not even the header is in the clear
    assert not list(tmp_path.glob("books.db-*"))  # no journal left beside it
    conn = connect_embedded(path, key)
    assert conn.execute("SELECT count(*) FROM books WHERE title = ?", (marker,)).fetchone() == (
        100,
    )
    conn.close()
    # The control: the same rows through plain sqlite3 are visible in the file.
    plain = sqlite3.connect(tmp_path / "plain.db")
    with plain:
        plain.execute("CREATE TABLE books (title TEXT)")
        plain.execute("INSERT INTO books VALUES (?)", (marker,))
    plain.close()
    assert marker.encode() in (tmp_path / "plain.db").read_bytes()


def test_the_key_is_used_raw(tmp_path: Path) -> None:
    """The 256-bit key is the cipher key itself: no passphrase derivation (PBKDF2) runs."""
    import sqlcipher3

    path, key = tmp_path / "raw.db", os.urandom(32)
    with connect_embedded(path, key) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    raw = sqlcipher3.connect(str(path))
    raw.execute("PRAGMA kdf_iter = 1")  # irrelevant for a raw key, fatal for a passphrase
    raw.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    raw.execute("PRAGMA cipher_hmac_algorithm = HMAC_SHA256")  # Geode's page authentication
    assert raw.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    raw.close()


def test_a_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "books.db"
    with connect_embedded(path, os.urandom(32)) as conn:
        conn.execute("CREATE TABLE books (title TEXT)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(WrongDatabaseKey) as wrong:
        connect_embedded(path, os.urandom(32))
    assert str(wrong.value) == f"{path}: written with another key, or not an encrypted database"
    assert path.read_bytes() == before
    # A plain SQLite file is refused the same way, not silently read or overwritten.
    sqlite3.connect(tmp_path / "plain.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(WrongDatabaseKey):
        connect_embedded(tmp_path / "plain.db", os.urandom(32))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_only_256_bit_keys(tmp_path: Path, size: int) -> None:
    with pytest.raises(DatabaseError, match="must be 256 bits"):
        connect_embedded(tmp_path / "x.db", b"k" * size)
    assert not (tmp_path / "x.db").exists()


def test_the_database_and_its_journals_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    previous = os.umask(0o022)
    try:
        connection = connect_embedded(path, os.urandom(32))
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE books (title TEXT)")
        connection.execute("INSERT INTO books VALUES ('x')")
        connection.commit()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        connection.close()
    finally:
        os.umask(previous)
    assert "shop.db-wal" in modes
    assert modes == dict.fromkeys(modes, 0o600)
