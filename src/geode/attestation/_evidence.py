"""Evidence envelopes and normalised claims (the report-data bindings Geode signs and binds are
part of its wire protocol: ``geode.protocol``)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from geode.errors import EvidenceError
from geode.tee import CHECKS, TEE_KINDS, Check, TcbStatus

__all__ = [
    "EVIDENCE_KINDS",
    "REPORT_DATA_SIZE",
    "TCB_STATUSES",
    "TCB_UNVERIFIED",
    "Claims",
    "Evidence",
    "Verdict",
    "checks_in_order",
]

EVIDENCE_KINDS: tuple[str, ...] = tuple(TEE_KINDS)
REPORT_DATA_SIZE = 64
MAX_EVIDENCE_BYTES = 64 * 1024

# Intel's TCB statuses, best first (``geode.tee.TcbStatus``), and ours for evidence whose TCB
# was not checked (its last).
TCB_UNVERIFIED = "Unverified"
TCB_STATUSES: tuple[str, ...] = tuple(s for s in get_args(TcbStatus) if s != TCB_UNVERIFIED)


def checks_in_order(checked: frozenset[Check]) -> list[Check]:
    """``checked`` in the order of ``geode.tee.CHECKS`` (signature, chain, revocation, tcb,
    reference): how JSON and the command line show them."""
    return [check for check in CHECKS if check in checked]


@dataclass(frozen=True)
class Evidence:
    """What a TEE produced, tagged with its kind; travels as ``{"kind", "data" (base64)}``."""

    kind: str
    data: bytes

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, value: Any) -> Evidence:
        if not isinstance(value, dict) or set(value) != {"kind", "data"}:
            raise EvidenceError("expected an object with 'kind' and 'data'", field="evidence")
        kind, data = value["kind"], value["data"]
        if kind not in EVIDENCE_KINDS:
            raise EvidenceError(f"unknown evidence kind {kind!r}", field="evidence.kind")
        if not isinstance(data, str):
            raise EvidenceError("expected base64 text", field="evidence.data")
        if len(data) > MAX_EVIDENCE_BYTES * 4 // 3 + 4:
            raise EvidenceError("evidence too large", field="evidence.data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise EvidenceError("invalid base64", field="evidence.data") from None
        return cls(kind, raw)


@dataclass(frozen=True)
class Claims:
    """The verified, normalised content of evidence.

    Every kind fills ``tee``, ``report_data`` (64 bytes), ``debug`` and ``tcb_status``; the other
    fields are per kind (empty otherwise):

    ========== =====================================================================================
    simulated  measurement, signer, product_id, svn
    sgx        measurement (MRENCLAVE), signer (MRSIGNER), product_id (ISVPRODID), svn (ISVSVN)
    tdx        measurement (MRTD), rtmrs (RTMR0..3), mrconfigid, td_attributes (8 bytes)
    sev-snp    measurement (48 bytes), host_data, vmpl, tcb (reported TCB by component), policy
    nvidia     measurements (index -> value, from the measurement blocks)
    ========== =====================================================================================

    ``tcb_status`` is Intel's vocabulary (``UpToDate``, ``SWHardeningNeeded``,
    ``ConfigurationNeeded``, ``ConfigurationAndSWHardeningNeeded``, ``OutOfDate``,
    ``OutOfDateConfigurationNeeded``, ``Revoked``), ``Unverified`` when no collateral was
    checked, ``Simulated`` for simulated evidence; NVIDIA (no TCB levels) says ``UpToDate``
    once its RIMs and revocation were checked. ``tcb_reasons`` qualify it (Intel: "below every
    TCB level" when the platform, the TD or the QE is below every level of the collateral,
    reported ``OutOfDate``). ``checked`` says what the verifier checked, in the vocabulary of
    ``geode.tee.Check``: ``"revocation" in checked`` when the signing chain was checked against
    the vendor's revocation lists; ``reference`` is the verifier's only where it compares with
    the vendor's signed reference values itself (NVIDIA's RIMs), otherwise ``match_claims``'s
    ``Verdict`` adds it. The split for SEV-SNP: the verifier does not know the package, so an SNP
    ``tcb_status`` stays ``Unverified`` (AMD publishes no TCB status) even with AMD's CRL; the
    ``Verdict`` derives the status from the CRL check and the package's ``min_tcb``.
    ``platform`` names the platform (FMSPC, chip id, simulated key id); ``details`` carries what
    an auditor may want to see but no package matches on (hex or text).
    """

    tee: str
    measurement: bytes
    report_data: bytes
    debug: bool
    signer: bytes = b""
    product_id: int = 0
    svn: int = 0
    tcb_status: str = TCB_UNVERIFIED
    checked: frozenset[Check] = frozenset()
    tcb_reasons: tuple[str, ...] = ()
    platform: str = ""
    advisory_ids: tuple[str, ...] = ()
    rtmrs: tuple[bytes, ...] = ()
    mrconfigid: bytes = b""
    host_data: bytes = b""
    vmpl: int | None = None
    tcb: Mapping[str, int] = field(default_factory=dict)
    policy: int | None = None
    td_attributes: bytes = b""
    measurements: Mapping[int, bytes] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The claims under the field names of a manifest package of their kind, plus ``tee``,
        ``report_data`` and ``tcb_status``; bytes as lowercase hex."""
        out: dict[str, object] = {"tee": self.tee}
        if self.tee == "tdx":
            out["mrtd"] = self.measurement.hex()
            for index, value in enumerate(self.rtmrs):
                out[f"rtmr{index}"] = value.hex()
            out["mrconfigid"] = self.mrconfigid.hex()
            out["td_attributes"] = self.td_attributes.hex()
        elif self.tee == "nvidia":
            out["measurements"] = {str(i): v.hex() for i, v in sorted(self.measurements.items())}
        else:
            out["measurement"] = self.measurement.hex()
        if self.tee in ("simulated", "sgx"):
            out.update(signer=self.signer.hex(), product_id=self.product_id, svn=self.svn)
        if self.tee == "sev-snp":
            out.update(host_data=self.host_data.hex(), vmpl=self.vmpl, tcb=dict(self.tcb))
            out["policy"] = f"0x{self.policy or 0:x}"
        out.update(
            debug=self.debug,
            report_data=self.report_data.hex(),
            tcb_status=self.tcb_status,
            tcb_reasons=list(self.tcb_reasons),
            checked=checks_in_order(self.checked),
            advisory_ids=list(self.advisory_ids),
            platform=self.platform,
        )
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class Verdict:
    """How sure a match of claims against reference values is (``match_claims``' answer).

    ``checked``: what the verifier checked plus ``reference`` (and, for SEV-SNP, ``tcb`` when
    every component of the reported TCB was held against the package's ``min_tcb`` with AMD's
    CRL checked);
    ``status``: the TCB status the decision rests on, never more than was checked --
    ``Unverified`` when no collateral was checked; for SEV-SNP derived here, not by the verifier
    (which does not know the package): ``UpToDate`` when revocation was checked and the package
    sets a ``min_tcb`` for every component the reported TCB has, all met, ``Unverified``
    otherwise, with the reason;
    ``reasons``: what qualifies the status (advisories accepted, "below every TCB level", why
    an SNP status stays ``Unverified``), as text.
    """

    tee: str
    status: str
    checked: frozenset[Check]
    reasons: tuple[str, ...] = ()

    def summary(self) -> str:
        """The verdict in one line, for logs: tee, status, what was checked, the reasons (no
        secrets: reasons name statuses, advisories and TCB components only)."""
        reasons = f"; {'; '.join(self.reasons)}" if self.reasons else ""
        checked = ",".join(checks_in_order(self.checked))
        return f"tee {self.tee}, status {self.status}, checked {checked}{reasons}"

    def to_json(self) -> dict[str, object]:
        return {
            "tee": self.tee,
            "status": self.status,
            "checked": checks_in_order(self.checked),
            "reasons": list(self.reasons),
        }
