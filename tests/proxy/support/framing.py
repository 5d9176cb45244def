"""Corpus payloads about framing: where one request ends and the next begins (CL.TE, TE.CL,
obfuscated and repeated Transfer-Encoding, Content-Length variants, obsolete folding, bare LF
and CR, control bytes, pipelines, bodies on methods without body semantics, Expect, Upgrade,
HTTP versions). A request hidden where one reader might find it is an ``inner`` one."""

from __future__ import annotations

from collections.abc import Iterator

from tests.proxy.support.wire import (
    ANY,
    ECHO_FIRST,
    REFUSED,
    Spec,
    Writer,
    chunk,
    chunked,
)

__all__ = ["specs"]


def specs() -> Iterator[Spec]:
    for source in (_smuggling, _line_endings, _pipelines, _bodies, _versions):
        yield from source()


def _smuggling() -> Iterator[Spec]:
    te = "Transfer-Encoding: chunked"
    # CL.TE: the ingress frames by one header, an app perhaps by the other.
    for name, fields in (
        ("CL then TE", ["Content-Length: {n}", te]),
        ("TE then CL", [te, "Content-Length: {n}"]),
        ("CL 0 and TE", ["Content-Length: 0", te]),
        ("CL and TE on GET", ["Content-Length: {n}", te]),
    ):
        method, target = ("GET", "/files/a") if "GET" in name else ("POST", "/upload")

        def cl_te(b: Writer, fields: list[str] = fields, m: str = method, t: str = target) -> bytes:
            body = b"0\r\n\r\n" + b.inner()
            hs = [f.format(n=len(body)) for f in fields]
            return b.req(m, t, *hs, body=body)

        yield "cl.te", name, cl_te, ANY

    # TE.CL: chunked for one reader, a short Content-Length for the other.
    for name, cl in (("TE.CL short", 4), ("TE.CL zero", 0), ("TE.CL long", 200)):

        def te_cl(b: Writer, cl: int = cl) -> bytes:
            inner = b.inner("GET", "/admin")
            body = chunk(inner) + b"0\r\n\r\n"
            return b.req("POST", "/upload", te, f"Content-Length: {cl}", body=body)

        yield "te.cl", name, te_cl, ANY

    # Obfuscated Transfer-Encoding, with a Content-Length that tells another story.
    obfuscated = [
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: CHUNKED",
        'Transfer-Encoding: "chunked"',
        "Transfer-Encoding: chunked\x0b",
        "Transfer-Encoding: chunk",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: gzip, chunked",
        " Transfer-Encoding: chunked",
        "X: y\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer_Encoding: chunked",
        "Transfer-Encoding:chunked",
    ]
    for i, field_ in enumerate(obfuscated):

        def obf(b: Writer, field_: str = field_) -> bytes:
            inner = b.inner()
            body = chunk(b"x") + b"0\r\n\r\n" + inner
            return b.req("POST", "/upload", field_, f"Content-Length: {len(body)}", body=body)

        def obf_nocl(b: Writer, field_: str = field_) -> bytes:
            inner = b.inner("DELETE", "/files/a")
            return b.req("POST", "/upload", field_, body=chunked(inner), length=False)

        yield "te-obfuscated", f"{field_!r} with CL", obf, ANY
        if i % 2 == 0:
            yield "te-obfuscated", f"{field_!r} alone", obf_nocl, ANY

    # Two Transfer-Encoding fields, identity then chunked: refused (ambiguous framing).
    for order in (("identity", "chunked"), ("chunked", "identity"), ("gzip", "chunked")):

        def two_te(b: Writer, order: tuple[str, str] = order) -> bytes:
            body = chunked(b.inner())
            fields = [f"Transfer-Encoding: {v}" for v in order]
            return b.req("POST", "/upload", *fields, body=body, length=False)

        refuse = REFUSED if order == ("identity", "chunked") else ANY
        yield "te-two-fields", f"TE {order[0]} then TE {order[1]}", two_te, refuse

    # Content-Length variants; the body holds an inner request after the declared length.
    lengths = ["5, 5", "5\r\nContent-Length: 5", "5\r\nContent-Length: 6", "+5", "-5", " 5",
               "005", "5 ", "0x5", "5.0", "99999999999999999999", "5\t", "1_0",
               "\uff15"]  # fmt: skip
    for value in lengths:

        def cl_var(b: Writer, value: str = value) -> bytes:
            return b.req("POST", "/upload", f"Content-Length: {value}", body=b"hello" + b.inner())

        yield "content-length", f"Content-Length {value!r}", cl_var, ANY


