"""The confidential database in server mode, with a real MariaDB: data at rest encrypted under
the key, TLS with the manifest's client certificates as the only way in, restarts, and start-up
failures that leave the data directory as it was."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from cryptography import x509

from geode.db import DatabaseConfig, DatabaseServer
from geode.errors import DatabaseError, WrongDatabaseKey
from tests.db.support.mariadb import (
    ROOT_ISSUER,
    DeploymentPKI,
    checksums,
    error_code,
    files_containing,
    plain_connect,
    require_mariadb,
    ssl_error_types,
    tls_connect,
)
from tests.support import free_port

pytestmark = pytest.mark.e2e

INIT_SQL = f"""
CREATE DATABASE shop;
CREATE TABLE shop.books (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(200) NOT NULL);
CREATE TABLE shop.ledger (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT);
CREATE USER 'warehouse'@'%' REQUIRE SUBJECT '/CN=warehouse' AND ISSUER '{ROOT_ISSUER}';
GRANT SELECT, INSERT, UPDATE, CREATE TEMPORARY TABLES ON shop.* TO 'warehouse'@'%';
CREATE USER 'auditor'@'%' REQUIRE SUBJECT '/CN=auditor' AND ISSUER '{ROOT_ISSUER}';
GRANT SELECT ON shop.books TO 'auditor'@'%';
CREATE USER 'legacy'@'%' IDENTIFIED BY 'legacy-password';
GRANT SELECT ON shop.books TO 'legacy'@'%';
"""


def make_config(
    pki: DeploymentPKI, datadir: Path, port: int, key: bytes, **kw: object
) -> DatabaseConfig:
    return DatabaseConfig(
        datadir=datadir,
        key=key,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_files=(pki.mesh_file, pki.root_file),
        port=port,
        init_sql=INIT_SQL,
        options=(("innodb_buffer_pool_size", "32M"), ("innodb_log_file_size", "16M")),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DeploymentPKI:
    return DeploymentPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, pki: DeploymentPKI
) -> Iterator[DatabaseServer]:
    require_mariadb()
    base = tmp_path_factory.mktemp("running")
    with DatabaseServer(make_config(pki, base / "data", free_port(), os.urandom(32))) as server:
        yield server


def test_the_right_certificates_read_and_write_within_their_grants(
    running: DatabaseServer, pki: DeploymentPKI
) -> None:
    port = running.config.port
    warehouse, auditor = pki.secret_cert("warehouse"), pki.secret_cert("auditor")
    with (
        tls_connect(pki, port, "warehouse", warehouse, database="shop") as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SHOW STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLSv1.")
        cur.execute("INSERT INTO books (title) VALUES ('Dune')")
        conn.commit()
        for statement in (
            "DELETE FROM books",
            "CREATE TABLE t (x INT)",
            "SELECT * FROM mysql.user",
        ):
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute(statement)
            assert error_code(denied.value) in (1142, 1044), statement
    with tls_connect(pki, port, "auditor", auditor, database="shop") as conn, conn.cursor() as cur:
        cur.execute("SELECT title FROM books")
        assert ("Dune",) in cur.fetchall()
        with pytest.raises(pymysql.err.OperationalError) as denied:
            cur.execute("INSERT INTO books (title) VALUES ('x')")
        assert error_code(denied.value) == 1142
        with pytest.raises(pymysql.err.OperationalError) as denied:
            cur.execute("SELECT * FROM ledger")
        assert error_code(denied.value) == 1142


def test_plaintext_is_refused(running: DatabaseServer, pki: DeploymentPKI) -> None:
    port = running.config.port
    with pytest.raises(pymysql.err.OperationalError) as refused:
        plain_connect(port, "legacy", password="legacy-password")
    # MariaDB 10.11 answers "access denied"; later versions name the insecure transport.
    assert error_code(refused.value) in (1045, 3159)
    with pytest.raises(pymysql.err.OperationalError):
        plain_connect(port, "warehouse")
    # The same account over TLS gets in: it was the transport that was refused.
    warehouse = pki.secret_cert("warehouse")
    tls_connect(pki, port, "legacy", warehouse, password="legacy-password").close()


def test_a_mesh_certificate_with_another_subject_is_refused(
    running: DatabaseServer, pki: DeploymentPKI
) -> None:
    port = running.config.port
    thief = pki.mesh_cert("bookthief")
    for user in ("warehouse", "auditor", "root"):
        with pytest.raises(pymysql.err.OperationalError) as denied:
            tls_connect(pki, port, user, thief)
        assert error_code(denied.value) == 1045, user
    # A certificate secret with another subject does not pass for the warehouse either.
    with pytest.raises(pymysql.err.OperationalError) as denied:
        tls_connect(pki, port, "warehouse", pki.secret_cert("auditor"))
    assert error_code(denied.value) == 1045


def test_a_certificate_from_another_ca_is_refused(
    running: DatabaseServer, pki: DeploymentPKI
) -> None:
    from geode.pki import CertificateAuthority

    # Same names as the deployment's root, other keys: only the chain tells them apart.
    impostor = pki.secret_cert("warehouse", authority=CertificateAuthority.create_root())
    with pytest.raises(ssl_error_types()):
        tls_connect(pki, running.config.port, "warehouse", impostor)


def test_root_and_anonymous_accounts_are_local_only(
    running: DatabaseServer, pki: DeploymentPKI
) -> None:
    accounts = running.run_sql("SELECT User, Host FROM mysql.global_priv ORDER BY User;").split(
        "\n"
    )
    rows = {tuple(line.split("\t")) for line in accounts if line}
    assert ("root", "localhost") in rows
    assert not [row for row in rows if row[0] == "" or (row[0] == "root" and row[1] != "localhost")]
    assert "test" not in running.run_sql("SHOW DATABASES;").split()
    assert running.run_sql(
        "SELECT @@require_secure_transport, @@innodb_encrypt_tables;"
    ).split() == [
        "1",
        "FORCE",
    ]
    with pytest.raises(pymysql.err.OperationalError):
        tls_connect(pki, running.config.port, "root", pki.secret_cert("root"))


def test_a_renewed_certificate_is_loaded_without_a_restart(
    running: DatabaseServer, pki: DeploymentPKI
) -> None:
    assert not running.reload_tls()  # nothing changed yet
    old = _served_certificate(running, pki)
    pki.renew_server_certificate()
    assert running.reload_tls()
    renewed = _served_certificate(running, pki)
    assert renewed != old
    assert renewed == x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    assert not running.reload_tls()


def _served_certificate(running: DatabaseServer, pki: DeploymentPKI) -> x509.Certificate:
    conn = tls_connect(pki, running.config.port, "auditor", pki.secret_cert("auditor"))
    with conn:
        der = conn._sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def _occupied(port: int) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    return listener


def test_data_at_rest_restart_and_start_up_failures(tmp_path: Path, pki: DeploymentPKI) -> None:
    require_mariadb()
    datadir, port, key = tmp_path / "data", free_port(), os.urandom(32)
    marker = f"GEODE-MARKER-{uuid.uuid4().hex}"
    warehouse = pki.secret_cert("warehouse")
    with DatabaseServer(make_config(pki, datadir, port, key)) as server:
        conn = tls_connect(pki, port, "warehouse", warehouse, database="shop")
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO books (title) VALUES (%s)", (marker,))
            cur.executemany("INSERT INTO ledger (note) VALUES (%s)", [(marker * 20,)] * 200)
            conn.commit()
            # Undo records, a temporary table and a sort see the marker too.
            cur.execute("UPDATE books SET title = CONCAT(title, '-v2') WHERE title = %s", (marker,))
            cur.execute("CREATE TEMPORARY TABLE scratch ENGINE=InnoDB AS SELECT * FROM ledger")
            cur.execute("SELECT note FROM scratch ORDER BY note DESC, id LIMIT 1")
            conn.commit()
        # Running: the redo log and the binlog already hold the committed rows.
        assert files_containing(datadir, marker.encode()) == []
        assert server.run_sql("SHOW BINARY LOGS;").strip()
    assert server.stop_requested
    # Stopped cleanly: every page flushed. Still nothing in plaintext, in any file.
    assert files_containing(datadir, marker.encode()) == []
    # The search does read every file: the one plaintext file Geode writes is found.
    assert files_containing(datadir, b"geode-db/1") == ["geode-db.json"]

    # Restart with the same key: the data is there (and the init SQL, which would fail on a
    # second run, did not run again).
    auditor = pki.secret_cert("auditor")
    with DatabaseServer(make_config(pki, datadir, port, key)):
        conn = tls_connect(pki, port, "auditor", auditor, database="shop")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT title FROM books WHERE title LIKE %s", (marker + "%",))
            assert cur.fetchall() == ((marker + "-v2",),)

    before = checksums(datadir)
    with pytest.raises(WrongDatabaseKey) as wrong:
        DatabaseServer(make_config(pki, datadir, port, os.urandom(32))).start()
    assert "was written with another key" in str(wrong.value)
    with _occupied(port), pytest.raises(DatabaseError) as busy:
        DatabaseServer(make_config(pki, datadir, port, key)).start()
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in str(busy.value)
    assert checksums(datadir) == before

    # The command line says the same in one line, and exits non-zero.
    env = {**os.environ, **pki.server_env(tmp_path / "secrets")}
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db.key").write_bytes(os.urandom(32))
    result = _geode_db_serve(env, "--datadir", str(datadir), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: the data directory {datadir} was written with another key "
        "(the key check does not match); nothing was changed"
    ]
    assert checksums(datadir) == before


def _geode_db_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geode", "db", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_init_sql_creates_nothing(tmp_path: Path, pki: DeploymentPKI) -> None:
    require_mariadb()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db.key").write_text(os.urandom(32).hex())
    (secrets / "init.sql").write_text(
        "CREATE DATABASE shop;\nCREAT USER 'x'@'%' IDENTIFIED BY 'do-not-print-me';\n"
    )
    env = {**os.environ, **pki.server_env(secrets)}
    parent = tmp_path / "volume"
    parent.mkdir()
    result = _geode_db_serve(
        env, "--datadir", str(parent / "data"), "--listen", f"127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: the init SQL failed at line 2: You have an error in your SQL syntax "
        "(error 1064, SQLSTATE 42000); no data directory was created"
    ]
    assert "do-not-print-me" not in result.stderr
    assert list(parent.iterdir()) == []


def test_missing_mariadb_and_bad_keys_are_one_line(tmp_path: Path, pki: DeploymentPKI) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db.key").write_bytes(os.urandom(32))
    env = {**os.environ, **pki.server_env(secrets)}
    empty = tmp_path / "bin"
    empty.mkdir()
    datadir = str(tmp_path / "data")
    result = _geode_db_serve(env, "--datadir", datadir, "--mariadb-bin", str(empty))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: MariaDB is not installed: 'mariadbd' was not found in {empty} "
        "(install the mariadb-server package)"
    ]
    (secrets / "short.key").write_bytes(b"0123456789abcdef")
    result = _geode_db_serve(env, "--datadir", datadir, "--key-file", "short.key")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {secrets / 'short.key'}: expected a 256-bit key (32 raw bytes or 64 hex digits), "
        "got 16 bytes"
    ]
    result = _geode_db_serve(env, "--datadir", datadir, "--option", "require_secure_transport=OFF")
    assert result.returncode == 1
    assert "option 'require_secure_transport' is managed by Geode" in result.stderr
    assert not (tmp_path / "data").exists()


def _shared_modes(*directories: Path) -> list[str]:
    """Every file or directory under ``directories`` (themselves included) that anyone but the
    owner may read, write or enter, with its mode. Sockets aside: MariaDB makes its socket 0777
    whatever the umask; it is reachable only through the private (0700) runtime directory."""
    found = []
    for directory in directories:
        for path in [directory, *directory.rglob("*")]:
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077 and not stat.S_ISLNK(info.st_mode) and not stat.S_ISSOCK(info.st_mode):
                found.append(f"{path.relative_to(directory.parent)} {mode:o}")
    return found


def test_nothing_in_the_data_directory_is_readable_by_others(running: DatabaseServer) -> None:
    """What Geode writes there and what MariaDB writes there (tables, logs, binlog, its own
    caches) are the owner's alone, as are the runtime files on the tmpfs."""
    assert running._files is not None
    assert _shared_modes(running.config.datadir, running._files.directory) == []
