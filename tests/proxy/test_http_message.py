"""The HTTP ingress's fast path: which heads it takes without the full parser, and that it
reads each of them as llhttp does (``simple_request``, ``simple_response_length``)."""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.proxy._http_gate import _normalise, normal_target
from geode.proxy._http_message import Request, simple_request, simple_response_length

PEER = b"X-Geode-Peer: spiffe://t.local/service/a\r\n\r\n"
LIMIT = 64 * 1024


def test_a_plain_get_is_taken_and_reaches_the_app_as_sent_with_the_peer() -> None:
    head = b"GET /books?id=3 HTTP/1.1\r\nHost: store\r\nAccept:  */*  \r\n\r\n"
    request = simple_request(head, LIMIT)
    assert request is not None
    assert (request.method, bytes(request.url), request.done) == ("GET", b"/books?id=3", True)
    assert request.replayable
    assert b"".join(request.head_for_app(PEER)) == head[:-2] + PEER


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",  # a body may follow
        b"GET /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHTTP2-Settings: AAA\r\n\r\n",
        b"GET /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET /x HTTP/1.1\r\nx-geode-peer: spiffe://t.local/service/admin\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX_Geode_Peer: spiffe://t.local/service/admin\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",  # keep-alive rules differ
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n",  # its response has no body
        b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        b"GET http://a/x HTTP/1.1\r\n\r\n",  # absolute form
        b"GET  /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
        b"GET /x HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET /x HTTP/1.1\r\nHost: a\rb\r\n\r\n",  # bare CR in a value
        b"GET /x HTTP/1.1\r\nHost: a\x00\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\n",  # not complete
        b"GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n",  # two: the queue orders them
        b"GET /x HTTP/1.1\r\n\r\nxyz",  # something follows
        b"GET /\x7f HTTP/1.1\r\n\r\n",
    ],
)
def test_anything_but_a_simple_head_goes_to_the_full_parser(head: bytes) -> None:
    assert simple_request(head, LIMIT) is None


def test_a_head_over_the_limit_goes_to_the_full_parser() -> None:
    head = b"GET /x HTTP/1.1\r\nA: " + b"a" * 100 + b"\r\n\r\n"
    assert simple_request(head, len(head)) is not None
    assert simple_request(head, len(head) - 1) is None