def _line_endings() -> Iterator[Spec]:
    # Obsolete line folding.
    folds = [
        ("X-Long: a\r\n b", "GET"),
        ("Transfer-Encoding: identity\r\n chunked", "POST"),
        ("Content-Length: 0\r\n 5", "POST"),
        ("X-Req-Extra: a\r\n\tb", "GET"),
        ("X-Geode-Peer: a\r\n spiffe://t.local/service/admin", "GET"),
    ]
    for field_, method in folds:

        def fold(b: Writer, field_: str = field_, m: str = method) -> bytes:
            target = "/upload" if m == "POST" else "/files/a"
            body = chunked(b.inner()) if m == "POST" else b""
            return b.req(m, target, field_, body=body, length=False)

        yield "obs-fold", repr(field_), fold, ANY

    # Bare LF and bare CR, in the head or between requests.
    def all_lf(b: Writer) -> bytes:
        return b.req("GET", "/files/a").replace(b"\r\n", b"\n") + b.inner().replace(b"\r\n", b"\n")

    def lf_in_value(b: Writer) -> bytes:
        return b.req(
            "GET", "/files/a", "X-A: b\nTransfer-Encoding: chunked", body=chunked(b.inner())
        )

    def lf_between(b: Writer) -> bytes:
        return b.req("GET", "/files/a")[:-2] + b"\n" + b.inner()

    def lf_line_end(b: Writer) -> bytes:
        r = b.req("POST", "/upload", "Content-Length: 0\nX: 1", body=b"")
        return r + b.inner()

    def lf_request_line(b: Writer) -> bytes:
        return b.req("GET", "/files/a", line=b"GET /files/a HTTP/1.1\n") + b.inner()

    def lf_chunk(b: Writer) -> bytes:
        body = b"5\nhello\n0\n\n" + b.inner()
        return b.req("POST", "/upload", "Transfer-Encoding: chunked", body=body)

    for f in (all_lf, lf_in_value, lf_between, lf_line_end, lf_request_line, lf_chunk):
        yield "bare-lf", f.__name__, f, ANY

    def cr_in_value(b: Writer) -> bytes:
        return b.req(
            "GET", "/files/a", "X-A: b\rTransfer-Encoding: chunked", body=chunked(b.inner())
        )

    def cr_line_end(b: Writer) -> bytes:
        return b.req("GET", "/files/a", "X-A: b\r\rContent-Length: 40") + b.inner()

    def cr_request_line(b: Writer) -> bytes:
        return b.req("GET", "/files/a", line=b"GET /files/a\rHTTP/1.1") + b.inner()

    def cr_in_target(b: Writer) -> bytes:
        return b.req("GET", "/files/a\r/secret.txt")

    for f in (cr_in_value, cr_line_end, cr_request_line, cr_in_target):
        yield "bare-cr", f.__name__, f, ANY

    controls = [
        ("NUL in value", "X-A: a\x00b"),
        ("NUL in name", "X-\x00A: b"),
        ("VT in value", "X-A: a\x0bb"),
        ("DEL in value", "X-A: a\x7fb"),
        ("high bytes in value", "X-A: \xe9\xff"),
        ("ESC in name", "X\x1bA: b"),
        ("empty name", ": b"),
        ("no colon", "X-A b"),
    ]
    for name, field_ in controls:

        def control(b: Writer, field_: str = field_) -> bytes:
            return b.req("GET", "/files/a", field_) + b.inner()

        yield "control", name, control, ANY
    for name, target in (("NUL in target", "/files/a\x00/../../secret.txt"),
                         ("SOH in target", "/files/\x01a"), ("space in target", "/files/a b"),
                         ("tab in target", "/files/a\t/secret.txt"),
                         ("high byte in target", "/files/\xe9")):  # fmt: skip
        yield "control", name, lambda b, t=target: b.req("GET", t), ANY


def _pipelines() -> Iterator[Spec]:
    yield (
        "pipeline",
        "allowed then denied",
        lambda b: b.req("GET", "/files/a") + b.req("GET", "/secret.txt"),
        ANY,
    )
    yield (
        "pipeline",
        "allowed, denied, allowed",
        lambda b: b.req("GET", "/files/a") + b.req("DELETE", "/files/a") + b.req("GET", "/files/b"),
        ANY,
    )
    yield (
        "pipeline",
        "POST then denied",
        lambda b: b.req("POST", "/upload", body=b"x" * 10) + b.req("GET", "/admin"),
        ANY,
    )
    yield (
        "pipeline",
        "HEAD then GET",
        lambda b: b.req("HEAD", "/files/a") + b.req("GET", "/files/b"),
        ECHO_FIRST,
    )
    yield (
        "pipeline",
        "twenty allowed",
        lambda b: b"".join(b.req("GET", f"/files/{i}") for i in range(20)),
        ECHO_FIRST,
    )
    yield (
        "pipeline",
        "allowed then garbage",
        lambda b: b.req("GET", "/files/a") + b"\x16\x03\x01garbage\r\n\r\n",
        ANY,
    )
    yield (
        "pipeline",
        "denied then allowed",
        lambda b: b.req("GET", "/secret.txt") + b.req("GET", "/files/a"),
        ANY,
    )
    yield (
        "pipeline",
        "chunked POST then denied",
        lambda b: (
            b.req("POST", "/upload", "Transfer-Encoding: chunked", body=chunked(b"abc"))
            + b.req("GET", "/secret.txt")
        ),
        ANY,
    )


