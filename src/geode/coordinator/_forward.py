"""One writer among the Coordinators on one etcd store, and the forwarding of activations and
renewals to it.

Every activation and renewal changes the shared state, and every change is a compare-and-swap on
one etcd key: with several Coordinators writing at once, most saves lose and are decided again.
So one Coordinator at a time is the *writer*: it holds ``<prefix>/writer`` under an etcd lease
that it keeps alive (``SharedStore.campaign``). The others pass validated activation and renewal
requests on to it over its mesh API (TLS, verified against the deployment's root) and relay its
answer. Everything else (nonces, reads, the client API) each Coordinator serves itself.

When the writer cannot be reached, or answers that it is unavailable, the request is handled
where it arrived, with the compare-and-swap as the guard: a writer that dies costs latency, not
activations. Its lease then expires within ``ttl`` seconds and another Coordinator takes the key.
A forwarded request carries ``Geode-Forwarded-By`` and is never forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from starlette.requests import Request
from starlette.responses import Response

from geode.coordinator._store import SharedStore
from geode.errors import GeodeError, PKIError
from geode.pki import COORDINATOR_URI, load_certificate, uri_sans
from geode.protocol import coordinator_client_context

__all__ = ["FORWARDED_HEADER", "Forwarder", "Writer"]

log = logging.getLogger("geode.coordinator.writer")

FORWARDED_HEADER = "geode-forwarded-by"
FORWARD_TIMEOUT = 30.0


class Writer:
    """Which Coordinator writes activations and renewals: ``holder`` (HOST:PORT of its mesh
    API, as the Coordinators list themselves), kept current by ``run``."""

    def __init__(self, store: SharedStore, name: str, ttl: int = 3) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.holder: str | None = None
        self._lease: str | None = None
        self._lock = threading.Lock()  # an election under way in a thread, or the resignation
        self._resigned = False

    @property
    def is_self(self) -> bool:
        return self.holder == self.name

    def elect(self) -> None:
        """Keep this Coordinator's lease alive (a new one if it expired) and take the writer
        key if nobody holds it; learn who does."""
        with self._lock:
            if self._resigned:
                return
            if self._lease is None or not self.store.keep_alive(self._lease):
                self._lease = self.store.grant(self.ttl)
            before, self.holder = self.holder, self.store.campaign(self.name, self._lease)
        if self.holder != before:
            log.info("the writer of activations is now %s", self.holder or "nobody")

    def resign(self) -> None:
        """Give the key up at once (a clean stop), rather than after the lease's ``ttl``."""
        with self._lock:
            self._resigned = True
            if self._lease is not None:
                with contextlib.suppress(GeodeError):
                    self.store.revoke(self._lease)
                self._lease = None

    async def run(self) -> None:
        """Elect every third of ``ttl`` until cancelled; an unreachable etcd means nobody is
        known to write (each Coordinator then handles its own requests)."""
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.elect)
            except Exception as exc:  # an etcd answer of a shape not foreseen included
                self.holder = None
                self._lease = None  # a new one next time; this one expires by itself
                if not failing:
                    log.warning("no writer can be elected: %s", exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.ttl / 3)


class Forwarder:
    """``_api.Forward`` for a Coordinator that is not the writer."""

    def __init__(self, writer: Writer, root_pem: Callable[[], str]) -> None:
        self.writer = writer
        self._root_pem = root_pem
        self._client: httpx.AsyncClient | None = None
        self._client_root = ""
        self._root: x509.Certificate | None = None  # parsed once per root, not per request
        self._closing: asyncio.Task[None] | None = None

    def _http(self) -> httpx.AsyncClient:
        root = self._root_pem()
        if self._client is None or root != self._client_root:
            old = self._client
            self._root = load_certificate(root.encode())
            self._client = httpx.AsyncClient(
                verify=coordinator_client_context(self._root), timeout=FORWARD_TIMEOUT
            )
            self._client_root = root
            if old is not None:
                self._closing = asyncio.get_running_loop().create_task(old.aclose())
        return self._client

    async def __call__(self, request: Request, raw: bytes) -> Response | None:
        holder = self.writer.holder
        if holder is None or holder == self.writer.name or FORWARDED_HEADER in request.headers:
            return None
        try:
            answer = await self._http().post(
                f"https://{holder}{request.url.path}",
                content=raw,
                headers={"content-type": "application/json", FORWARDED_HEADER: self.writer.name},
            )
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            log.warning("the writer %s is unreachable (%s): handled here", holder, exc)
            return None
        if not self._is_coordinator(answer):
            # Its certificate chains to the root but is no Coordinator's (a service's leaf,
            # say, at an address someone wrote into etcd): its answer is not relayed.
            log.error("the writer %s is not a Coordinator of this deployment: handled here", holder)
            return None
        if answer.status_code >= 500:
            log.warning("the writer %s answered %d: handled here", holder, answer.status_code)
            return None
        return Response(answer.content, answer.status_code, media_type="application/json")

    def _is_coordinator(self, answer: httpx.Response) -> bool:
        """Whether the TLS peer of ``answer`` showed a Coordinator's certificate: issued by the
        root itself (services' leaves come from the mesh CA) for ``urn:geode:coordinator``."""
        stream = answer.extensions.get("network_stream")
        tls = stream.get_extra_info("ssl_object") if stream is not None else None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if not der or self._root is None:
            return False
        try:
            peer = load_certificate(der)
            peer.verify_directly_issued_by(self._root)
        except (PKIError, ValueError, TypeError, InvalidSignature):
            return False
        return COORDINATOR_URI in uri_sans(peer)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
