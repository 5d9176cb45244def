"""Corpus payloads about what the app routes on: plain requests (the baseline), forged identity
and forwarding headers, header names with underscores, paths an app may resolve differently
from the policy, odd methods, and a peer the policy knows nothing of."""

from __future__ import annotations

from collections.abc import Iterator

from tests.proxy.support.wire import (
    ANY,
    ECHO_ALL,
    ECHO_FIRST,
    OTHER,
    Spec,
    chunk,
    chunked,
)

__all__ = ["specs"]


def specs() -> Iterator[Spec]:
    for source in (_baseline, _headers, _paths, _methods, _identity):
        yield from source()


def _baseline() -> Iterator[Spec]:
    yield "baseline", "GET allowed", lambda b: b.req("GET", "/files/a"), ECHO_ALL
    yield "baseline", "GET page", lambda b: b.req("GET", "/index.html"), ECHO_ALL
    yield (
        "baseline",
        "POST upload",
        lambda b: b.req("POST", "/upload", body=b"hello"),
        ECHO_ALL,
    )
    yield "baseline", "HEAD allowed", lambda b: b.req("HEAD", "/files/a"), ECHO_ALL
    yield (
        "baseline",
        "DELETE allowed",
        lambda b: b.req("DELETE", "/files/tmp/x"),
        ECHO_ALL,
    )
    yield "baseline", "OPTIONS allowed", lambda b: b.req("OPTIONS", "/files/a"), ECHO_ALL
    yield (
        "baseline",
        "GET with query",
        lambda b: b.req("GET", "/files/a?x=1&y=/admin"),
        ECHO_ALL,
    )
    yield "baseline", "denied path", lambda b: b.req("GET", "/secret.txt"), ANY
    yield "baseline", "denied /admin", lambda b: b.req("GET", "/admin"), ANY
    yield "baseline", "denied method", lambda b: b.req("DELETE", "/files/a"), ANY
    yield (
        "baseline",
        "three pipelined",
        lambda b: b.req("GET", "/files/1") + b.req("GET", "/files/2") + b.req("HEAD", "/files/3"),
        ECHO_FIRST,
    )
    yield (
        "baseline",
        "chunked POST",
        lambda b: b.req("POST", "/upload", "Transfer-Encoding: chunked", body=chunked(b"hello")),
        ANY,
    )
    yield (
        "baseline",
        "HTTP/1.0 GET",
        lambda b: b.req("GET", "/files/a", version="HTTP/1.0"),
        ECHO_ALL,
    )


def _headers() -> Iterator[Spec]:
    forged_peer = "spiffe://t.local/service/admin"
    for name in ("X-Geode-Peer", "X_Geode_Peer", "x-geode-peer", "X-GEODE-PEER", "X-Geode_Peer",
                 "X_GEODE_PEER"):  # fmt: skip
        yield (
            "peer-forgery",
            name,
            lambda b, n=name: b.req("GET", "/files/a", f"{n}: {forged_peer}"),
            ANY,
        )
    yield (
        "peer-forgery",
        "two forged",
        lambda b: b.req(
            "GET", "/files/a", f"X-Geode-Peer: {forged_peer}", f"X-Geode-Peer: {forged_peer}"
        ),
        ANY,
    )
    yield (
        "peer-forgery",
        "in trailers",
        lambda b: b.req(
            "POST",
            "/upload",
            "Transfer-Encoding: chunked",
            "Trailer: X-Geode-Peer",
            body=chunk(b"abc")
            + f"0\r\nX-Geode-Peer: {forged_peer}\r\nX_Geode_Peer: x\r\n\r\n".encode(),
        ),
        ANY,
    )
    yield (
        "peer-forgery",
        "other forging client",
        lambda b: b.req("GET", "/files/a", "X-Geode-Peer: spiffe://t.local/service/client"),
        OTHER,
    )

    underscores = [
        ("SCRIPT_NAME", "/files/admin", "SCRIPT_NAME: /files"),
        ("SCRIPT_NAME slash", "/files/secret.txt", "SCRIPT_NAME: /files"),
        ("Script_Name", "/files/admin", "Script_Name: /files"),
        ("PATH_INFO", "/files/a", "PATH_INFO: /admin"),
        ("X_Forwarded_For", "/files/a", "X_Forwarded_For: 203.0.113.66"),
        ("X_Forwarded_Proto", "/files/a", "X_Forwarded_Proto: http"),
        ("X_Real_IP", "/files/a", "X_Real_IP: 203.0.113.66"),
        ("Content_Length", "/files/a", "Content_Length: 40"),
        ("X_Req", "/files/a", "X_Req: forged"),
    ]
    for name, target, field_ in underscores:
        yield "underscore", name, lambda b, t=target, f=field_: b.req("GET", t, f), ANY

    forwarding = [
        "X-Forwarded-For: 203.0.113.66",
        "X-Forwarded-For: 127.0.0.1, 203.0.113.66",
        "X-Forwarded-For: 203.0.113.66\r\nX-Forwarded-For: 203.0.113.67",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Proto: forged",
        "X-Forwarded-Host: forged.example",
        "X-Forwarded-Prefix: /forged",
        "X-Forwarded-Port: 6666",
        "X-Forwarded-Ssl: off",
        "X-Forwarded-Protocol: forged",
        "Forwarded: for=203.0.113.66;proto=http;host=forged.example",
        "X-Real-IP: 203.0.113.66",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-HTTP-Method-Override: DELETE",
        "X-Method-Override: DELETE",
        "x-forwarded-for: 203.0.113.66",
    ]
    for field_ in forwarding:
        yield (
            "forwarding",
            field_.split("\r\n")[0],
            lambda b, f=field_: b.req("GET", "/files/a", f),
            ECHO_ALL,  # the header goes (or is overwritten), the request passes
        )


