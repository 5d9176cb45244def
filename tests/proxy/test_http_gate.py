"""The HTTP ingress's policy decision on a request head (``HttpGate``), apart from any
connection: what is let through, and the status and body of each refusal."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from geode.manifest import HttpRule, MeshConfig, MeshPolicy, MeshRule
from geode.pki import SpiffeId
from geode.proxy import PolicyEngine
from geode.proxy._http_gate import HttpGate, Refusal
from geode.proxy._http_message import Request, simple_request

DOMAIN = "g.local"
BUYER = SpiffeId.for_service(DOMAIN, "buyer")
THIEF = SpiffeId.for_service(DOMAIN, "thief")


@pytest.fixture
def gate() -> HttpGate:
    mesh = MeshConfig(
        trust_domain=DOMAIN,
        service="store",
        spiffe_id=str(SpiffeId.for_service(DOMAIN, "store")),
        policy=MeshPolicy(
            mode="strict",
            rules=[
                MeshRule(
                    name="buy",
                    sources=[str(BUYER)],
                    http=[HttpRule(methods=["GET", "CONNECT"], path="^/books(/.*)?$")],
                )
            ],
        ),
    )
    return HttpGate(PolicyEngine.for_mesh(mesh, registry=CollectorRegistry()), 8443)


def request(method: str, url: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(url=bytearray(url), method=method, headers=headers or [], head_done=True)


def test_an_allowed_request_passes_as_none(gate: HttpGate) -> None:
    taken = simple_request(b"GET /books/1?x=2 HTTP/1.1\r\nHost: s\r\n\r\n", 1024)
    assert taken is not None
    assert gate.judge(BUYER, taken) is None
    assert gate.judge(BUYER, request("GET", b"/books/%31")) is None


def test_a_denied_request_gets_403_with_the_peer_and_the_reason(gate: HttpGate) -> None:
    refusal = gate.judge(THIEF, request("GET", b"/books"))
    assert refusal == Refusal(
        403,
        {"error": "policy_denied", "peer": str(THIEF), "reason": "no rule allows GET /books"},
    )
    anonymous = gate.judge(None, request("GET", b"/books"))
    assert anonymous is not None
    assert (anonymous.status, anonymous.payload["peer"]) == (403, None)


def test_connect_is_never_proxied_whatever_the_policy(gate: HttpGate) -> None:
    refusal = gate.judge(BUYER, request("CONNECT", b"/books"))
    assert refusal is not None
    assert (refusal.status, refusal.payload["error"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        (b"/books/..;/admin", []),
        (b"/books\\..\\admin", []),
        (b"/books#x", []),
        (b"/books", [(b"Upgrade", b"h2c")]),
        (b"/books", [(b"HTTP2-Settings", b"AAAA")]),
    ],
)
def test_what_the_app_might_read_otherwise_gets_400_and_is_logged(
    gate: HttpGate,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="geode.proxy"):
        refusal = gate.judge(BUYER, request("GET", url, headers))
    assert refusal is not None
    assert (refusal.status, refusal.payload["error"]) == (400, "bad_request")
    assert any("ingress port 8443: 400" in r.getMessage() for r in caplog.records)
