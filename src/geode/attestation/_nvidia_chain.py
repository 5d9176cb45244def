"""The certificate chains of NVIDIA's attestation: a GPU's device chain up to the NVIDIA Device
Identity CA, a RIM's signing chain up to the CoRIM signing root. Each link is checked (validity at
``at``, the issuer a CA that signed it) up to a trusted root; the links are returned, for the
revocation check (``_nvidia_ocsp``) to know each certificate's issuer."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence

from cryptography import x509

from geode.attestation._evidence_certs import check_validity, common_name, verify_issued_by
from geode.attestation._roots import certificate_sha256
from geode.errors import EvidenceError

__all__ = ["Link", "verify_chain"]

Link = tuple[x509.Certificate, x509.Certificate]  # (certificate, its issuer)


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime.datetime,
    what: str = "GPU",
) -> list[Link]:
    """Each link of ``chain`` (leaf first) up to one of ``roots``; the links checked."""
    if not chain:
        raise EvidenceError(f"no certificate chain for the {what}", field="certs")
    trusted = {certificate_sha256(root): root for root in roots}
    links: list[Link] = []
    for position, cert in enumerate(chain):
        check_validity(cert, at, f"{what} certificate {position}")
        if certificate_sha256(cert) in trusted:
            if position == 0:
                raise EvidenceError("the chain holds only the root", field="certs")
            return links
        issuer = chain[position + 1] if position + 1 < len(chain) else None
        if issuer is None:
            issuer = next((root for root in roots if root.subject == cert.issuer), None)
            if issuer is None:
                raise EvidenceError(
                    f"the {what}'s chain does not end at the pinned NVIDIA root: certificate "
                    f"{position} ({common_name(cert)!r}) is issued by "
                    f"{cert.issuer.rfc4514_string()!r}",
                    field="certs",
                )
        verify_link(cert, issuer, position, what)
        links.append((cert, issuer))
        if issuer in roots:
            check_validity(issuer, at, common_name(issuer))
            return links
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@functools.lru_cache(maxsize=64)
def verify_link(cert: x509.Certificate, issuer: x509.Certificate, position: int, what: str) -> None:
    """``issuer`` is a CA and signed ``cert`` (remembered: a GPU's chain does not change)."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        constraints = None
    if constraints is None or not constraints.ca:
        raise EvidenceError(f"{common_name(issuer)!r} is not a CA certificate", field="certs")
    verify_issued_by(cert, issuer, f"{what} certificate {position} ({common_name(cert)!r})")
