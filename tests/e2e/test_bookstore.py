"""The confidential bookstore end to end: ``geode up examples/bookstore`` with real processes,
the real database, and a relay on every network hop, then each threat of the demo."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from geode.attestation import measure_bundle
from tests.db.support.mariadb import require_mariadb
from tests.support import free_port
from tests.support.bookstore import EXAMPLE, GeodeUp, Relay, deployment_copy

pytestmark = pytest.mark.e2e

OFFSET = 500  # the example's ports + 500: the tests run beside a running demo
TARGETS = {"bookstore": 14001 + OFFSET, "bookwarehouse": 14002 + OFFSET, "database": 14306 + OFFSET}


def titles() -> list[str]:
    """The book titles the bookstore sells (from its source, not imported: it is a bundle)."""
    tree = ast.parse((EXAMPLE / "bookstore" / "app.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TITLES":
            value: list[str] = ast.literal_eval(node.value)
            return value
    raise AssertionError("no TITLES in the bookstore")


def through(relays: dict[str, Relay]) -> Any:
    """A manifest edit: every hop between services goes through a relay of the test's: the
    buyer to the bookstore, the bookstore's egress to the warehouse, the warehouse to the
    database."""

    def edit(manifest: dict[str, Any]) -> None:
        services = manifest["services"]
        store = f"https://localhost:{relays['bookstore'].port}"
        services["bookbuyer"]["env"]["BOOKSTORE_URL"] = store
        outgoing = manifest["tls"]["warehouse-out"]["outgoing"][0]
        outgoing["port"] = relays["bookwarehouse"].port
        outgoing["local_port"] = free_port()
        services["bookstore"]["env"]["WAREHOUSE_EGRESS"] = f"127.0.0.1:{outgoing['local_port']}"
        services["bookwarehouse"]["env"]["DB_ADDR"] = f"127.0.0.1:{relays['database'].port}"

    return edit


@dataclass
class Bookstore:
    up: GeodeUp
    relays: dict[str, Relay]
    tmp: Path


@pytest.fixture(scope="module")
def bookstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bookstore]:
    require_mariadb()
    tmp = tmp_path_factory.mktemp("bookstore")
    relays = {name: Relay(target) for name, target in TARGETS.items()}
    deployment = deployment_copy(tmp / "deployment", through(relays), port_offset=OFFSET)
    up = GeodeUp(deployment, tmp / "run", port_offset=OFFSET)
    try:
        up.wait_until("every service started", lambda: "Ctrl-C stops everything" in up.output())
        up.wait_until("the buyer buys", lambda: up.raw("bookbuyer")["bought"] >= 3)
        yield Bookstore(up, relays, tmp)
    finally:
        code = up.stop()
        for relay in relays.values():
            relay.close()
    assert code == 0, up.output()
    assert "Stopped: no process left." in up.output()
    assert up.descendants, "geode up had started no process?"
    assert up.left_behind() == []


def test_the_thief_steals_nothing_while_the_buyer_buys(bookstore: Bookstore) -> None:
    up = bookstore.up
    first = up.raw("bookbuyer")["bought"]
    up.wait_until("the buyer buys more", lambda: up.raw("bookbuyer")["bought"] > first)
    thief = up.raw("bookthief")
    assert thief["stolen"] == 0
    assert thief["refused"] > 0  # attested, connected, and refused by policy
    assert "policy_denied" in thief["last"]["refusal"]
    store = up.raw("bookstore")
    assert list(store["sold_to"]) == ["spiffe://bookstore.geode.local/service/bookbuyer"]
    warehouse = up.raw("bookwarehouse")
    assert warehouse["shipped"] > 0
    assert warehouse["storage"].startswith("Geode database")


def test_no_book_title_crosses_the_network_in_plaintext(bookstore: Bookstore) -> None:
    for name, relay in bookstore.relays.items():
        assert relay.connections > 0, f"nothing went through the {name} relay"
        assert len(relay.carried) > 1000, name
        for title in titles():
            assert title.encode() not in relay.carried, f"{title!r} in clear on the {name} hop"
    # The mesh hops are TLS from their first byte (a handshake record); the database speaks
    # MySQL's greeting first, then TLS (application data records follow).
    for name in ("bookstore", "bookwarehouse"):
        assert bookstore.relays[name].carried[:1] == b"\x16", name
    assert b"\x17\x03\x03" in bookstore.relays["database"].carried


def test_no_book_title_sits_in_plaintext_in_the_database_files(bookstore: Bookstore) -> None:
    datadir = bookstore.up.run_dir / "database"
    files = [p for p in datadir.rglob("*") if p.is_file()]
    assert len(files) > 10, "no datadir?"
    assert bookstore.up.raw("bookwarehouse")["shipped"] > 0  # titles were written
    for path in files:
        data = path.read_bytes()
        for title in titles():
            assert title.encode() not in data, f"{title!r} in clear in {path}"


def test_a_tampered_buyer_is_refused_activation(bookstore: Bookstore) -> None:
    """The buyer's bundle as geode up built it (its python3 locked), one line changed."""
    tampered = bookstore.tmp / "tampered-bookbuyer"
    shutil.copytree(bookstore.up.run_dir / "bundles" / "bookbuyer", tampered)
    app = tampered / "app.py"
    app.write_text(app.read_text().replace('"0.5"', '"0.05"', 1))  # one changed line
    run = bookstore.up.run_dir
    env = {
        **os.environ,
        "GEODE_PLATFORM_KEY": str(run / "keys" / "platform.key"),
        "GEODE_CONFIG_DIR": str(run / "config"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "geode", "run", "--service", "bookbuyer",
         "--coordinator", f"127.0.0.1:{14101 + OFFSET}", "--bundle", str(tampered),
         "--root-ca", str(bookstore.up.root_file), "--", "python3", "app.py"],
        cwd=tampered, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "measurement mismatch" in done.stderr


def test_a_thief_with_a_self_made_certificate_fails_the_handshake(bookstore: Bookstore) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GEODE_")},
        "BOOKSTORE_URL": f"https://localhost:{14001 + OFFSET}",
        "WAREHOUSE_URL": f"https://localhost:{14002 + OFFSET}",
        "THIEF_SECONDS": "3",
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "bookthief" / "app.py"), "--self-signed"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["stolen"] == 0
    assert counts["refused"] == 0  # no request got as far as the policy
    assert counts["errors"] == 0, counts  # every attempt ended in the TLS handshake
    assert counts["handshake_failures"] > 0
    # The same servers complete handshakes with mesh certificates (the attested thief is
    # refused by policy, in HTTP, in the test above): it is this certificate they refuse.


