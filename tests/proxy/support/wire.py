"""Requests written byte by byte for the differential corpus (``corpus``): a ``Writer`` numbers
the requests a payload means to send (``X-Req: <payload>.<n>``) and marks the ones it hides
inside them (``X-Req: <payload>.inner``); ``Expect`` says what must become of them beyond what
holds for every payload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "ANY",
    "ECHO_ALL",
    "ECHO_FIRST",
    "OTHER",
    "REFUSED",
    "Expect",
    "Intended",
    "Make",
    "Spec",
    "Writer",
    "chunk",
    "chunked",
]


@dataclass(frozen=True)
class Intended:
    """A request the client means to send."""

    rid: str
    method: str
    target: str


@dataclass(frozen=True)
class Expect:
    """What must become of a payload, beyond what holds for all: who sends it, whether the app
    must answer its requests (``"all"``, or ``"first"`` of a pipeline: an app may close the
    connection after any response, gunicorn's sync worker after every one), and which of them
    (1-based) the ingress must refuse with 400."""

    who: str = "client"
    echo: str = ""
    refuse: tuple[int, ...] = ()


ANY = Expect()
ECHO_ALL = Expect(echo="all")
ECHO_FIRST = Expect(echo="first")
OTHER = Expect(who="other")
REFUSED = Expect(refuse=(1,))


@dataclass
class Writer:
    """Writes the requests of one payload, numbering the ones it means to send."""

    pid: str
    intended: list[Intended] = field(default_factory=list)

    def req(
        self,
        method: str,
        target: str,
        *headers: str | bytes,
        body: bytes = b"",
        version: str = "HTTP/1.1",
        line: bytes | None = None,
        length: bool = True,
    ) -> bytes:
        """One request the client means to send (``X-Req`` numbered). A body gets a
        Content-Length unless ``length`` is false or a header frames it already."""
        rid = f"{self.pid}.{len(self.intended) + 1}"
        self.intended.append(Intended(rid, method, target))
        return self._write(method, target, rid, headers, body, version, line, length)

    def raw(self, method: str, target: str, data: bytes) -> bytes:
        """A request written by hand (it carries no ``X-Req``)."""
        self.intended.append(Intended(f"{self.pid}.{len(self.intended) + 1}", method, target))
        return data

    def inner(self, method: str = "GET", target: str = "/secret.txt", *headers: str) -> bytes:
        """A complete request the policy denies, hidden somewhere in the payload."""
        return self._write(
            method, target, f"{self.pid}.inner", headers, b"", "HTTP/1.1", None, True
        )

    def _write(
        self,
        method: str,
        target: str,
        rid: str,
        headers: tuple[str | bytes, ...],
        body: bytes,
        version: str,
        line: bytes | None,
        length: bool,
    ) -> bytes:
        fields = [_encode(h) if isinstance(h, str) else h for h in headers]
        framed = any(
            f.lower().startswith((b"content-length", b"transfer-encoding")) for f in fields
        )
        if body and length and not framed:
            fields.append(b"Content-Length: %d" % len(body))
        start = line if line is not None else f"{method} {target} {version}".encode("latin-1")
        head = [start, b"Host: app", b"X-Req: " + rid.encode(), *fields]
        return b"\r\n".join(head) + b"\r\n\r\n" + body


def _encode(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked(data: bytes) -> bytes:
    return (chunk(data) if data else b"") + b"0\r\n\r\n"


Make = Callable[[Writer], bytes | list[bytes]]
# (class, note, how to write it, what must become of it)
Spec = tuple[str, str, Make, Expect]
