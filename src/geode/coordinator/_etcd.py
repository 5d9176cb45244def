"""The etcd v3 store: the sealed state as one key in etcd, written by compare-and-swap.

It speaks etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``; keys and values base64, int64
fields as strings) with ``httpx``, which Geode already uses: no gRPC or protobuf dependency whose
generated code must match the installed protobuf runtime, and nothing the Python etcd clients'
maintenance state could hold back.

Every ``save`` is one transaction: *if the key's mod_revision is still the one this store last
read or wrote, put the new blob* (revision 0: the key does not exist yet). When another writer
came first the transaction fails and ``save`` raises ``StoreConflict``; nothing is written, so no
update is lost. The failure branch reads the key back: if it already holds our blob (a retried
request whose first attempt did land, on another endpoint after a timeout), the save succeeded.

Each running Coordinator also lists itself under ``<prefix>/members/<address>`` (where peers
reach its mesh API), so that a new one knows whom to ask for the cluster key (``_cluster``); the
listing goes when its store is closed. A killed Coordinator's entry stays until it starts again;
asking it fails and the next is asked.

The store implements ``Store`` and, being shared, is its own ``SharedStore``. Its audit log is in
etcd too (``EtcdAuditLog``); the data directory it is given keeps only this Coordinator's copy of
the cluster key, and is locked while the store is open as the directory store locks its own.

One Coordinator at a time is the *writer* of activations and renewals: it holds
``<prefix>/writer``, a key attached to an etcd lease that it keeps alive (``campaign``); when it
stops or dies, the lease expires and another takes the key. The others forward those requests
to it, so that the state's compare-and-swap rarely has two writers.

Endpoints are tried in turn, starting with the last one that answered; a transport error or a
server error (5xx) moves on to the next. Trying a transaction again is safe: it either did not
apply, or its failure branch finds our own blob. Errors never include the blob or the key's value.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geode.coordinator._audit import AuditLog, EtcdAuditLog
from geode.coordinator._store import DataDirectoryLock, SharedStore
from geode.errors import SealError, StoreConflict
from geode.protocol import etcd_client_context

__all__ = ["ETCD_MAX_BLOB", "EtcdSettings", "EtcdStore", "parse_etcd_url"]

# etcd's default --max-request-bytes is 1.5 MiB; the request also carries the key, base64 and
# JSON framing, so the blob must leave room for them.
ETCD_MAX_BLOB = 1024 * 1024
STATE_KEY = "state"
MEMBERS = "members/"
WRITER_KEY = "writer"


def parse_etcd_url(value: str) -> tuple[tuple[str, int], ...]:
    """``etcd://host:port[,host:port...]`` to its endpoints; ``ValueError`` with a reason."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme != "etcd" or not rest:
        raise ValueError(f"{value!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    endpoints = []
    for part in rest.split(","):
        host, colon, port = part.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r}: expected HOST:PORT with a port from 1 to 65535")
        endpoints.append((host, int(port)))
    return tuple(endpoints)


