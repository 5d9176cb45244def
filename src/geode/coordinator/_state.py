"""The Coordinator's persistent state and its (plaintext, to-be-sealed) serialisation.

Keys and certificates are kept as PEM, secrets as bytes; the Coordinator parses what it needs once
at start. The serialised form is JSON and is only ever written sealed.

Version 2 added the latest certificate of each instance (``_latest``). A version 1 state is read
as one whose certificates handed out so far are untracked (see ``LatestCertificates``); it is
written back as version 2, which a Coordinator that knows only version 1 refuses to open rather
than drop the record.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from geode.coordinator._latest import LatestCertificates
from geode.errors import SealError

__all__ = ["STATE_VERSION", "CoordinatorState", "StoredSecret"]

STATE_VERSION = 2
_READABLE_VERSIONS = (1, STATE_VERSION)


@dataclass
class StoredSecret:
    """A generated or user-set secret: raw bytes, or a certificate with its key (PEM)."""

    value: bytes = b""
    certificate: bytes = b""
    private_key: bytes = b""

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


@dataclass
class CoordinatorState:
    root_key: bytes
    root_certificate: bytes
    mesh_key: bytes
    mesh_certificate: bytes
    created_at: str
    manifest: bytes | None = None
    manifest_signature: bytes | None = None
    secrets: dict[str, StoredSecret] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)
    latest_certificates: LatestCertificates = field(default_factory=LatestCertificates)

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
            return cls(
                root_key=doc["root_key"].encode(),
                root_certificate=doc["root_certificate"].encode(),
                mesh_key=doc["mesh_key"].encode(),
                mesh_certificate=doc["mesh_certificate"].encode(),
                created_at=doc["created_at"],
                manifest=_unb64(doc["manifest"]),
                manifest_signature=_unb64(doc["manifest_signature"]),
                secrets={n: StoredSecret.from_json(s) for n, s in doc["secrets"].items()},
                activations=activations,
                latest_certificates=latest,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SealError(f"state is unreadable: {type(exc).__name__}") from None


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)
