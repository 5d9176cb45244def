"""Each service's mesh view: inbound rules as SPIFFE ids, transparent-TLS routes and ports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from geode.errors import ManifestError
from geode.manifest import load_manifest

M = "ab" * 32


def manifest(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "trust_domain": "m.local",
        "packages": {"app": {"tee": "simulated", "measurement": M}},
        "services": {
            "store": {"package": "app", "dns_names": ["store"], "tls": ["store-in", "to-db"]},
            "buyer": {"package": "app", "tls": ["to-store"]},
            "db": {"package": "app", "dns_names": ["db"]},
        },
        "tls": {
            "store-in": {"incoming": [{"port": 14001}]},
            "to-store": {"outgoing": [{"host": "store", "port": 14001}]},
            "to-db": {"outgoing": [{"host": "localhost", "port": 3306, "service": "db"}]},
        },
        "policies": {
            "rules": [
                {
                    "name": "buy",
                    "destination": "store",
                    "sources": ["buyer"],
                    "http": [{"methods": ["GET"], "path": "^/buy$"}],
                },
                {
                    "name": "sql",
                    "destination": "db",
                    "sources": ["store"],
                    "tcp": [{"ports": [3306]}],
                },
            ]
        },
    }
    data.update(extra)
    return data


def test_mesh_views() -> None:
    mesh = load_manifest(json.dumps(manifest()).encode()).mesh
    store = mesh["store"]
    assert store.spiffe_id == "spiffe://m.local/service/store"
    assert [r.name for r in store.policy.rules] == ["buy"]
    assert store.policy.rules[0].sources == ["spiffe://m.local/service/buyer"]
    assert [(i.port, i.app_port, i.protocol) for i in store.ingress] == [(14001, 24001, "http")]
    assert [(e.host, e.local_port, e.peers) for e in store.egress] == [
        ("localhost", 23306, ["spiffe://m.local/service/db"])
    ]
    buyer = mesh["buyer"]
    assert buyer.policy.rules == []
    assert buyer.egress[0].peers == ["spiffe://m.local/service/store"]  # found by DNS name
    assert [r.name for r in mesh["db"].policy.rules] == ["sql"]


def test_colliding_ports_are_refused() -> None:
    data = manifest()
    data["tls"]["store-in"]["incoming"].append({"port": 24001})  # store's app port
    with pytest.raises(ManifestError, match="port 24001 is already used"):
        load_manifest(json.dumps(data).encode())


def test_high_ports_need_explicit_companions() -> None:
    data = manifest()
    data["tls"]["store-in"]["incoming"] = [{"port": 60000}]
    with pytest.raises(ManifestError, match="needs an explicit app_port"):
        load_manifest(json.dumps(data).encode())
    data["tls"]["store-in"]["incoming"] = [{"port": 60000, "app_port": 8080}]
    assert load_manifest(json.dumps(data).encode()).mesh["store"].ingress[0].app_port == 8080


def test_egress_to_an_unknown_service_is_refused() -> None:
    data = manifest()
    data["tls"]["to-db"]["outgoing"][0]["service"] = "nope"
    with pytest.raises(ManifestError, match="unknown service 'nope'"):
        load_manifest(json.dumps(data).encode())


def test_an_app_that_reads_every_body_is_said_so_in_its_route() -> None:
    data = manifest()
    assert not load_manifest(json.dumps(data).encode()).mesh["store"].ingress[0].app_reads_bodies
    data["tls"]["store-in"]["incoming"][0]["app_reads_bodies"] = True
    assert load_manifest(json.dumps(data).encode()).mesh["store"].ingress[0].app_reads_bodies
    data["tls"]["store-in"]["incoming"][0]["app_reads_bodies"] = "sometimes"
    with pytest.raises(ManifestError, match="app_reads_bodies"):
        load_manifest(json.dumps(data).encode())
