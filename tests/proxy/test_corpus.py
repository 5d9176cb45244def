"""The differential corpus: every payload of ``tests.proxy.support.corpus`` sent through a real
HTTP ingress (``TransparentProxy`` over real TLS) to real app servers (``support.apps``: uvicorn
with httptools and with h11, ``http.server`` in HTTP/1.1 mode, gunicorn with Flask), each
recording what it sees.

What must hold, per payload and app server:

- on the app's side, every request it saw is allowed by the policy for the true peer (on the
  method and on both the path it routes on and the path it serves), carries ``X-Geode-Peer``
  equal to the client's SPIFFE id and nothing else, no header name with ``_``, no forwarding or
  method-override header the client forged (``X-Forwarded-For`` may only be the client's
  address, ``X-Forwarded-Proto`` only ``https``), reports the client as 127.0.0.1 and, where it
  reports a scheme, ``https``; and is never a request hidden inside another;
- on the client's side, every response is either the ingress's own (a JSON ``error``) or the
  app's echo of a request the client sent, in order, for the method and (normalised) path it
  asked for; plain allowed requests are answered by the app; ambiguous framing is refused 400.

One test per app server runs all payloads (16 at a time) and lists every bypass at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from prometheus_client import CollectorRegistry

from geode.manifest import IngressRoute, MeshConfig
from geode.proxy import PolicyEngine, ProxyLimits, TransparentProxy
from tests.proxy.support.apps import KINDS, AppServer, Seen, served, target_path
from tests.proxy.support.corpus import PAYLOADS, Payload, counts, policy
from tests.proxy.support.mesh import DOMAIN, LoopThread, Pki, spiffe
from tests.support import REPO, free_port, wait_for_port

pytestmark = pytest.mark.attack

CONCURRENCY = 16
# Once every request has its answer, how long the client still listens for stray bytes.
GRACE = 0.2
PROXY_STATUSES = {400, 403, 405, 408, 411, 413, 417, 431, 501, 502, 505}
# Headers an app takes as routing input. The ingress may set its own (X-Forwarded-For and
# X-Forwarded-Proto only to these values); what the client forged (every forged value in the
# corpus holds one of FORGED) must never reach the app.
OWN_VALUES = {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "https"}
FORGED = ("203.0.113.", "forged", "/admin", "DELETE", "6666", "off")
FORWARDING = {
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-prefix", "x-forwarded-port", "x-forwarded-ssl", "x-forwarded-protocol",
    "x-forwarded-server", "x-real-ip", "x-original-url", "x-rewrite-url",
    "x-http-method-override", "x-method-override", "x-http-method",
}  # fmt: skip


@dataclass
class Bench:
    ports: dict[str, int]  # app kind -> ingress port
    apps: dict[str, AppServer]
    contexts: dict[str, ssl.SSLContext]  # identity -> client TLS context


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = tmp_path_factory.mktemp("corpus")
    apps = {kind: AppServer(kind, free_port(), tmp / f"{kind}.jsonl", REPO) for kind in KINDS}
    loop = LoopThread("asyncio")
    try:
        for app in apps.values():
            wait_for_port(app.port, app.process, app.output)
        ports = {kind: free_port() for kind in KINDS}
        pki = Pki(tmp)
        mesh = MeshConfig(
            trust_domain=DOMAIN,
            service="server",
            spiffe_id=str(spiffe("server")),
            policy=policy(str(spiffe("client"))),
            ingress=[
                IngressRoute(port=ports[k], app_port=apps[k].port, protocol="http") for k in KINDS
            ],
        )
        # Short, so that a payload the ingress waits on ends soon; not so short that a busy
        # machine turns an answer into a 408.
        limits = ProxyLimits(
            header_timeout=1.0, idle_timeout=1.0, inactivity_timeout=2.0, connect_timeout=2.0
        )
        proxy = TransparentProxy(
            pki.credentials("server", mesh), listen_host="127.0.0.1", limits=limits
        )
        loop.run(proxy.start())
        contexts = {who: pki.client_context(pki.credentials(who)) for who in ("client", "other")}
        yield Bench(ports, apps, contexts)
        loop.run(proxy.close())
    finally:
        loop.close()
        for app in apps.values():
            app.stop()


# --- sending -----------------------------------------------------------------------------------


async def send(payload: Payload, port: int, context: ssl.SSLContext) -> tuple[bytes, str]:
    """Send the payload's pieces (a pause between them), read until the ingress closes."""
    received = b""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"),
            5,
        )
    except (OSError, TimeoutError) as exc:
        return b"", f"connect: {exc!r}"
    try:
        try:
            for i, piece in enumerate(payload.pieces):
                if i:
                    await asyncio.sleep(0.02)
                writer.write(piece)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass  # the ingress closed after answering: what it answered is still to be read
        deadline = time.monotonic() + 8
        while True:
            wait = deadline - time.monotonic()
            got, rest = responses(received)
            if len(got) >= len(payload.intended) and not rest:
                wait = min(wait, GRACE)  # all answered: only a stray byte more could come
            try:
                data = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                return received, ""
            if not data:
                return received, ""
            received += data
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return received, repr(exc)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)


