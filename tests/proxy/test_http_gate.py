"""The HTTP ingress's policy decision on a request head (``HttpGate``), apart from any
connection: what is let through, and the status and body of each refusal."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from geode.manifest import HttpRule, MeshConfig, MeshPolicy, MeshRule
from geode.pki import SpiffeId
from geode.proxy import PolicyEngine
from geode.proxy._http_gate import HttpGate, NormalTarget, Refusal, normal_target
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
        (b"/books/%2e%2E;x/admin", []),
        (b"/books/%2Fadmin", []),
        (b"/books/%zz", []),
        (b"*", []),
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


@pytest.mark.parametrize(
    ("url", "path", "target"),
    [
        # Already normal: judged and forwarded as sent.
        (b"/", "/", None),
        (b"/books/1?x=%2F&y=/../", "/books/1", None),
        (b"/books/", "/books/", None),
        (b"/.well-known/x;p=1", "/.well-known/x;p=1", None),
        (b"/a/.b/..c/...", "/a/.b/..c/...", None),
        (b"/%C3%A9/%3B", "/\u00e9/;", None),
        (b"/a|b{c}", "/a|b{c}", None),
        (b"*", "*", None),
        # Unreserved escapes decoded, the others upper-cased.
        (b"/%62ooks/%7e%2D%5f%2e", "/books/~-_.", b"/books/~-_."),
        (b"/a%3b%c3%a9?q=%2f", "/a;\u00e9", b"/a%3B%C3%A9?q=%2f"),
        # Runs of "/" merged.
        (b"//books//1///", "/books/1/", b"/books/1/"),
        # Dot segments removed (RFC 3986 5.2.4), after the unreserved escapes are decoded.
        (b"/a/./b/../c", "/a/c", b"/a/c"),
        (b"/a/b/..", "/a/", b"/a/"),
        (b"/a/b/.", "/a/b/", b"/a/b/"),
        (b"/..", "/", b"/"),
        (b"/../../a", "/a", b"/a"),
        (b"/a/%2e%2E/b/%2e", "/b/", b"/b/"),
        (b"/a//../b", "/b", b"/b"),
        (b"/a/.%2e?../x", "/", b"/?../x"),
        # Absolute-form: judged by its path, forwarded in origin-form.
        (b"http://store/books/1?x", "/books/1", b"/books/1?x"),
        (b"HTTPS://u@store:8443", "/", b"/"),
        (b"http://store?x", "/", b"/?x"),
        (b"http://[::1]:80//a/../b", "/b", b"/b"),
    ],
)
def test_the_normal_target(url: bytes, path: str, target: bytes | None) -> None:
    assert normal_target(url) == NormalTarget(path, target)
    # Normal is a fixed point: the app gets a target that would not change again.
    assert normal_target(target or url) == NormalTarget(path, None)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (b"/a#b", "a '#' in the request target"),
        (b"/a?b#c", "a '#' in the request target"),
        (b"/a%zz", "an invalid percent-escape in the path"),
        (b"/a%4", "an invalid percent-escape in the path"),
        (b"/a%", "an invalid percent-escape in the path"),
        (b"/a%2F..", "an encoded / or \\ in the path"),
        (b"/a%2f", "an encoded / or \\ in the path"),
        (b"/a%5C", "an encoded / or \\ in the path"),
        (b"/a\\b", "a backslash in the path"),
        (b"/a%00", "an encoded control character in the path"),
        (b"/a%1F", "an encoded control character in the path"),
        (b"/a%7f", "an encoded control character in the path"),
        (b"/a/..;/b", "a dot segment with parameters in the path"),
        (b"/a/.;/b", "a dot segment with parameters in the path"),
        (b"/a/..;x=1", "a dot segment with parameters in the path"),
        (b"/a/%2e%2e;/b", "a dot segment with parameters in the path"),
        (b"/a/..%3B/b", "a dot segment with parameters in the path"),
        (b"/a b", "a character that no path may hold"),
        (b"/a\xc3\xa9", "a character that no path may hold"),
        (b"books", "neither an origin-form nor an absolute-form request target"),
        (b"ftp://store/books", "neither an origin-form nor an absolute-form request target"),
        (b"store:443", "neither an origin-form nor an absolute-form request target"),
        (b'http://store"x/books', "an invalid authority in the request target"),
    ],
)
def test_targets_that_are_refused(url: bytes, reason: str) -> None:
    assert normal_target(url) == reason


def test_judge_gives_the_app_the_normal_target(gate: HttpGate) -> None:
    taken = simple_request(b"GET //books/./1?x=/../ HTTP/1.1\r\nHost: s\r\n\r\n", 1024)
    assert taken is not None
    assert gate.judge(BUYER, taken) is None
    assert taken.app_target == b"/books/1?x=/../"
    peer = b"X-Geode-Peer: p\r\n\r\n"
    assert b"".join(taken.head_for_app(peer)) == (
        b"GET /books/1?x=/../ HTTP/1.1\r\nHost: s\r\n" + peer
    )
    parsed = request("GET", b"http://store/books/%2e/1", [(b"Host", b"s")])
    parsed.version = "1.0"
    assert gate.judge(BUYER, parsed) is None
    assert b"".join(parsed.head_for_app(peer)) == b"GET /books/1 HTTP/1.0\r\nHost: s\r\n" + peer
    # What is denied is denied as the path it stands for.
    denied = gate.judge(BUYER, request("GET", b"/books/../admin"))
    assert denied is not None
    assert denied.payload["reason"] == "no rule allows GET /admin"


def test_a_normal_target_goes_to_the_app_as_it_came(gate: HttpGate) -> None:
    head = b"GET /books/1?q=%2f HTTP/1.1\r\nHost: s\r\n\r\n"
    taken = simple_request(head, 1024)
    assert taken is not None
    assert gate.judge(BUYER, taken) is None
    assert taken.app_target is None
    assert taken.head_for_app(b"P\r\n\r\n") == [head[:-2] + b"P\r\n\r\n"]


def test_the_asterisk_is_for_options_only(gate: HttpGate) -> None:
    refusal = gate.judge(BUYER, request("OPTIONS", b"*"))
    assert refusal is not None
    assert (refusal.status, refusal.payload["reason"]) == (403, "no rule allows OPTIONS *")
    refusal = gate.judge(BUYER, request("GET", b"*"))
    assert refusal == Refusal(
        400, {"error": "bad_request", "reason": "the target * is for OPTIONS only"}
    )
