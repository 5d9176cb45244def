"""The match of verified claims against reference values (``geode.tee.ReferenceValues``, which a
manifest package is)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from geode.attestation._evidence import Claims
from geode.errors import ClaimsMismatch
from geode.tee import ReferenceValues

__all__ = [
    "SNP_POLICY_MIGRATE_MA",
    "SNP_TCB_COMPONENTS",
    "TD_ATTRIBUTE_SEPT_VE_DISABLE",
    "ReferenceValues",
    "match_claims",
]

# Components of an SEV-SNP TCB, in the order reasons name them.
SNP_TCB_COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")
# SEV-SNP guest policy: a migration agent may export the guest (its memory leaves the chip's
# keys). The debug bit (19) is the claims' ``debug``.
SNP_POLICY_MIGRATE_MA = 1 << 18
# TDX TD attributes: EPT violations are not converted to #VE (the guest cannot be made to
# take a #VE on memory the host unmapped). The debug bit (0) is the claims' ``debug``.
TD_ATTRIBUTE_SEPT_VE_DISABLE = 1 << 28


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
    match_kind = _KIND_MATCHERS.get(ref.tee)
    if match_kind is not None:
        match_kind(claims, ref)
    if claims.debug and not ref.debug:
        raise ClaimsMismatch("debug mode not allowed")
    if ref.spec.checks_tcb_status and claims.tcb_status not in ref.accepted_tcb_statuses:
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
    if ref.sept_ve_disable is not None:
        attributes = int.from_bytes(claims.td_attributes, "little")
        if bool(attributes & TD_ATTRIBUTE_SEPT_VE_DISABLE) != ref.sept_ve_disable:
            want = "set" if ref.sept_ve_disable else "clear"
            raise ClaimsMismatch(
                "td attributes mismatch",
                f"SEPT_VE_DISABLE must be {want} (td_attributes {claims.td_attributes.hex()})",
            )


def _match_snp(claims: Claims, ref: ReferenceValues) -> None:
    policy = claims.policy or 0  # the SNP verifier always fills it
    if policy & SNP_POLICY_MIGRATE_MA and not ref.migrate_ma:
        raise ClaimsMismatch(
            "guest policy mismatch", f"a migration agent is allowed (policy 0x{policy:x}, bit 18)"
        )
    if ref.host_data is not None and not _same(claims.host_data, ref.host_data):
        raise ClaimsMismatch("host data mismatch", f"got {claims.host_data.hex()}")
    if ref.vmpl is not None and claims.vmpl != ref.vmpl:
        raise ClaimsMismatch("vmpl mismatch", f"evidence from VMPL {claims.vmpl}, want {ref.vmpl}")
    for name in SNP_TCB_COMPONENTS:
        minimum: int | None = getattr(ref.min_tcb, name) if ref.min_tcb is not None else None
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


# The checks of the fields a kind has beyond measurement, signer, svn, debug and TCB status.
_KIND_MATCHERS: Mapping[str, Callable[[Claims, ReferenceValues], None]] = {
    "tdx": _match_tdx,
    "sev-snp": _match_snp,
    "nvidia": _match_nvidia,
}
