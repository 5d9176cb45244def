"""Reference values and the match of verified claims against them."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from geode.attestation._evidence import Claims
from geode.errors import ClaimsMismatch

__all__ = ["SNP_TCB_COMPONENTS", "ReferenceValues", "match_claims"]

# Components of an SEV-SNP TCB, in the order reasons name them.
SNP_TCB_COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")


@dataclass(frozen=True)
class ReferenceValues:
    """What a package expects of its evidence: the manifest's ``packages.<name>``, field for field
    (hex text for bytes; ``None`` for what is not checked)."""

    tee: str
    measurement: str | None = None
    signer: str | None = None
    product_id: int | None = None
    min_svn: int | None = None
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    mrconfigid: str | None = None
    host_data: str | None = None
    min_tcb: Mapping[str, int | None] | None = None
    vmpl: int | None = None
    measurements: Mapping[int, Sequence[str]] | None = None
    debug: bool = False
    accepted_tcb_statuses: Sequence[str] = field(default=("UpToDate",))


def _same(claimed: bytes, expected_hex: str) -> bool:
    return hmac.compare_digest(claimed, bytes.fromhex(expected_hex))


def match_claims(claims: Claims, ref: ReferenceValues) -> None:
    """Raise ``ClaimsMismatch`` with a stable reason unless the claims satisfy ``ref``."""
    if claims.tee != ref.tee:
        raise ClaimsMismatch("tee mismatch", f"evidence is {claims.tee}, package wants {ref.tee}")
    if ref.measurement is not None and not _same(claims.measurement, ref.measurement):
        raise ClaimsMismatch("measurement mismatch", f"got {claims.measurement.hex()}")
    if ref.signer is not None:
        if not _same(claims.signer, ref.signer):
            raise ClaimsMismatch("signer mismatch")
        if ref.product_id is not None and claims.product_id != ref.product_id:
            raise ClaimsMismatch("product id mismatch")
    if ref.min_svn is not None and claims.svn < ref.min_svn:
        raise ClaimsMismatch("security version too low", f"{claims.svn} < {ref.min_svn}")
    if claims.tee == "tdx":
        _match_tdx(claims, ref)
    elif claims.tee == "sev-snp":
        _match_snp(claims, ref)
    elif claims.tee == "nvidia":
        _match_nvidia(claims, ref)
    if claims.debug and not ref.debug:
        raise ClaimsMismatch("debug mode not allowed")
    if claims.tee in ("sgx", "tdx") and claims.tcb_status not in ref.accepted_tcb_statuses:
        advisories = f"; advisories {', '.join(claims.advisory_ids)}" if claims.advisory_ids else ""
        raise ClaimsMismatch("tcb status not accepted", f"{claims.tcb_status}{advisories}")


def _match_tdx(claims: Claims, ref: ReferenceValues) -> None:
    if ref.mrtd is not None and not _same(claims.measurement, ref.mrtd):
        raise ClaimsMismatch("mrtd mismatch", f"got {claims.measurement.hex()}")
    for index, expected in enumerate((ref.rtmr0, ref.rtmr1, ref.rtmr2, ref.rtmr3)):
        if expected is None:
            continue
        if index >= len(claims.rtmrs) or not _same(claims.rtmrs[index], expected):
            got = claims.rtmrs[index].hex() if index < len(claims.rtmrs) else "nothing"
            raise ClaimsMismatch(f"rtmr{index} mismatch", f"got {got}")
    if ref.mrconfigid is not None and not _same(claims.mrconfigid, ref.mrconfigid):
        raise ClaimsMismatch("mrconfigid mismatch", f"got {claims.mrconfigid.hex()}")


def _match_snp(claims: Claims, ref: ReferenceValues) -> None:
    if ref.host_data is not None and not _same(claims.host_data, ref.host_data):
        raise ClaimsMismatch("host data mismatch", f"got {claims.host_data.hex()}")
    if ref.vmpl is not None and claims.vmpl != ref.vmpl:
        raise ClaimsMismatch("vmpl mismatch", f"evidence from VMPL {claims.vmpl}, want {ref.vmpl}")
    for name in SNP_TCB_COMPONENTS:
        minimum = (ref.min_tcb or {}).get(name)
        if minimum is None:
            continue
        got = claims.tcb.get(name)
        if got is None or got < minimum:
            raise ClaimsMismatch("tcb too low", f"{name} {got} < {minimum}")


def _match_nvidia(claims: Claims, ref: ReferenceValues) -> None:
    for index, allowed in sorted((ref.measurements or {}).items()):
        got = claims.measurements.get(index)
        if got is None:
            raise ClaimsMismatch("measurement mismatch", f"index {index} missing")
        if not any(_same(got, value) for value in allowed):
            raise ClaimsMismatch("measurement mismatch", f"index {index}: got {got.hex()}")
