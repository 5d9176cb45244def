"""SPIFFE identities: ``spiffe://<trust-domain>/service/<name>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from geode.errors import PKIError

__all__ = ["SpiffeId"]

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A validated SPIFFE id; hashable, compares by value."""

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise PKIError(f"invalid SPIFFE trust domain {self.trust_domain!r}")
        segments = self.path.split("/")
        if not self.path.startswith("/") or not all(
            _SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments[1:]
        ):
            raise PKIError(f"invalid SPIFFE path {self.path!r}")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith("spiffe://"):
            raise PKIError(f"not a SPIFFE id: {uri!r}")
        rest = uri[len("spiffe://") :]
        domain, slash, path = rest.partition("/")
        if not slash:
            raise PKIError(f"SPIFFE id without a path: {uri!r}")
        return cls(domain, "/" + path)

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeId:
        return cls(trust_domain, f"/service/{service}")

    @property
    def service(self) -> str | None:
        """The service name for ``/service/<name>`` ids, else ``None``."""
        parts = self.path.split("/")
        return parts[2] if len(parts) == 3 and parts[1] == "service" else None

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"