_PATHS = [
    "//secret.txt", "/%2Fsecret.txt", "/%2fsecret.txt", "/%73ecret.txt", "/./secret.txt",
    "/a/../secret.txt", "/files/../secret.txt", "/%2e%2e/secret.txt", "/files/%2e%2e/secret.txt",
    "/files/..%2fsecret.txt", "/files/%2e%2e%2fsecret.txt", "/\\secret.txt",
    "/files\\..\\secret.txt", "/%5csecret.txt", "/files/..%5csecret.txt", "/..;/secret.txt",
    "/files/..;/secret.txt", "/;/secret.txt", "//admin", "///admin", "/./admin", "/admin/",
    "/files/./../admin", "/files//../admin", "/admin%2f", "/%61dmin", "/admin/%2e",
    "/secret.txt%00", "/secret.txt#x", "/files/a#/../../secret.txt", "/files/a?/../../secret.txt",
    "/%252e%252e/secret.txt", "/files/%2e/../../admin", "/.%2e/secret.txt", "/files/.%00./admin",
    "http://app/secret.txt", "http://app//secret.txt", "http://app/files/a", "https://app/admin",
    "http://app/files/../admin", "/files//a", "/files/./a", "/files/b/../a", "/files/%61",
    "//files/a", "/files/a/", "/.well-known/../secret.txt", "/files/%2e%2e",
]  # fmt: skip


def _paths() -> Iterator[Spec]:
    for target in _PATHS:
        yield "path", target, lambda b, t=target: b.req("GET", target=t), ANY
    yield "path", "OPTIONS *", lambda b: b.req("OPTIONS", "*"), ANY
    yield "path", "GET *", lambda b: b.req("GET", "*"), ANY
    yield "path", "empty target", lambda b: b.req("GET", "", line=b"GET  HTTP/1.1"), ANY
    yield "path", "no slash", lambda b: b.req("GET", "secret.txt"), ANY
    yield "path", "DELETE /files/tmp/../a", lambda b: b.req("DELETE", "/files/tmp/../a"), ANY
    yield (
        "path",
        "DELETE /files/tmp//../../a",
        lambda b: b.req("DELETE", "/files/tmp//../../a"),
        ANY,
    )


def _methods() -> Iterator[Spec]:
    lines = [
        ("lowercase", "get", "/files/a", b"get /files/a HTTP/1.1"),
        ("mixed case", "Get", "/files/a", b"Get /files/a HTTP/1.1"),
        ("two spaces", "GET", "/files/a", b"GET  /files/a HTTP/1.1"),
        ("two spaces before version", "GET", "/files/a", b"GET /files/a  HTTP/1.1"),
        ("tab", "GET", "/files/a", b"GET\t/files/a HTTP/1.1"),
        ("trailing space", "GET", "/files/a", b"GET /files/a HTTP/1.1 "),
        ("extra word", "GET", "/files/a", b"GET /files/a HTTP/1.1 /secret.txt"),
        ("leading space", "GET", "/files/a", b" GET /files/a HTTP/1.1"),
    ]
    for name, method, target, line in lines:
        yield "method", name, lambda b, m=method, t=target, ln=line: b.req(m, t, line=ln), ANY
    for method, target in (("FOO", "/files/a"), ("PROPFIND", "/files/a"), ("TRACE", "/files/a"),
                           ("PATCH", "/upload"), ("POST", "/files/a"), ("PUT", "/upload"),
                           ("CONNECT", "app:443"), ("PRI", "*")):  # fmt: skip
        yield "method", method, lambda b, m=method, t=target: b.req(m, t), ANY


def _identity() -> Iterator[Spec]:
    yield "identity", "other GET", lambda b: b.req("GET", "/files/a"), OTHER
    yield "identity", "other POST", lambda b: b.req("POST", "/upload", body=b"x"), OTHER
    yield (
        "identity",
        "other, pipelined",
        lambda b: b.req("GET", "/index.html") + b.req("GET", "/files/a"),
        OTHER,
    )