def test_the_manifest_set_pins_the_bundles_geode_up_built(bookstore: Bookstore) -> None:
    """Every service ran from a bundle geode up built, with its executables locked, and the
    manifest it set (and wrote for the user to read) pins those bundles' measurements."""
    run = bookstore.up.run_dir
    pinned = yaml.safe_load((run / "manifest.yaml").read_text())["packages"]
    for name in ("bookbuyer", "bookthief", "bookstore", "bookwarehouse", "database"):
        built = run / "bundles" / name
        measurement = measure_bundle(built).hex()
        assert pinned[name]["measurement"] == measurement, name
        assert f"pinned {name} {measurement[:16]}" in bookstore.up.output()
        assert not pinned[name].get("debug", False), name
        lock = json.loads((built / "geode.lock").read_text())["executables"]
        database = {"mariadbd", "mariadb"}  # mariadb-install-db is a script: not lockable
        assert set(lock) == (database if name == "database" else {"python3"}), name
    assert (run / "bundles" / "database" / "init.sql").is_file()  # measured with the bundle


def test_no_bookstore_package_is_debug() -> None:
    """Simulated evidence from geode run is not a debug enclave's: no package needs it."""
    manifest = yaml.safe_load((EXAMPLE / "manifest.yaml").read_text())
    assert manifest["packages"], "no packages?"
    for name, package in manifest["packages"].items():
        assert package.get("debug", False) is False, name
