"""The differential corpus: raw requests that try to make an app see what the ingress's policy
did not judge (smuggled requests, forged identity and forwarding headers, paths the app resolves
differently, ambiguous framing), each tagged with its class: the payloads of ``framing`` and
``routing``, and some of them again split at several byte boundaries.

Every request a payload means to send carries ``X-Req: <payload id>.<n>`` and is listed in
``Payload.intended`` with its method and target; a request hidden inside another (a body, a
chunk, a header the app might read differently) carries ``X-Req: <payload id>.inner`` and is
never in ``intended``: no app may ever see it. Inner requests ask for what the policy denies.

The policy they are sent under is ``policy(client)`` (service ``server``): ``client`` may GET,
HEAD and OPTIONS ``/files/...``, GET any path but ``/secret.txt`` and ``/admin[/...]`` (a rule
that denies by regex), POST ``/upload`` and DELETE ``/files/tmp/...``; ``other`` may do nothing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from geode.manifest import HttpRule, MeshPolicy, MeshRule
from tests.proxy.support import framing, routing
from tests.proxy.support.wire import Expect, Intended, Make, Writer

__all__ = ["PAYLOADS", "Payload", "counts", "policy"]


def policy(client: str) -> MeshPolicy:
    return MeshPolicy(
        rules=[
            MeshRule(
                name="files",
                sources=[client],
                http=[HttpRule(methods=["GET", "HEAD", "OPTIONS"], path="/files/.*")],
            ),
            MeshRule(
                name="pages",
                sources=[client],
                http=[HttpRule(methods=["GET"], path=r"/(?!secret\.txt$|admin(?:/.*)?$).*")],
            ),
            MeshRule(
                name="upload", sources=[client], http=[HttpRule(methods=["POST"], path="/upload")]
            ),
            MeshRule(
                name="trash",
                sources=[client],
                http=[HttpRule(methods=["DELETE"], path="/files/tmp/.*")],
            ),
        ]
    )


@dataclass
class Payload:
    pid: str
    cls: str
    note: str
    pieces: list[bytes]  # sent one after another, a short pause between them
    intended: list[Intended]
    who: str = "client"
    must_echo: frozenset[str] = frozenset()  # ids the app must answer (see Expect.echo)
    refuse: frozenset[str] = frozenset()  # ids the ingress must refuse with 400

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


# Payloads also sent split at several byte boundaries: (class, note) of the source.
_SPLITS = [
    ("pipeline", "allowed then denied"),
    ("body-unread", "GET /files/a + body"),
    ("cl.te", "CL then TE"),
    ("te.cl", "TE.CL short"),
    ("te-two-fields", "TE identity then TE chunked"),
    ("baseline", "POST upload"),
    ("peer-forgery", "X-Geode-Peer"),
    ("baseline", "chunked POST"),
]


def _split_points(data: bytes) -> Iterator[tuple[str, list[int]]]:
    head_end = data.find(b"\r\n\r\n")
    line_end = data.find(b"\r\n")
    yield "after 1 byte", [1]
    yield "mid CRLF of the request line", [line_end + 1]
    yield "mid blank line", [head_end + 3]
    yield "before body", [head_end + 4]
    yield "every 13 bytes", list(range(13, min(len(data), 13 * 9), 13))


def _build() -> list[Payload]:
    payloads: list[Payload] = []
    by_note: dict[tuple[str, str], tuple[Make, Expect]] = {}
    for cls, note, make, expect in itertools.chain(routing.specs(), framing.specs()):
        by_note[(cls, note)] = (make, expect)
        payloads.append(_payload(len(payloads), cls, note, make, expect, None))
    for key in _SPLITS:
        make, expect = by_note[key]
        whole = _payload(0, *key, make, expect, None).data
        for where, points in _split_points(whole):
            note = f"{key[1]}, split {where}"
            payloads.append(_payload(len(payloads), "split", note, make, expect, points))
    return payloads


def _payload(
    n: int, cls: str, note: str, make: Make, expect: Expect, points: list[int] | None
) -> Payload:
    writer = Writer(f"p{n:03d}")
    made = make(writer)
    data = made if isinstance(made, bytes) else b"".join(made)
    pieces = [data]
    if points:
        cuts = [0, *sorted(p for p in points if 0 < p < len(data)), len(data)]
        pieces = [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    rids = [i.rid for i in writer.intended]
    echo = {"all": rids, "first": rids[:1]}.get(expect.echo, [])
    return Payload(
        pid=writer.pid,
        cls=cls,
        note=note,
        pieces=pieces,
        intended=writer.intended,
        who=expect.who,
        must_echo=frozenset(echo),
        refuse=frozenset(rids[k - 1] for k in expect.refuse),
    )


PAYLOADS = _build()


def counts() -> dict[str, int]:
    """How many payloads there are of each class."""
    return dict(Counter(p.cls for p in PAYLOADS))