class _Parsed:
    """What llhttp reads of a request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = 0
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


_TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abzABZ", min_size=1, max_size=12)
_VALUE_BYTES = st.sampled_from(
    [b"a", b"Z", b"0", b" ", b"\t", b"\x80", b"\xff", b'"', b"(", b",", b";", b"=", b"~", b"\x7f"]
    + [b"a"] * 12
)


_TARGET_BYTES = st.sampled_from(
    [
        b"a",
        b"/",
        b"?",
        b"=",
        b"&",
        b"%",
        b"2",
        b"e",
        b".",
        b";",
        b"#",
        b"\\",
        b"~",
        b"\x80",
        b"\x7f",
    ]
)


@st.composite
def _heads(draw: Any) -> bytes:
    """Mostly heads the fast path takes, with the characters and fields at its edges."""
    method = draw(st.sampled_from([b"GET", b"GET", b"OPTIONS", b"DELETE", b"POST", b"HEAD"]))
    target = b"/" + b"".join(draw(st.lists(_TARGET_BYTES, max_size=16)))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    lines = [b"%s %s HTTP/%s\r\n" % (method, target, version)]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(_TOKEN, st.sampled_from(["Host", "Content-Length", "TE"]))).encode()
        value = b"".join(draw(st.lists(_VALUE_BYTES, max_size=10)))
        lines.append(b"%s:%s\r\n" % (name, value))
    return b"".join(lines) + b"\r\n"


@settings(max_examples=600, deadline=None)
@given(_heads())
def test_a_head_the_fast_path_takes_is_read_the_same_by_llhttp(head: bytes) -> None:
    request = simple_request(head, LIMIT)
    if request is None:
        return
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(head)  # raises if llhttp refuses it
    assert parsed.complete == 1
    assert parsed.body == b""
    assert parser.get_method().decode() == request.method
    assert parser.get_http_version() == "1.1"
    assert parser.should_keep_alive()
    assert not parser.should_upgrade()
    assert parsed.url == bytes(request.url)
    names = {name.lower() for name, _ in parsed.headers}
    assert not names & {b"content-length", b"transfer-encoding", b"connection", b"upgrade"}


@st.composite
def _responses(draw: Any) -> bytes:
    """Mostly responses with one Content-Length, among fields at the fast path's edges; the
    body as long, shorter (more to come) or longer (bytes past the end)."""
    status = draw(st.sampled_from([b"200", b"200", b"204", b"304", b"404", b"101", b"503"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    length = draw(st.integers(0, 20))
    fields = [
        b"%s:%s\r\n" % (draw(_TOKEN).encode(), b"".join(draw(st.lists(_VALUE_BYTES, max_size=8))))
        for _ in range(draw(st.integers(0, 3)))
    ]
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    b"content-length : 3\r\n",
                    b"Content-Length: 7\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"Proxy-Connection: close\r\n",
                    b"Connection: keep-alive\r\n",
                ]
            ),
            max_size=1,
        )
    )
    length_field = [] if draw(st.integers(0, 9)) == 0 else [b"Content-Length: %d\r\n" % length]
    fields = draw(st.permutations(fields + extra + length_field))
    body = b"x" * draw(st.sampled_from([length, length, max(length - 3, 0), length + 2]))
    return b"HTTP/%s %s Fine\r\n" % (version, status) + b"".join(fields) + b"\r\n" + body


class _ParsedResponse(_Parsed):
    parser: httptools.HttpResponseParser
    keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.keep_alive = self.parser.should_keep_alive()  # as HttpApp reads it


@settings(max_examples=600, deadline=None)
@given(_responses())
def test_a_response_the_fast_path_takes_is_read_the_same_by_llhttp(response: bytes) -> None:
    length = simple_response_length(response, Request(method="GET", head_done=True, done=True))
    if length is None:
        return
    whole = response.ljust(length, b"x")[:length]  # the rest of the body as it would come
    parsed = _ParsedResponse()
    parsed.parser = httptools.HttpResponseParser(parsed)
    parsed.parser.feed_data(whole)  # raises if llhttp refuses it
    assert parsed.complete == 1
    assert len(parsed.body) == length - (response.index(b"\r\n\r\n") + 4)
    assert parsed.keep_alive


def _response_for(method: str = "GET") -> Request:
    return Request(method=method, head_done=True, done=True)


@pytest.mark.parametrize(
    ("response", "length"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", 43),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length:0\r\n\r\n", 44),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", 43),  # the rest is still to come
        (b"HTTP/1.1 200 OK\r\nContent-Length-X: 9\r\nContent-Length: 1\r\n\r\n1", 60),
    ],
)
def test_a_simple_response_gives_its_whole_length(response: bytes, length: int) -> None:
    assert simple_response_length(response, _response_for()) == length


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",  # no length
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length : 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length : 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1234567890123456\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        # llhttp reads Proxy-Connection as Connection: the app would close.
        b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n",  # the head is not complete
    ],
)
def test_other_responses_go_to_the_full_parser(response: bytes) -> None:
    assert simple_response_length(response, _response_for()) is None


def test_a_response_to_head_or_to_an_upgrade_goes_to_the_full_parser() -> None:
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    assert simple_response_length(response, _response_for("HEAD")) is None
    upgrade = _response_for()
    upgrade.may_upgrade = True
    assert simple_response_length(response + b"hello", upgrade) is None


def test_the_cached_normal_form_is_the_normal_form() -> None:
    for url in (b"/a/b?x", b"/a/%2e%2e/b", b"/a\\b", b"*", b"/" + b"x" * 300, b"//" + b"x" * 300):
        assert normal_target(url) == _normalise(url)
