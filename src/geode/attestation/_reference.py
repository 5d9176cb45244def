"""The match of verified claims against reference values (``geode.tee.ReferenceValues``, which a
manifest package is), and its inverse: the reference values claims show (``reference_values_of``),
the one mapping from claims to reference values that golden evidence (``_golden``) and the
Coordinator's own identity (``geode.coordinator``) share.

The ``Verdict`` says what the acceptance rests on: the claims' ``checked`` plus ``reference``,
and a status. For SGX and TDX the status is the claims' (Intel's, from the collateral) once the
package accepts it and every advisory it carries (``accepted_advisories``); its ``tcb_reasons``
("below every TCB level") become reasons. For SEV-SNP the verifier cannot say more than
``Unverified`` (it does not know the package); the status is derived here (``_snp_status``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from geode.attestation._evidence import TCB_UNVERIFIED, Claims, Verdict
from geode.errors import ClaimsMismatch, EvidenceError
from geode.tee import Check, ReferenceValues, SnpTcb

__all__ = [
    "REFERENCE_KINDS",
    "SNP_POLICY_MIGRATE_MA",
    "SNP_TCB_COMPONENTS",
    "TD_ATTRIBUTE_SEPT_VE_DISABLE",
    "ReferenceValues",
    "match_claims",
    "reference_values_of",
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


def match_claims(claims: Claims, ref: ReferenceValues) -> Verdict:
    """Raise ``ClaimsMismatch`` with a stable reason unless the claims satisfy ``ref``; the
    ``Verdict`` says what the acceptance rests on (see the module docstring)."""
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
    reasons = list(claims.tcb_reasons)
    if ref.spec.checks_tcb_status:
        _match_tcb_status(claims, ref)
        reasons += _advisory_reasons(claims, ref)
    checked: frozenset[Check] = claims.checked | {"reference"}
    if claims.tee == "sev-snp":
        status, more, why = _snp_status(claims, ref)
        return Verdict(claims.tee, status, checked | more, (*reasons, why))
    return Verdict(claims.tee, claims.tcb_status, checked, tuple(reasons))


def _match_tcb_status(claims: Claims, ref: ReferenceValues) -> None:
    if claims.tcb_status in ref.accepted_tcb_statuses:
        return
    why = f" ({'; '.join(claims.tcb_reasons)})" if claims.tcb_reasons else ""
    advisories = f"; advisories {', '.join(claims.advisory_ids)}" if claims.advisory_ids else ""
    raise ClaimsMismatch("tcb status not accepted", f"{claims.tcb_status}{why}{advisories}")


def _advisory_reasons(claims: Claims, ref: ReferenceValues) -> list[str]:
    """Evidence accepted at a status other than ``UpToDate`` may be exposed only to advisories
    the package accepts: the first one it does not is refused, by name. The reasons name the
    advisories accepted."""
    if claims.tcb_status == "UpToDate" or not claims.advisory_ids:
        return []
    accepted = set(ref.accepted_advisories)
    for advisory in claims.advisory_ids:
        if advisory not in accepted:
            raise ClaimsMismatch("advisory not accepted", f"{advisory} ({claims.tcb_status})")
    return [f"advisories accepted at {claims.tcb_status}: {', '.join(claims.advisory_ids)}"]


# Why an SEV-SNP verdict stays Unverified, or what makes it UpToDate.
SNP_NO_CRL = "revocation not checked (no AMD CRL given): the TCB level is not known"
SNP_CRL_NOT_COUNTED = "revocation not checked (the AMD CRL given is not known to cover the chain)"
SNP_NO_MIN_TCB = "the package sets no min_tcb: the reported TCB was held against nothing"
SNP_PARTIAL_MIN_TCB = (
    "the package's min_tcb does not set {names}: those components of the reported TCB were held "
    "against nothing"
)
SNP_UP_TO_DATE = (
    "chain not revoked (AMD CRL) and every component of the reported TCB meets the package's "
    "min_tcb"
)


def _snp_status(claims: Claims, ref: ReferenceValues) -> tuple[str, frozenset[Check], str]:
    """An SEV-SNP verdict's status, the checks it adds and why. AMD publishes no TCB status: the
    status is ``UpToDate`` only when the chain was checked against AMD's CRL and the package's
    ``min_tcb`` sets every component the reported TCB has (bootloader, tee, snp, microcode; fmc
    where the claims report it), each met (``_match_snp`` refused one below). A ``min_tcb`` that
    leaves a component out held the TCB against part of it only: ``Unverified``, naming the
    components not set."""
    if "revocation" not in claims.checked:
        crl_given = not claims.details.get("revocation", "").startswith("not checked")
        return TCB_UNVERIFIED, frozenset(), SNP_CRL_NOT_COUNTED if crl_given else SNP_NO_CRL
    minimum = ref.min_tcb
    if minimum is None or all(getattr(minimum, n) is None for n in SNP_TCB_COMPONENTS):
        return TCB_UNVERIFIED, frozenset(), SNP_NO_MIN_TCB
    unset = [n for n in SNP_TCB_COMPONENTS if n in claims.tcb and getattr(minimum, n) is None]
    if unset:
        names = ", ".join(unset)
        return TCB_UNVERIFIED, frozenset(), SNP_PARTIAL_MIN_TCB.format(names=names)
    return "UpToDate", frozenset({"tcb"}), SNP_UP_TO_DATE


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


# The kinds whose claims ``reference_values_of`` maps (a Coordinator runs in one of these).
REFERENCE_KINDS = ("sev-snp", "tdx", "sgx")


def reference_values_of(claims: Claims, *, by_signer: bool = False) -> ReferenceValues:
    """The reference values ``claims`` show, as ``match_claims`` reads them: the claims match
    them (a TCB status aside). Whether the claims can be believed is the caller's business:
    verified evidence's claims, or values merely read from golden evidence (``_golden``).

    - ``sev-snp``: ``measurement``, ``host_data``, ``vmpl``, the reported TCB as ``min_tcb`` (when
      the claims decode it), ``migrate_ma`` (only when the guest policy sets bit 18), ``debug``;
    - ``tdx``: ``mrtd``, ``rtmr0``..``rtmr2`` (``rtmr3`` is extended at run time: left out),
      ``mrconfigid``, ``sept_ve_disable`` (TD attribute bit 28, set or clear), ``debug``;
    - ``sgx``: ``measurement`` (MRENCLAVE) or, ``by_signer``, ``signer``, ``product_id`` and
      ``min_svn`` (the ISVSVN), and ``debug``.

    ``EvidenceError`` for claims of another kind (``REFERENCE_KINDS``)."""
    if claims.tee == "sev-snp":
        snp = ReferenceValues(
            tee="sev-snp",
            measurement=claims.measurement.hex(),
            host_data=claims.host_data.hex(),
            vmpl=claims.vmpl,
            min_tcb=SnpTcb(**claims.tcb) if claims.tcb else None,
            debug=claims.debug,
        )
        if (claims.policy or 0) & SNP_POLICY_MIGRATE_MA:
            return snp.model_copy(update={"migrate_ma": True})
        return snp
    if claims.tee == "tdx":
        rtmrs: list[str | None] = [r.hex() for r in claims.rtmrs[:3]]
        rtmrs += [None] * (3 - len(rtmrs))
        attributes = int.from_bytes(claims.td_attributes, "little")
        return ReferenceValues(
            tee="tdx",
            mrtd=claims.measurement.hex(),
            rtmr0=rtmrs[0],
            rtmr1=rtmrs[1],
            rtmr2=rtmrs[2],
            mrconfigid=claims.mrconfigid.hex(),
            sept_ve_disable=bool(attributes & TD_ATTRIBUTE_SEPT_VE_DISABLE),
            debug=claims.debug,
        )
    if claims.tee == "sgx":
        if by_signer:
            return ReferenceValues(
                tee="sgx",
                signer=claims.signer.hex(),
                product_id=claims.product_id,
                min_svn=claims.svn,
                debug=claims.debug,
            )
        return ReferenceValues(tee="sgx", measurement=claims.measurement.hex(), debug=claims.debug)
    raise EvidenceError(
        f"no reference values are read from {claims.tee} evidence "
        f"(one of {', '.join(REFERENCE_KINDS)})",
        field="kind",
    )
