"""The policy engine: strict and permissive modes, HTTP and TCP rules, counting."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from geode.manifest import HttpRule, MeshPolicy, MeshRule, TcpRule
from geode.pki import SpiffeId
from geode.proxy import PolicyEngine

DOMAIN = "p.geode.local"


def peer(name: str, domain: str = DOMAIN) -> SpiffeId:
    return SpiffeId.for_service(domain, name)


def engine(mode: str = "strict", registry: CollectorRegistry | None = None) -> PolicyEngine:
    policy = MeshPolicy(
        mode=mode,  # type: ignore[arg-type]
        rules=[
            MeshRule(
                name="buy",
                sources=[str(peer("buyer"))],
                http=[HttpRule(methods=["GET"], path="^/(books-bought|buy-a-book/new)$")],
            ),
            MeshRule(name="db", sources=[str(peer("store"))], tcp=[TcpRule(ports=[3306])]),
            MeshRule(name="admin", sources=[str(peer("admin"))]),
        ],
    )
    return PolicyEngine(
        policy, "bookstore", trust_domain=DOMAIN, registry=registry or CollectorRegistry()
    )


@pytest.mark.parametrize(
    ("source", "method", "path", "allowed"),
    [
        ("buyer", "GET", "/books-bought", True),
        ("buyer", "get", "/buy-a-book/new", True),
        # Callers pass the decoded path without its query; a "?" left in it (decoded %3F) is
        # part of the path, and must not cut it short.
        ("buyer", "GET", "/buy-a-book/new?/admin", False),
        ("buyer", "POST", "/books-bought", False),
        ("buyer", "GET", "/books-bought/extra", False),  # the regex matches the whole path
        ("buyer", "GET", "/x/books-bought", False),
        ("thief", "GET", "/books-bought", False),
        ("store", "GET", "/books-bought", False),  # a TCP rule grants no HTTP
        ("admin", "DELETE", "/anything", True),  # a rule with no matchers allows everything
    ],
)
def test_http_rules(source: str, method: str, path: str, allowed: bool) -> None:
    decision = engine().authorize_http(peer(source), method, path)
    assert bool(decision) is allowed, decision.reason


def test_tcp_rules() -> None:
    e = engine()
    assert e.authorize_tcp(peer("store"), 3306)
    assert not e.authorize_tcp(peer("store"), 3307)
    assert not e.authorize_tcp(peer("buyer"), 3306)  # an HTTP rule grants no TCP
    assert e.authorize_tcp(peer("admin"), 1)


def test_no_identity_or_another_trust_domain_is_denied_even_when_permissive() -> None:
    for mode in ("strict", "permissive"):
        e = engine(mode)
        assert not e.authorize_http(None, "GET", "/books-bought")
        assert not e.authorize_http(peer("buyer", "evil.local"), "GET", "/books-bought")
    assert engine("permissive").authorize_http(peer("thief"), "GET", "/anything")


def test_decisions_are_counted_and_denials_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    e = engine(registry=registry)
    e.authorize_http(peer("buyer"), "GET", "/books-bought")
    e.authorize_http(peer("thief"), "GET", "/books-bought")
    e.authorize_http(peer("thief"), "GET", "/books-bought")

    def count(source: str, decision: str) -> float | None:
        return registry.get_sample_value(
            "geode_policy_decisions_total",
            {"destination": "bookstore", "source": source, "decision": decision},
        )

    assert count("buyer", "allow") == 1
    assert count("thief", "deny") == 2
    denials = [r for r in caplog.records if r.name == "geode.policy"]
    assert len(denials) == 2
    assert "thief" in denials[0].getMessage()
    assert "buy,db,admin" in denials[0].getMessage()


def test_each_registry_counts_its_own_decisions() -> None:
    """Registries that come and go (each test, each reload) never share a counter, even when
    a new one lands where an old one was in memory."""
    for _ in range(50):
        registry = CollectorRegistry()
        engine(registry=registry).authorize_http(peer("buyer"), "GET", "/books-bought")
        allowed = registry.get_sample_value(
            "geode_policy_decisions_total",
            {"destination": "bookstore", "source": "buyer", "decision": "allow"},
        )
        assert allowed == 1


def test_a_remembered_decision_is_still_counted_and_stays_with_its_engine() -> None:
    registry = CollectorRegistry()
    e = engine(registry=registry)
    long_path = "/" + "a" * 300
    for _ in range(3):
        assert e.authorize_http(peer("buyer"), "GET", "/books-bought").rule == "buy"
        assert e.authorize_http(peer("admin"), "GET", long_path).rule == "admin"
        # Remembered for buyer's GET only: another method, source or path is decided afresh.
        assert not e.authorize_http(peer("buyer"), "POST", "/books-bought")
        assert not e.authorize_http(peer("thief"), "GET", "/books-bought")
    allowed = registry.get_sample_value(
        "geode_policy_decisions_total",
        {"destination": "bookstore", "source": "buyer", "decision": "allow"},
    )
    assert allowed == 3
    # A new policy (a new engine) does not inherit what the old one allowed.
    narrower = PolicyEngine(
        MeshPolicy(mode="strict", rules=[]), "bookstore", registry=CollectorRegistry()
    )
    assert not narrower.authorize_http(peer("buyer"), "GET", "/books-bought")