async def send_all(bench: Bench, kind: str) -> dict[str, tuple[bytes, str]]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(payload: Payload) -> tuple[bytes, str]:
        async with limit:
            return await send(payload, bench.ports[kind], bench.contexts[payload.who])

    results = await asyncio.gather(*(one(p) for p in PAYLOADS))
    return {p.pid: r for p, r in zip(PAYLOADS, results, strict=True)}


# --- reading what the client got ---------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def own(self) -> bool:
        """Whether this is the ingress's own answer (an ``error`` in JSON)."""
        if self.status not in PROXY_STATUSES or "x-echo-req" in self.headers:
            return False
        try:
            return "error" in json.loads(self.body)
        except ValueError:
            return False

    def show(self) -> str:
        if "x-echo-req" in self.headers:
            h = self.headers
            echo = f"{h['x-echo-req']} {h.get('x-echo-method')} {h.get('x-echo-path')}"
            return f"{self.status} echo {echo}"
        return f"{self.status} {self.body[:80]!r}"


def responses(data: bytes) -> tuple[list[Response], bytes]:
    """The responses in ``data``, and what follows them that is no response."""
    found: list[Response] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if not data.startswith(b"HTTP/1.") or end < 0:
            return found, data
        lines = data[:end].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError):
            return found, data
        headers = {
            n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])
        }
        data = data[end + 4 :]
        if 100 <= status < 200 and status != 101:
            continue
        if status == 101:
            found.append(Response(status, headers, b""))
            return found, b""
        body = b""
        if headers.get("x-echo-method") == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while (line_end := data.find(b"\r\n")) >= 0:
                size = int(data[:line_end].split(b";")[0] or b"0", 16)
                body += data[line_end + 2 : line_end + 2 + size]
                data = data[line_end + 4 + size :]
                if size == 0:
                    break
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body, data = data[:n], data[n:]
        else:
            body, data = data, b""
        found.append(Response(status, headers, body))
    return found, b""


# --- the checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bypass:
    kind: str
    payload: Payload
    detail: str

    def line(self) -> str:
        p = self.payload
        return f"  {p.pid} [{p.cls}] {p.note!r}: {self.detail}"


def check_app(seen: Seen, payload: Payload | None, engine: PolicyEngine) -> list[tuple[str, str]]:
    """What is wrong with one request an app saw (``payload``: the one it came from)."""
    who = payload.who if payload is not None else "client"
    peer = spiffe(who)
    found: list[tuple[str, str]] = []
    what = f"{seen.method} {seen.target!r} (served {seen.served!r})"
    if seen.req is not None and seen.req.endswith(".inner"):
        found.append(("app saw a smuggled request", what))
    for path in {seen.route, seen.served}:
        if not engine.authorize_http(peer, seen.method, path):
            found.append(("app saw a request the policy denies", f"{what} as {who}"))
            break
    if seen.values("x-geode-peer") != [str(peer)]:
        found.append(("app saw a wrong X-Geode-Peer", f"{seen.values('x-geode-peer')}"))
    if names := sorted({n for n, _ in seen.headers if "_" in n}):
        found.append(("app saw a header name with '_'", f"{names} on {what}"))
    for name, value in seen.headers:
        lowered = name.lower().replace("_", "-")
        own = OWN_VALUES.get(lowered, value)
        if lowered in FORWARDING and (value != own or any(f in value for f in FORGED)):
            found.append(("app saw a forged forwarding header", f"{name}: {value}"))
    if seen.client != "127.0.0.1":
        found.append(("app reports a forged client address", seen.client))
    if seen.scheme not in (None, "https", "wss"):
        found.append(("app reports a scheme other than https", seen.scheme))
    if payload is not None and seen.req in payload.refuse:
        found.append(("app saw ambiguous framing the ingress must refuse", what))
    return found


