"""The confidential database end to end: a real Coordinator, a manifest whose secrets hold the
database key and the clients' certificates and whose rendered file holds the init SQL,
``geode db serve`` under ``geode run``, and client services under ``geode run``."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import measure_bundle
from geode.client import CoordinatorClient
from geode.pki import certificate_pem
from tests.conftest import StartCoordinator
from tests.db.support.mariadb import files_containing, require_mariadb
from tests.support import REPO, free_port, geode_run_argv, make_bundle, wait_for_port

pytestmark = pytest.mark.e2e

APPS = REPO / "tests" / "e2e" / "db_apps"
DOMAIN = "shop.geode.local"
# The manifest pattern of docs/database.md: users bound to certificate secrets by subject and
# by the deployment root as issuer.
INIT_SQL = """CREATE DATABASE shop;
CREATE TABLE shop.books (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(200) NOT NULL);
CREATE USER 'warehouse'@'%' REQUIRE SUBJECT '/CN=warehouse' AND ISSUER '/O=Geode/CN=Geode Root CA';
GRANT SELECT, INSERT ON shop.* TO 'warehouse'@'%';
"""


def _client(secret: str, user: str, port: int) -> dict[str, object]:
    return {
        "package": "app",
        "env": {
            "DB_ADDR": f"127.0.0.1:{port}",
            "DB_USER": user,
            "DB_SERVER_ID": f"spiffe://{DOMAIN}/service/db",
        },
        "files": {
            "db-client.pem": f"{{{{ secrets.{secret}.cert | pem }}}}",
            "db-client.key": f"{{{{ secrets.{secret}.private | pem }}}}",
        },
    }


def db_bundle(path: Path) -> Path:
    """The services' bundle: the client app, with the tests' Python and MariaDB's server
    locked (``geode db serve`` under ``geode run`` starts the locked ``mariadbd``)."""
    return make_bundle(
        path, {"client.py": (APPS / "client.py").read_text()}, lock=("python3", "mariadbd")
    )


def manifest(port: int, bundle: Path) -> bytes:
    document = {
        "version": 1,
        "trust_domain": DOMAIN,
        "packages": {"app": {"tee": "simulated", "measurement": measure_bundle(bundle).hex()}},
        "services": {
            "db": {
                "package": "app",
                "dns_names": ["localhost"],
                "files": {"db.key": "{{ secrets.db_key | raw }}", "init.sql": INIT_SQL},
            },
            "warehouse": _client("warehouse_db", "warehouse", port),
            "bookthief": _client("thief_db", "warehouse", port),
        },
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "warehouse_db": {"type": "cert-ecdsa", "subject": {"common_name": "warehouse"}},
            "thief_db": {"type": "cert-ecdsa", "subject": {"common_name": "bookthief"}},
        },
    }
    return json.dumps(document).encode()


def test_geode_db_serve_under_geode_run(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> None:
    require_mariadb()
    coordinator = start_coordinator()
    with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
        root = x509.load_pem_x509_certificate(client.certificates().root.encode())
    root_file = tmp_path / "root.pem"
    root_file.write_text(certificate_pem(root))
    port = free_port()
    bundle = db_bundle(tmp_path / "bundle")
    with CoordinatorClient(coordinator.client_addr, root=root) as client:
        client.set_manifest(manifest(port, bundle))

    datadir = tmp_path / "db-data"  # (tmp_path / "data" is the Coordinator's)
    log = tmp_path / "db.log"
    with log.open("wb") as out:
        db = subprocess.Popen(
            geode_run_argv(
                coordinator.mesh_addr, "db", bundle, root_file,
                "geode", "db", "serve",
                "--datadir", str(datadir), "--listen", f"127.0.0.1:{port}",
                "--option", "innodb_buffer_pool_size=32M",
            ),
            env=geode_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, db, log)

        def call(service: str, *statements: str) -> dict[str, object]:
            argv = geode_run_argv(
                coordinator.mesh_addr, service, bundle, root_file,
                "python3", "client.py", *statements,
            )  # fmt: skip
            done = subprocess.run(argv, env=geode_env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
            return answer

        marker = f"GEODE-E2E-{uuid.uuid4().hex}"
        written = call(
            "warehouse",
            f"INSERT INTO books (title) VALUES ('{marker}')",
            "SELECT title FROM books",
        )
        assert written == {"rows": [[marker]]}
        # Another certificate secret of the same deployment, another subject: refused.
        assert call("bookthief", "SELECT title FROM books") == {"error": 1045}
    finally:
        db.send_signal(signal.SIGTERM)
        code = db.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "Shutdown complete" in text
    assert "geode db: INFO stopped" in text
    assert files_containing(datadir, marker.encode()) == []


def test_geode_db_serve_under_geode_run_refuses_code_and_sql_from_outside_the_bundle(
    start_coordinator: StartCoordinator, geode_env: dict[str, str], tmp_path: Path
) -> None:
    """The command line after ``geode run ... --`` is the caller's: an option that loads a
    plugin from elsewhere, init SQL outside the bundle and the manifest's files, or a key that is
    not a manifest file, is refused in one line before MariaDB touches anything."""
    require_mariadb()
    coordinator = start_coordinator()
    with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
        root = x509.load_pem_x509_certificate(client.certificates().root.encode())
    root_file = tmp_path / "root.pem"
    root_file.write_text(certificate_pem(root))
    port = free_port()
    bundle = db_bundle(tmp_path / "bundle")
    with CoordinatorClient(coordinator.client_addr, root=root) as client:
        client.set_manifest(manifest(port, bundle))
    evil_sql = tmp_path / "evil.sql"
    evil_sql.write_text("CREATE USER 'thief'@'%'; GRANT ALL ON *.* TO 'thief'@'%';\n")
    evil_key = tmp_path / "evil.key"
    evil_key.write_text("00" * 32)
    datadir = tmp_path / "db-data"
    cases = {
        ("--option", "plugin_dir=/tmp/evil"): "option 'plugin_dir' would load code",
        ("--option", "init_connect=DROP DATABASE shop"): "option 'init_connect' would load code",
        ("--init-sql", str(evil_sql)): f"--init-sql {evil_sql}: under geode run it must be",
        ("--init-sql", "../../evil.sql"): "--init-sql ",
        ("--key-file", str(evil_key)): f"--key-file {evil_key}: under geode run it must be",
        ("--key-env", "PATH"): "--key-env PATH: under geode run the database key must be a file",
    }
    for argument, refusal in cases.items():
        done = subprocess.run(
            geode_run_argv(
                coordinator.mesh_addr, "db", bundle, root_file,
                "geode", "db", "serve",
                "--datadir", str(datadir), "--listen", f"127.0.0.1:{port}", *argument,
            ),
            env=geode_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode != 0, (argument, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, (argument, done.stderr)
        assert refusal in errors[0], (argument, done.stderr)
        assert not datadir.exists()