@dataclass(frozen=True)
class EtcdSettings:
    """Where the state lives in etcd and how to reach it. TLS when ``ca`` or a client
    certificate is given (``cert`` and ``key`` go together)."""

    endpoints: Sequence[tuple[str, int]]
    prefix: str = "/geode"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        if (self.cert is None) != (self.key is None):
            raise ValueError("an etcd client certificate needs both --etcd-cert and --etcd-key")

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def urls(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{_host(host)}:{port}" for host, port in self.endpoints]

    def ssl_context(self) -> ssl.SSLContext:
        """The client context for etcd: its CA (else the system's), our certificate if any."""
        identity = (self.cert, self.key) if self.cert is not None and self.key is not None else None
        try:
            context = etcd_client_context(self.ca, identity)
        except (OSError, ssl.SSLError) as exc:
            raise SealError(f"etcd TLS files cannot be loaded: {exc}") from None
        return context


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class EtcdStore:
    """The sealed state under ``<prefix>/state`` in etcd, saved by compare-and-swap on the
    revision this store last saw; ``data_dir``, when given, locked while the store is open."""

    def __init__(
        self,
        settings: EtcdSettings,
        transport: httpx.BaseTransport | None = None,
        *,
        data_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self._key = _b64(f"{settings.prefix.rstrip('/')}/{STATE_KEY}".encode())
        self._urls = settings.urls()
        self._current = 0  # index of the endpoint that answered last
        self._revision = 0  # mod_revision of the state as last read or written; 0: none yet
        self._lock = threading.Lock()  # one request at a time: the revision goes with it
        self._listed: set[str] = set()  # members this store registered: unlisted at close
        self.audit: AuditLog = EtcdAuditLog(self)
        self._data_dir = DataDirectoryLock(data_dir) if data_dir is not None else None
        try:
            verify: ssl.SSLContext | bool = settings.ssl_context() if settings.tls else False
            # ``transport``: tests stand in for etcd's answers that a healthy etcd does not give.
            self._client = httpx.Client(
                timeout=settings.timeout, verify=verify, transport=transport
            )
        except BaseException:
            self._unlock()
            raise

    @property
    def shared(self) -> SharedStore:
        return self

    @property
    def revision(self) -> int:
        """The mod_revision the next ``save`` expects (0: the key did not exist)."""
        return self._revision

    def rewind(self, revision: int) -> None:
        """Go back to expecting ``revision`` (a state read but not adopted: the next save must
        conflict rather than overwrite what was read)."""
        with self._lock:
            self._revision = revision

    def load(self) -> bytes | None:
        with self._lock:
            answer = self._post("/v3/kv/range", {"key": self._key})
            kvs = answer.get("kvs") or []
            if not kvs:
                self._revision = 0
                return None
            self._revision = int(kvs[0].get("mod_revision", 0))
            return base64.b64decode(kvs[0].get("value", ""))

    def moved_on(self) -> bool:
        """Whether the state's mod_revision in etcd differs from the one this store last read
        or wrote (a keys-only read: the blob does not travel)."""
        with self._lock:
            answer = self._post("/v3/kv/range", {"key": self._key, "keys_only": True})
            kvs = answer.get("kvs") or []
            return int(kvs[0].get("mod_revision", 0)) != self._revision if kvs else False

    def save(self, blob: bytes) -> None:
        if len(blob) > ETCD_MAX_BLOB:
            raise SealError(
                f"the sealed state is {len(blob)} bytes; the etcd store takes at most "
                f"{ETCD_MAX_BLOB} (etcd's request limit is 1.5 MiB by default)"
            )
        value = _b64(blob)
        with self._lock:
            answer = self._post(
                "/v3/kv/txn",
                {
                    "compare": [
                        {
                            "key": self._key,
                            "target": "MOD",
                            "result": "EQUAL",
                            "mod_revision": str(self._revision),
                        }
                    ],
                    "success": [{"request_put": {"key": self._key, "value": value}}],
                    "failure": [{"request_range": {"key": self._key}}],
                },
            )
            if answer.get("succeeded"):
                # The put is the transaction's only write, so the key's mod_revision is the
                # revision the transaction created.
                self._revision = int(answer["header"]["revision"])
                return
            kvs = _range_kvs(answer)
            if kvs and kvs[0].get("value") == value:  # an earlier attempt of this very save
                self._revision = int(kvs[0].get("mod_revision", 0))
                return
            found = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            raise StoreConflict(
                f"the shared state changed (revision {found}, this Coordinator had read "
                f"{self._revision}); the change was not saved, retry it"
            )

    def register(self, member: str, record: bytes) -> None:
        """List this Coordinator as ``member`` (its mesh API's HOST:PORT) with ``record``."""
        with self._lock:
            self._post(
                "/v3/kv/put", {"key": self._name_key(MEMBERS + member), "value": _b64(record)}
            )
            self._listed.add(member)

    def unregister(self, member: str) -> None:
        with self._lock:
            self._post("/v3/kv/deleterange", {"key": self._name_key(MEMBERS + member)})
            self._listed.discard(member)

    def members(self) -> dict[str, bytes]:
        """Every listed Coordinator: its name (HOST:PORT), its record."""
        return dict(self.under(MEMBERS))

    def grant(self, ttl: int) -> str:
        """A new lease of ``ttl`` seconds; its id."""
        with self._lock:
            return str(self._post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keep_alive(self, lease: str) -> bool:
        """Renew ``lease``; False when it has expired (etcd answers a TTL of 0 or none)."""
        with self._lock:
            answer = self._post("/v3/lease/keepalive", {"ID": lease})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0)) > 0

    def revoke(self, lease: str) -> None:
        """End ``lease`` now: the keys attached to it go (the writer key, at a clean stop)."""
        with self._lock:
            self._post("/v3/lease/revoke", {"ID": lease})

    def campaign(self, member: str, lease: str) -> str | None:
        """Take the writer key for ``member`` under ``lease`` unless someone holds it; the
        holder's name after the attempt (``None``: nobody, which a new attempt fixes)."""
        found = self.put_new(WRITER_KEY, member.encode(), lease=lease)
        if found is None:
            return member
        return found.decode(errors="replace") or None

    def put_new(self, name: str, value: bytes, lease: str | None = None) -> bytes | None:
        """Put ``<prefix>/<name>`` (attached to ``lease``, if given) unless it exists; ``None``
        when put, else the value there."""
        key = self._name_key(name)
        put: dict[str, str] = {"key": key, "value": _b64(value)}
        if lease is not None:
            put["lease"] = lease
        with self._lock:
            answer = self._post(
                "/v3/kv/txn",
                {
                    "compare": [
                        {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                    ],
                    "success": [{"request_put": put}],
                    "failure": [{"request_range": {"key": key}}],
                },
            )
        if answer.get("succeeded"):
            return None
        kvs = _range_kvs(answer)
        return base64.b64decode(kvs[0].get("value", "")) if kvs else b""

    def under(self, name: str) -> list[tuple[str, bytes]]:
        """Every key under ``<prefix>/<name>`` (a name ending in ``/``), in key order: its
        name after that, its value."""
        prefix = f"{self.settings.prefix.rstrip('/')}/{name}".encode()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        with self._lock:
            answer = self._post(
                "/v3/kv/range",
                {"key": _b64(prefix), "range_end": _b64(end), "sort_target": "KEY"},
            )
        return [
            (
                base64.b64decode(kv.get("key", ""))[len(prefix) :].decode(errors="replace"),
                base64.b64decode(kv.get("value", "")),
            )
            for kv in answer.get("kvs") or []
        ]

    def _name_key(self, name: str) -> str:
        return _b64(f"{self.settings.prefix.rstrip('/')}/{name}".encode())

    def close(self) -> None:
        """Unlist the members this store listed (best effort: a stale entry only costs a
        newcomer one failed request), then let go of etcd and the data directory."""
        try:
            for member in sorted(self._listed):
                with contextlib.suppress(SealError):
                    self.unregister(member)
            self._client.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._data_dir is not None:
            self._data_dir.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the endpoints in turn until one answers; its JSON answer."""
        failures = []
        for step in range(len(self._urls)):
            index = (self._current + step) % len(self._urls)
            url = self._urls[index]
            try:
                response = self._client.post(url + path, json=body)
            except httpx.TransportError as exc:
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                failures.append(f"{url}: HTTP {response.status_code}, not JSON")
                continue
            if response.status_code >= 500:  # e.g. a member cut off from the leader
                message = answer.get("message") or answer.get("error") or "no message"
                failures.append(f"{url}: HTTP {response.status_code}: {message}")
                continue
            self._current = index
            if response.status_code != 200 or "error" in answer:
                message = answer.get("message") or answer.get("error") or "no message"
                raise SealError(f"etcd {url}{path}: HTTP {response.status_code}: {message}")
            return answer
        raise SealError("no etcd endpoint answered: " + "; ".join(failures))


def _range_kvs(answer: dict[str, Any]) -> list[dict[str, Any]]:
    for response in answer.get("responses") or []:
        ranged = response.get("response_range")
        if ranged is not None:
            kvs: list[dict[str, Any]] = ranged.get("kvs") or []
            return kvs
    return []