def check_client(payload: Payload, data: bytes) -> list[tuple[str, str]]:
    """What is wrong with what the client got."""
    found: list[tuple[str, str]] = []
    got, rest = responses(data)
    order = {i.rid: n for n, i in enumerate(payload.intended)}
    last = -1
    echoed: set[str] = set()
    for response in got:
        if response.own():
            continue
        rid = response.headers.get("x-echo-req")
        if rid is None:
            found.append(("client got a response that is neither the ingress's nor an echo",
                          response.show()))  # fmt: skip
            continue
        if rid not in order:
            found.append(("client got the answer to a request it never sent", response.show()))
            continue
        intended = payload.intended[order[rid]]
        if order[rid] <= last:
            found.append(("client got an answer out of order", response.show()))
        last = max(last, order[rid])
        echoed.add(rid)
        want = served(target_path(intended.target))
        path = unquote(response.headers.get("x-echo-path", ""))
        method = response.headers.get("x-echo-method")
        if (method, path) != (intended.method, want):
            found.append(
                ("the app answered another method or path than the one asked for",
                 f"asked {intended.method} {want!r}, answered {response.show()}")
            )  # fmt: skip
    if rest:
        found.append(("client got bytes that are no response", repr(rest[:80])))
    if missing := sorted(payload.must_echo - echoed):
        shown = [r.show() for r in got]
        found.append(("an allowed request was not answered by the app", f"{missing}: {shown}"))
    for rid in sorted(payload.refuse):
        own = [r.status for r in got if r.own()]
        if rid in echoed or 400 not in own:
            shown = [r.show() for r in got]
            found.append(("ambiguous framing not refused with 400", f"{rid}: {shown}"))
    return found


def settle(app: AppServer) -> list[Seen]:
    """What the app recorded, once it has stopped recording."""
    size, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 0.3:
        now = app.log.stat().st_size if app.log.exists() else 0
        if now != size:
            size, quiet_since = now, time.monotonic()
        time.sleep(0.05)
    return app.seen()


def judge(kind: str, results: dict[str, tuple[bytes, str]], seen: list[Seen]) -> list[Bypass]:
    by_pid = {p.pid: p for p in PAYLOADS}
    engine = PolicyEngine(
        policy(str(spiffe("client"))), "server", trust_domain=DOMAIN, registry=CollectorRegistry()
    )
    # Requests without a usable X-Req are put down to the payload whose app connection they
    # came on (the ingress opens one per client connection).
    by_port = {s.port: s.req.split(".")[0] for s in seen if s.req and s.req.split(".")[0] in by_pid}
    bypasses: list[Bypass] = []
    unknown = Payload("?", "?", "unattributed", [], [])
    for s in seen:
        pid = (s.req or "").split(".")[0]
        payload = by_pid.get(pid) or by_pid.get(by_port.get(s.port, ""))
        for what, detail in check_app(s, payload, engine):
            bypasses.append(Bypass(what, payload or unknown, detail))
    for payload in PAYLOADS:
        data, _ = results[payload.pid]
        for what, detail in check_client(payload, data):
            bypasses.append(Bypass(what, payload, detail))
    return bypasses


def report(kind: str, bypasses: list[Bypass], seconds: float, seen: int) -> str:
    groups: dict[str, list[Bypass]] = defaultdict(list)
    for b in bypasses:
        groups[b.kind].append(b)
    pids = {b.payload.pid for b in bypasses}
    lines = [
        f"{kind}: {len(PAYLOADS)} payloads in {seconds:.1f} s, the app saw {seen} requests; "
        f"{len(bypasses)} bypasses in {len(pids)} payloads"
    ]
    for what, items in sorted(groups.items()):
        classes = Counter(b.payload.cls for b in items)
        lines.append(f"- {what}: {len(items)} ({dict(classes)})")
        same: dict[str, list[Bypass]] = defaultdict(list)
        for b in items:
            same[b.detail].append(b)
        for detail, alike in same.items():
            if len(alike) > 3:  # the same for many (every request, say): one line
                shown = " ".join(sorted({b.payload.pid for b in alike}))
                lines.append(f"  {detail!r} in {len(alike)}: {shown}")
            else:
                lines += [b.line() for b in alike]
    return "\n".join(lines)


def test_the_corpus_has_every_class() -> None:
    found = counts()
    print("\ncorpus:", len(PAYLOADS), "payloads;", found)
    assert len(PAYLOADS) >= 150
    assert {"cl.te", "te.cl", "te-obfuscated", "pipeline", "split", "peer-forgery",
            "underscore", "forwarding", "body-unread", "path", "upgrade"} <= set(found)  # fmt: skip
    assert len({p.pid for p in PAYLOADS}) == len(PAYLOADS)


@pytest.mark.parametrize("kind", KINDS)
def test_no_app_sees_what_the_policy_did_not_judge(bench: Bench, kind: str) -> None:
    started = time.monotonic()
    app = bench.apps[kind]
    results = asyncio.run(send_all(bench, kind))
    seen = settle(app)
    seconds = time.monotonic() - started
    bypasses = judge(kind, results, seen)
    text = report(kind, bypasses, seconds, len(seen))
    print("\n" + text)
    (Path(app.log).with_suffix(".report")).write_text(text)
    echoes = sum(len(responses(data)[0]) for data, _ in results.values())
    assert echoes, f"{kind} answered nothing: {app.output.read_text()[-2000:]}"
    assert seen, f"{kind} recorded nothing: {app.output.read_text()[-2000:]}"
    assert not bypasses, text
