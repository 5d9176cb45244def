"""The database's pure pieces: keys, key checks, the option file, SQL error lines."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from geode.db import DatabaseConfig, parse_key, read_key_file
from geode.db._config import RuntimeFiles, check_extra_options, render_option_file
from geode.db._datadir import make_private as _make_private
from geode.db._key import KEY_CHECK_FILE, KeyCheck
from geode.db._mariadb import describe_sql_error
from geode.errors import DatabaseError, WrongDatabaseKey


def test_keys_raw_or_hex() -> None:
    key = os.urandom(32)
    assert parse_key(key, "k") == key
    assert parse_key(key.hex().encode() + b"\n", "k") == key
    assert parse_key(key.hex().upper().encode(), "k") == key
    for bad in (b"", key[:31], key + b"x", b"z" * 64, key.hex().encode()[:-2]):
        with pytest.raises(DatabaseError, match="expected a 256-bit key") as info:
            parse_key(bad, "the key")
        assert key.hex() not in str(info.value)


def test_read_key_file(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot read the key file"):
        read_key_file(tmp_path / "missing")
    (tmp_path / "k").write_text("ab" * 32)
    assert read_key_file(tmp_path / "k") == b"\xab" * 32


def test_key_check_round_trip(tmp_path: Path) -> None:
    key = os.urandom(32)
    KeyCheck.create(key).write(tmp_path)
    assert (tmp_path / KEY_CHECK_FILE).stat().st_mode & 0o777 == 0o600
    check = KeyCheck.read(tmp_path)
    assert check is not None
    assert check.matches(key)
    check.verify(key, tmp_path)
    assert not check.matches(os.urandom(32))
    with pytest.raises(WrongDatabaseKey, match="written with another key"):
        check.verify(os.urandom(32), tmp_path)
    document = json.loads((tmp_path / KEY_CHECK_FILE).read_text())
    assert key.hex() not in json.dumps(document)
    assert KeyCheck.read(tmp_path / "nowhere") is None
    (tmp_path / KEY_CHECK_FILE).write_text('{"format": "geode-db/9"}')
    with pytest.raises(DatabaseError, match="unknown format"):
        KeyCheck.read(tmp_path)


def test_option_file_quotes_values() -> None:
    text = render_option_file([("datadir", "/srv/my data"), ("skip_name_resolve", "ON"), ("x", "")])
    assert 'datadir = "/srv/my data"' in text
    assert "skip_name_resolve = ON" in text
    assert text.splitlines()[1] == "[mariadbd]"
    assert text.splitlines()[-1] == "x"
    with pytest.raises(DatabaseError, match="line break"):
        render_option_file([("a", "b\nrequire_secure_transport = OFF")])


@pytest.mark.parametrize(
    "name",
    [
        "require_secure_transport",
        "require-secure-transport",
        "loose-innodb-encrypt-tables",
        "skip-ssl",
        "ssl_ca",
        "general_log",
        "skip_log_bin",
        "disable-aria-encrypt-tables",
        "file_key_management_filename",
        "enforce_storage_engine",
    ],
)
def test_confidential_options_cannot_be_changed(name: str) -> None:
    with pytest.raises(DatabaseError, match="managed by Geode"):
        check_extra_options([(name, "OFF")])


def test_other_options_pass() -> None:
    check_extra_options([("innodb_buffer_pool_size", "1G"), ("max-connections", "500")])
    with pytest.raises(DatabaseError, match="not a MariaDB option name"):
        check_extra_options([("bad name", "1")])


def test_sql_errors_do_not_quote_the_sql() -> None:
    stderr = (
        "ERROR 1064 (42000) at line 3: You have an error in your SQL syntax; check the manual "
        "that corresponds to your MariaDB server version for the right syntax to use near "
        "'IDENTIFIED BY 'hunter2'' at line 1\n"
    )
    assert describe_sql_error(stderr) == (
        "line 3: You have an error in your SQL syntax (error 1064, SQLSTATE 42000)"
    )
    assert describe_sql_error("ERROR 1049 (42000) at line 1: Unknown database 'shop'") == (
        "line 1: Unknown database 'shop' (error 1049, SQLSTATE 42000)"
    )


def test_an_existing_data_directory_is_made_private(tmp_path: Path) -> None:
    """A data directory from an earlier version (or a mount point filled in place) loses its
    group and other permissions at start; links are neither followed nor changed."""
    datadir, outside = tmp_path / "data", tmp_path / "outside"
    (datadir / "shop").mkdir(parents=True)
    outside.write_text("not the database's")
    outside.chmod(0o644)
    (datadir / "mysql_upgrade_info").write_text("10.11")
    (datadir / "shop" / "books.ibd").write_text("pages")
    for path, mode in ((datadir, 0o755), (datadir / "shop", 0o750)):
        path.chmod(mode)
    (datadir / "mysql_upgrade_info").chmod(0o644)
    (datadir / "link").symlink_to(outside)
    _make_private(datadir)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode)
        for p in [datadir, *datadir.rglob("*")]
        if not p.is_symlink()
    }
    assert modes == {
        "data": 0o700,
        "data/shop": 0o700,
        "data/mysql_upgrade_info": 0o600,
        "data/shop/books.ibd": 0o600,
    }
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_the_runtime_files_of_a_server_killed_outright_go_at_the_next_start(
    tmp_path: Path,
) -> None:
    """``geode db serve`` killed with SIGKILL leaves its tmpfs directory (key, option file,
    Aria log); the next one on the same tmpfs zeroes and removes it, and leaves live ones."""
    code = (
        "import sys, time; from pathlib import Path; from geode.db._config import RuntimeFiles; "
        "f = RuntimeFiles.create(Path(sys.argv[1])); f.write_key(bytes(32)); "
        "print(f.directory, flush=True); time.sleep(100)"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert server.stdout is not None
    left = Path(server.stdout.readline().decode().strip())
    live = RuntimeFiles.create(tmp_path)
    assert (left / "keys.txt").exists()
    server.kill()
    server.wait()
    assert (left / "keys.txt").exists()
    files = RuntimeFiles.create(tmp_path)
    assert not left.exists()
    assert live.directory.exists()
    files.remove()
    live.remove()
    assert list(tmp_path.iterdir()) == []


def test_the_key_and_option_files_are_zeroed_before_they_are_deleted(tmp_path: Path) -> None:
    """A descriptor kept on the old file reads what is left of it once its name is gone: zeros."""
    files = RuntimeFiles.create(tmp_path)
    try:
        files.write_key(bytes(range(32)))
        files.write_options([("port", "3306")])
        kept = os.open(files.key_file, os.O_RDONLY)
        try:
            files.remove_key()
            assert not files.key_file.exists()
            size = os.fstat(kept).st_size
            assert size > 64
            assert os.pread(kept, size, 0) == bytes(size)
        finally:
            os.close(kept)
        kept = os.open(files.option_file, os.O_RDONLY)
        try:
            files.write_options([("port", "3307")])
            size = os.fstat(kept).st_size
            assert size > 0
            assert os.pread(kept, size, 0) == bytes(size)
        finally:
            os.close(kept)
        assert b"3307" in files.option_file.read_bytes()
    finally:
        files.remove()


def test_the_init_sql_is_the_manifests_else_the_bundles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative init SQL is the manifest's file when it gives one, else the working
    directory's: under geode run, the measured copy of the bundle."""
    secrets, bundle = tmp_path / "secrets", tmp_path / "bundle"
    secrets.mkdir()
    bundle.mkdir()
    (secrets / "db.key").write_text("ab" * 32)
    (bundle / "init.sql").write_text("CREATE DATABASE from_the_bundle;\n")
    env = {
        "GEODE_CERT_FILE": str(tmp_path / "cert.pem"),
        "GEODE_KEY_FILE": str(tmp_path / "key.pem"),
        "GEODE_CA_FILE": str(tmp_path / "ca.pem"),
        "GEODE_SPIFFE_ID": "spiffe://t.local/service/db",
        "GEODE_SECRETS_DIR": str(secrets),
    }
    monkeypatch.chdir(bundle)
    for given in ("init.sql", None):
        config = DatabaseConfig.from_activation(tmp_path / "data", environ=env, init_sql_file=given)
        assert config.init_sql == "CREATE DATABASE from_the_bundle;\n", given
    (secrets / "init.sql").write_text("CREATE DATABASE from_the_manifest;\n")
    config = DatabaseConfig.from_activation(
        tmp_path / "data", environ=env, init_sql_file="init.sql"
    )
    assert config.init_sql == "CREATE DATABASE from_the_manifest;\n"
    (secrets / "init.sql").unlink()
    (bundle / "init.sql").unlink()
    assert DatabaseConfig.from_activation(tmp_path / "data", environ=env).init_sql is None
    with pytest.raises(DatabaseError, match="cannot read the init SQL"):
        DatabaseConfig.from_activation(tmp_path / "data", environ=env, init_sql_file="init.sql")
