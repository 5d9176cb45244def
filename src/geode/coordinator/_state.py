"""The Coordinator's persistent state and its (plaintext, to-be-sealed) serialisation.

Keys and certificates are kept as PEM, secrets as bytes; the Coordinator parses what it needs once
at start. The serialised form is JSON and is only ever written sealed.

Version 2 added the latest certificate of each instance (``_latest``). A version 1 state is read
as one whose certificates handed out so far are untracked (see ``LatestCertificates``); it is
written back as version 2, which a Coordinator that knows only version 1 refuses to open rather
than drop the record.

Version 3 added governance: the log of manifest updates, the pending manifest update with its
acknowledgements, and the head of the audit log (with the entries not yet confirmed in the log
file). A version 1 or 2 state is read with an update log of one entry (the manifest set, if any),
no pending update and an empty audit log.

``cluster_key`` (optional in every version) is the key the data key is also wrapped under for
the Coordinators sharing this state (``_cluster``); a state without one gets one when opened.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from geode.coordinator._latest import LatestCertificates
from geode.errors import SealError

__all__ = [
    "CLUSTER_KEY_SIZE",
    "STATE_VERSION",
    "AuditHead",
    "CoordinatorState",
    "PendingUpdate",
    "StoredSecret",
    "UpdateRecord",
]

STATE_VERSION = 3
CLUSTER_KEY_SIZE = 32
_READABLE_VERSIONS = (1, 2, STATE_VERSION)


@dataclass
class StoredSecret:
    """A generated or user-set secret: raw bytes, or a certificate with its key (PEM). The
    secret parts stay out of ``repr`` (logs, tracebacks)."""

    value: bytes = field(default=b"", repr=False)
    certificate: bytes = b""
    private_key: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict[str, str]:
        out = {"value": base64.b64encode(self.value).decode()}
        if self.certificate:
            out["certificate"] = self.certificate.decode()
        if self.private_key:
            out["private_key"] = self.private_key.decode()
        return out

    @classmethod
    def from_json(cls, data: dict[str, str]) -> StoredSecret:
        return cls(
            value=base64.b64decode(data["value"]),
            certificate=data.get("certificate", "").encode(),
            private_key=data.get("private_key", "").encode(),
        )


@dataclass(frozen=True)
class UpdateRecord:
    """One entry of the manifest log: how the manifest in force came to be."""

    seq: int
    kind: str  # "set", "package" or "manifest"
    sha256: str
    time: str
    users: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()  # a package update: the packages it changed

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "sha256": self.sha256,
            "time": self.time,
            "users": list(self.users),
            "packages": list(self.packages),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpdateRecord:
        return cls(
            seq=int(data["seq"]),
            kind=str(data["kind"]),
            sha256=str(data["sha256"]),
            time=str(data["time"]),
            users=tuple(str(u) for u in data["users"]),
            packages=tuple(str(p) for p in data["packages"]),
        )


@dataclass(frozen=True)
class PendingUpdate:
    """A proposed manifest, waiting for acknowledgements from users with the manifest role."""

    manifest: bytes
    base_sha256: bytes  # the manifest in force when it was proposed
    proposer: str
    proposed_at: str
    acknowledgements: tuple[str, ...] = ()

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.manifest).digest()

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": base64.b64encode(self.manifest).decode(),
            "base_sha256": self.base_sha256.hex(),
            "proposer": self.proposer,
            "proposed_at": self.proposed_at,
            "acknowledgements": list(self.acknowledgements),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingUpdate:
        return cls(
            manifest=base64.b64decode(data["manifest"]),
            base_sha256=bytes.fromhex(data["base_sha256"]),
            proposer=str(data["proposer"]),
            proposed_at=str(data["proposed_at"]),
            acknowledgements=tuple(str(u) for u in data["acknowledgements"]),
        )


@dataclass(frozen=True)
class AuditHead:
    """The last audit entry's number and hash, and the entries (JSON lines) written since the
    log file last confirmed an append: after a crash they are appended on the next start."""

    seq: int = 0
    hash: bytes = bytes(32)
    unflushed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash.hex(), "unflushed": list(self.unflushed)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditHead:
        return cls(
            seq=int(data["seq"]),
            hash=bytes.fromhex(data["hash"]),
            unflushed=tuple(str(line) for line in data["unflushed"]),
        )


@dataclass
class CoordinatorState:
    """The Coordinator's sealed state; its keys stay out of ``repr`` (logs, tracebacks)."""

    root_key: bytes = field(repr=False)
    root_certificate: bytes
    mesh_key: bytes = field(repr=False)
    mesh_certificate: bytes
    created_at: str
    manifest: bytes | None = None
    manifest_signature: bytes | None = None
    secrets: dict[str, StoredSecret] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)
    latest_certificates: LatestCertificates = field(default_factory=LatestCertificates)
    updates: list[UpdateRecord] = field(default_factory=list)
    pending_update: PendingUpdate | None = None
    audit: AuditHead = field(default_factory=AuditHead)
    cluster_key: bytes | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": STATE_VERSION,
            "created_at": self.created_at,
            "root_key": self.root_key.decode(),
            "root_certificate": self.root_certificate.decode(),
            "mesh_key": self.mesh_key.decode(),
            "mesh_certificate": self.mesh_certificate.decode(),
            "manifest": _b64(self.manifest),
            "manifest_signature": _b64(self.manifest_signature),
            "secrets": {name: s.to_json() for name, s in self.secrets.items()},
            "activations": self.activations,
            "latest_certificates": self.latest_certificates.to_json(),
            "updates": [u.to_json() for u in self.updates],
            "pending_update": self.pending_update.to_json() if self.pending_update else None,
            "audit": self.audit.to_json(),
            "cluster_key": _b64(self.cluster_key),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, now: datetime.datetime) -> CoordinatorState:
        """Parse a serialised state; ``now`` dates the start of tracking for a version 1 state
        (whose instances' certificates were not recorded)."""
        try:
            doc = json.loads(raw)
            version = doc.get("version")
            if version not in _READABLE_VERSIONS:
                raise SealError(f"unsupported state version {version!r}")
            activations = {str(k): int(v) for k, v in doc["activations"].items()}
            if version == 1:
                untracked = now if doc["manifest"] is not None and activations else None
                latest = LatestCertificates(untracked_before=untracked)
            else:
                latest = LatestCertificates.from_json(doc["latest_certificates"])
            manifest = _unb64(doc["manifest"])
            if version >= 3:
                updates = [UpdateRecord.from_json(u) for u in doc["updates"]]
                pending = doc["pending_update"]
                pending_update = PendingUpdate.from_json(pending) if pending else None
                audit = AuditHead.from_json(doc["audit"])
            else:
                # Before version 3 the manifest was set once and never changed.
                updates = []
                if manifest is not None:
                    digest = hashlib.sha256(manifest).hexdigest()
                    updates = [UpdateRecord(1, "set", digest, doc["created_at"])]
                pending_update, audit = None, AuditHead()
            return cls(
                root_key=doc["root_key"].encode(),
                root_certificate=doc["root_certificate"].encode(),
                mesh_key=doc["mesh_key"].encode(),
                mesh_certificate=doc["mesh_certificate"].encode(),
                created_at=doc["created_at"],
                manifest=manifest,
                manifest_signature=_unb64(doc["manifest_signature"]),
                secrets={n: StoredSecret.from_json(s) for n, s in doc["secrets"].items()},
                activations=activations,
                latest_certificates=latest,
                updates=updates,
                pending_update=pending_update,
                audit=audit,
                cluster_key=_cluster_key(doc.get("cluster_key")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SealError(f"state is unreadable: {type(exc).__name__}") from None


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _cluster_key(value: str | None) -> bytes | None:
    key = _unb64(value)
    if key is not None and len(key) != CLUSTER_KEY_SIZE:
        raise ValueError(f"the cluster key is not {CLUSTER_KEY_SIZE} bytes")
    return key


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)