def _bodies() -> Iterator[Spec]:
    # A body on a method without body semantics, holding a denied request (class 2).
    for method, target, inner in (
        ("GET", "/files/a", ("GET", "/secret.txt")),
        ("GET", "/index.html", ("GET", "/admin")),
        ("GET", "/files/a", ("DELETE", "/files/a")),
        ("HEAD", "/files/a", ("GET", "/secret.txt")),
        ("DELETE", "/files/tmp/x", ("GET", "/secret.txt")),
        ("OPTIONS", "/files/a", ("GET", "/admin")),
    ):

        def unread(
            b: Writer, m: str = method, t: str = target, i: tuple[str, str] = inner
        ) -> bytes:
            return b.req(m, t, body=b.inner(*i))

        yield "body-unread", f"{method} {target} + body", unread, ANY

    def get_chunked(b: Writer) -> bytes:
        return b.req("GET", "/files/a", "Transfer-Encoding: chunked", body=chunked(b.inner()))

    def get_body_then_allowed(b: Writer) -> bytes:
        return b.req("GET", "/files/a", body=b.inner()) + b.req("GET", "/files/b")

    def get_body_http10(b: Writer) -> bytes:
        return b.req("GET", "/files/a", body=b.inner(), version="HTTP/1.0")

    for f in (get_chunked, get_body_then_allowed, get_body_http10):
        yield "body-unread", f.__name__, f, ANY

    # Expect.
    yield (
        "expect",
        "100-continue POST",
        lambda b: b.req("POST", "/upload", "Expect: 100-continue", body=b"hello"),
        ANY,
    )
    yield (
        "expect",
        "100-continue GET with body",
        lambda b: b.req("GET", "/files/a", "Expect: 100-continue", body=b.inner()),
        ANY,
    )
    yield (
        "expect",
        "unknown expectation",
        lambda b: b.req("POST", "/upload", "Expect: teapot", body=b.inner()),
        ANY,
    )
    yield (
        "expect",
        "100-continue, no body sent",
        lambda b: [b.req("POST", "/upload", "Expect: 100-continue", "Content-Length: 40")],
        ANY,
    )

    # Upgrade.
    ws = ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]  # fmt: skip
    yield "upgrade", "websocket, no body", lambda b: b.req("GET", "/files/ws", *ws), ANY
    yield (
        "upgrade",
        "websocket with a body",
        lambda b: b.req("GET", "/files/ws", *ws, body=b.inner()),
        REFUSED,
    )
    yield (
        "upgrade",
        "upgrade with a chunked body",
        lambda b: b.req(
            "POST",
            "/upload",
            "Connection: Upgrade",
            "Upgrade: foo",
            "Transfer-Encoding: chunked",
            body=chunked(b.inner()),
        ),
        REFUSED,
    )
    yield (
        "upgrade",
        "upgrade foo with a body",
        lambda b: b.req("POST", "/upload", "Connection: Upgrade", "Upgrade: foo", body=b.inner()),
        REFUSED,
    )
    h2c = ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQ"]
    yield "upgrade", "h2c", lambda b: b.req("GET", "/files/a", *h2c), ANY
    yield (
        "upgrade",
        "Upgrade without Connection, then a denied request",
        lambda b: b.req("GET", "/files/a", "Upgrade: websocket") + b.req("GET", "/secret.txt"),
        ANY,
    )


def _versions() -> Iterator[Spec]:
    yield "version", "HTTP/1.0 keep-alive", lambda b: b.req(
        "GET", "/files/a", "Connection: keep-alive", version="HTTP/1.0") + b.req(
        "GET", "/secret.txt", version="HTTP/1.0"), ANY  # fmt: skip
    yield "version", "HTTP/1.0 with TE", lambda b: b.req(
        "POST", "/upload", "Transfer-Encoding: chunked", body=chunked(b.inner()),
        version="HTTP/1.0"), ANY  # fmt: skip
    yield "version", "HTTP/0.9", lambda b: b.raw("GET", "/files/a", b"GET /files/a\r\n"), ANY
    for version in ("HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "http/1.1", "HTTP/1.01", "HTTP/01.1"):
        yield (
            "version",
            version,
            lambda b, v=version: b.req("GET", "/files/a", version=v) + b.inner(),
            ANY,
        )
    yield "version", "h2 preface", lambda b: [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b.inner()], ANY
