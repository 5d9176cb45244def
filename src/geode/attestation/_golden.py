"""Reference values read from a golden piece of evidence: parse only, nothing verified.

An operator who boots their Coordinator image once on a machine they trust can take the values
its evidence shows as the values to expect from then on. That is the way to TDX reference values
(no maintained tool computes MRTD and the RTMRs from an image), and a cross-check for the other
kinds. Nothing here checks a signature, a certificate chain or a TCB: the evidence is only
*read*, so whoever hands it over chooses the values. Verify it (``geode evidence verify``) or
obtain it yourself before trusting what it says.

The evidence is read into the claims a verifier would give (``tcb_status`` ``Unverified``, no
platform), and those claims into reference values by ``reference_values_of``: the same mapping
the Coordinator's identity is made with from its own *verified* claims. Per kind (the fields a
relying party's policy names the same way):

- ``sev-snp``: ``measurement``, ``host_data``, ``vmpl``, ``debug`` (guest policy bit 19),
  ``migrate_ma`` when the guest policy allows a migration agent (bit 18: else such an image is
  refused), and the reported TCB as ``min_tcb`` (only for reports of version 3 on, which name the
  product whose TCB layout decodes it);
- ``tdx``: ``mrtd``, ``rtmr0``..``rtmr2``, ``mrconfigid``, ``sept_ve_disable`` (TD attribute bit
  28, ``true`` or ``false``), ``debug`` (TD attribute bit 0). ``rtmr3`` is left out: the running
  system extends it, so a golden value would not repeat;
- ``sgx``: ``measurement`` (MRENCLAVE) or, with ``by_signer``, ``signer`` (MRSIGNER),
  ``product_id`` and ``min_svn`` (the enclave's ISVSVN), and ``debug``.
"""

from __future__ import annotations

from geode.attestation._evidence import Claims, Evidence
from geode.attestation._intel import sgx_report_claims, td_report_claims
from geode.attestation._intel_quote import parse_intel_quote, parse_sgx_report, parse_td_report
from geode.attestation._reference import REFERENCE_KINDS, reference_values_of
from geode.attestation._sigstruct import Sigstruct
from geode.attestation._snp_report import parse_snp_report
from geode.errors import EvidenceError
from geode.tee import ReferenceValues

__all__ = ["GOLDEN_KINDS", "golden_reference_values", "sigstruct_reference_values"]

GOLDEN_KINDS = REFERENCE_KINDS


def golden_reference_values(evidence: Evidence, *, by_signer: bool = False) -> ReferenceValues:
    """The reference values ``evidence`` shows (not verified: see the module docstring)."""
    if evidence.kind == "sev-snp":
        claims = _snp(evidence.data)
    elif evidence.kind == "tdx":
        claims = _tdx(evidence.data)
    elif evidence.kind == "sgx":
        claims = _sgx(evidence.data)
    else:
        raise EvidenceError(
            f"no reference values are read from {evidence.kind} evidence "
            f"(one of {', '.join(GOLDEN_KINDS)})",
            field="kind",
        )
    return reference_values_of(claims, by_signer=by_signer)


def sigstruct_reference_values(sig: Sigstruct, *, by_signer: bool = False) -> ReferenceValues:
    """The SGX reference values an enclave signed with ``sig`` will show."""
    claims = Claims(
        tee="sgx",
        measurement=sig.mrenclave,
        report_data=b"",
        debug=sig.debug,
        signer=sig.mrsigner,
        product_id=sig.isv_prod_id,
        svn=sig.isv_svn,
    )
    return reference_values_of(claims, by_signer=by_signer)


def _snp(data: bytes) -> Claims:
    report = parse_snp_report(data)
    product = report.cpuid_product
    tcb = {}
    if product is not None:
        tcb = report.decode_tcb(report.reported_tcb, product).components()
    return Claims(
        tee="sev-snp",
        measurement=report.measurement,
        report_data=report.report_data,
        debug=report.debug,
        host_data=report.host_data,
        vmpl=report.vmpl,
        tcb=tcb,
        policy=report.policy,
    )


def _tdx(data: bytes) -> Claims:
    quote = parse_intel_quote(data)
    if not quote.is_tdx:
        raise EvidenceError("an SGX quote, not a TDX one", field="header.tee_type", offset=4)
    return td_report_claims(parse_td_report(quote.body, quote.body_offset))


def _sgx(data: bytes) -> Claims:
    quote = parse_intel_quote(data)
    if quote.is_tdx:
        raise EvidenceError("a TDX quote, not an SGX one", field="header.tee_type", offset=4)
    return sgx_report_claims(parse_sgx_report(quote.body, quote.body_offset))
