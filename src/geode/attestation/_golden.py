"""Reference values read from a golden piece of evidence: parse only, nothing verified.

An operator who boots their Coordinator image once on a machine they trust can take the values
its evidence shows as the values to expect from then on. That is the way to TDX reference values
(no maintained tool computes MRTD and the RTMRs from an image), and a cross-check for the other
kinds. Nothing here checks a signature, a certificate chain or a TCB: the evidence is only
*read*, so whoever hands it over chooses the values. Verify it (``geode evidence verify``) or
obtain it yourself before trusting what it says.

What is taken, per kind (the fields a relying party's policy names the same way):

- ``sev-snp``: ``measurement``, ``host_data``, ``vmpl``, ``debug`` (guest policy bit 19) and the
  reported TCB as ``min_tcb`` (only for reports of version 3 on, which name the product whose
  TCB layout decodes it);
- ``tdx``: ``mrtd``, ``rtmr0``..``rtmr2``, ``mrconfigid``, ``debug`` (TD attribute bit 0).
  ``rtmr3`` is left out: the running system extends it, so a golden value would not repeat;
- ``sgx``: ``measurement`` (MRENCLAVE) or, with ``by_signer``, ``signer`` (MRSIGNER),
  ``product_id`` and ``min_svn`` (the enclave's ISVSVN), and ``debug``.
"""

from __future__ import annotations

from geode.attestation._evidence import Evidence
from geode.attestation._intel_quote import parse_intel_quote, parse_sgx_report, parse_td_report
from geode.attestation._sigstruct import Sigstruct
from geode.attestation._snp_report import parse_snp_report
from geode.errors import EvidenceError
from geode.tee import ReferenceValues, SnpTcb

__all__ = ["GOLDEN_KINDS", "golden_reference_values", "sigstruct_reference_values"]

GOLDEN_KINDS = ("sev-snp", "tdx", "sgx")


def golden_reference_values(evidence: Evidence, *, by_signer: bool = False) -> ReferenceValues:
    """The reference values ``evidence`` shows (not verified: see the module docstring)."""
    if evidence.kind == "sev-snp":
        return _snp(evidence.data)
    if evidence.kind == "tdx":
        return _tdx(evidence.data)
    if evidence.kind == "sgx":
        return _sgx(evidence.data, by_signer=by_signer)
    raise EvidenceError(
        f"no reference values are read from {evidence.kind} evidence "
        f"(one of {', '.join(GOLDEN_KINDS)})",
        field="kind",
    )


def sigstruct_reference_values(sig: Sigstruct, *, by_signer: bool = False) -> ReferenceValues:
    """The SGX reference values an enclave signed with ``sig`` will show."""
    return _sgx_values(
        mrenclave=sig.mrenclave,
        mrsigner=sig.mrsigner,
        prod_id=sig.isv_prod_id,
        svn=sig.isv_svn,
        debug=sig.debug,
        by_signer=by_signer,
    )


def _snp(data: bytes) -> ReferenceValues:
    report = parse_snp_report(data)
    product = report.cpuid_product
    min_tcb = None
    if product is not None:
        min_tcb = SnpTcb(**report.decode_tcb(report.reported_tcb, product).components())
    return ReferenceValues(
        tee="sev-snp",
        measurement=report.measurement.hex(),
        host_data=report.host_data.hex(),
        vmpl=report.vmpl,
        min_tcb=min_tcb,
        debug=report.debug,
    )


def _tdx(data: bytes) -> ReferenceValues:
    quote = parse_intel_quote(data)
    if not quote.is_tdx:
        raise EvidenceError("an SGX quote, not a TDX one", field="header.tee_type", offset=4)
    td = parse_td_report(quote.body, quote.body_offset)
    return ReferenceValues(
        tee="tdx",
        mrtd=td.mrtd.hex(),
        rtmr0=td.rtmrs[0].hex(),
        rtmr1=td.rtmrs[1].hex(),
        rtmr2=td.rtmrs[2].hex(),
        mrconfigid=td.mrconfigid.hex(),
        debug=td.debug,
    )


def _sgx(data: bytes, *, by_signer: bool) -> ReferenceValues:
    quote = parse_intel_quote(data)
    if quote.is_tdx:
        raise EvidenceError("a TDX quote, not an SGX one", field="header.tee_type", offset=4)
    report = parse_sgx_report(quote.body, quote.body_offset)
    return _sgx_values(
        mrenclave=report.mrenclave,
        mrsigner=report.mrsigner,
        prod_id=report.isv_prod_id,
        svn=report.isv_svn,
        debug=report.debug,
        by_signer=by_signer,
    )


def _sgx_values(
    *, mrenclave: bytes, mrsigner: bytes, prod_id: int, svn: int, debug: bool, by_signer: bool
) -> ReferenceValues:
    if by_signer:
        return ReferenceValues(
            tee="sgx", signer=mrsigner.hex(), product_id=prod_id, min_svn=svn, debug=debug
        )
    return ReferenceValues(tee="sgx", measurement=mrenclave.hex(), debug=debug)
