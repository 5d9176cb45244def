"""Reference values and the match of verified claims against them."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from geode.attestation._evidence import Claims
from geode.errors import ClaimsMismatch

__all__ = ["ReferenceValues", "match_claims"]


@dataclass(frozen=True)
class ReferenceValues:
    """What a package expects of its evidence (the manifest's ``packages.<name>``)."""

    tee: str
    measurement: str | None = None
    signer: str | None = None
    product_id: int | None = None
    min_svn: int | None = None
    debug: bool = False


def match_claims(claims: Claims, ref: ReferenceValues) -> None:
    """Raise ``ClaimsMismatch`` with a stable reason unless the claims satisfy ``ref``."""
    if claims.tee != ref.tee:
        raise ClaimsMismatch("tee mismatch", f"evidence is {claims.tee}, package wants {ref.tee}")
    if ref.measurement is not None and not hmac.compare_digest(
        claims.measurement, bytes.fromhex(ref.measurement)
    ):
        raise ClaimsMismatch("measurement mismatch", f"got {claims.measurement.hex()}")
    if ref.signer is not None:
        if not hmac.compare_digest(claims.signer, bytes.fromhex(ref.signer)):
            raise ClaimsMismatch("signer mismatch")
        if ref.product_id is not None and claims.product_id != ref.product_id:
            raise ClaimsMismatch("product id mismatch")
    if ref.min_svn is not None and claims.svn < ref.min_svn:
        raise ClaimsMismatch("security version too low", f"{claims.svn} < {ref.min_svn}")
    if claims.debug and not ref.debug:
        raise ClaimsMismatch("debug mode not allowed")
