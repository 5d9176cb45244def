"""The Coordinator's persistent state and its (plaintext, to-be-sealed) serialisation.

Keys and certificates are kept as PEM, secrets as bytes; the Coordinator parses what it needs once
at start. The serialised form is JSON and is only ever written sealed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from geode.errors import SealError

__all__ = ["STATE_VERSION", "CoordinatorState", "StoredSecret"]

STATE_VERSION = 1


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
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CoordinatorState:
        try:
            doc = json.loads(raw)
            if doc.get("version") != STATE_VERSION:
                raise SealError(f"unsupported state version {doc.get('version')!r}")
            return cls(
                root_key=doc["root_key"].encode(),
                root_certificate=doc["root_certificate"].encode(),
                mesh_key=doc["mesh_key"].encode(),
                mesh_certificate=doc["mesh_certificate"].encode(),
                created_at=doc["created_at"],
                manifest=_unb64(doc["manifest"]),
                manifest_signature=_unb64(doc["manifest_signature"]),
                secrets={n: StoredSecret.from_json(s) for n, s in doc["secrets"].items()},
                activations={str(k): int(v) for k, v in doc["activations"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SealError(f"state is unreadable: {type(exc).__name__}") from None


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)
