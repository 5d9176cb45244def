"""What hardware evidence is checked against: vendor roots, collateral, extra certificates, time.

Production code uses ``TrustAnchors()``: the pinned vendor roots (``_roots``), no collateral
beyond what is given on the command line, the wall clock. Tests build anchors with their own
roots through this Python API; no flag or environment variable of a production command can, so
a host that controls the Coordinator's command line still cannot make it trust a forged chain.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509

__all__ = ["TrustAnchors", "utc_now"]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class TrustAnchors:
    """Per evidence kind: ``roots`` replacing the pinned vendor roots (tests only; empty: the
    pinned ones), ``collateral`` (Intel: TCB info, QE identity and CRLs as JSON; SNP: AMD's
    CRL), ``certs`` the evidence may lack (an SNP VCEK); and the ``clock`` they are checked at."""

    roots: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    certs: Mapping[str, bytes] = field(default_factory=dict)
    clock: Callable[[], datetime.datetime] = utc_now

    def with_roots(self, kind: str, roots: Sequence[x509.Certificate]) -> TrustAnchors:
        return dataclasses.replace(self, roots={**self.roots, kind: tuple(roots)})

    def with_collateral(self, kind: str, collateral: bytes) -> TrustAnchors:
        return dataclasses.replace(self, collateral={**self.collateral, kind: collateral})

    def with_certs(self, kind: str, certs: bytes) -> TrustAnchors:
        return dataclasses.replace(self, certs={**self.certs, kind: certs})

    def with_clock(self, clock: Callable[[], datetime.datetime]) -> TrustAnchors:
        return dataclasses.replace(self, clock=clock)
