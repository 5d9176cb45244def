"""Verification of Intel SGX and TDX quotes (DCAP, ECDSA P-256).

In order, cheapest first: the quote parses by its length fields; the attestation key signed the
header and body; the PCK chain ends at the pinned Intel SGX Root CA and is valid at ``at``; the
PCK certificate signed the quoting enclave's report; that report's data is SHA-256(attestation
key || QE authentication data) followed by 32 zero bytes, which binds the attestation key to the
QE. With collateral, its CRLs, signatures and windows are checked and the TCB status computed;
without, the status is ``Unverified``. Layouts: ``_intel_quote``; collateral:
``_intel_collateral``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from geode.attestation._evidence import TCB_UNVERIFIED, Claims
from geode.attestation._evidence_certs import common_name
from geode.attestation._intel_collateral import evaluate_tcb, parse_collateral
from geode.attestation._intel_pck import PckChain, intel_roots, verify_pck_chain
from geode.attestation._intel_quote import (
    CERT_PCK_CHAIN,
    IntelQuote,
    SgxReport,
    TdReport,
    parse_intel_quote,
    parse_sgx_report,
    parse_td_report,
)
from geode.attestation._intel_tcb import TcbVerdict
from geode.errors import EvidenceError
from geode.tee import Check

__all__ = [
    "sgx_report_claims",
    "td_report_claims",
    "verify_intel_quote",
    "verify_sgx_quote",
    "verify_tdx_quote",
]


def verify_sgx_quote(
    data: bytes,
    *,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> Claims:
    """Verify an SGX quote (v3, or v4/v5 with TEE type SGX); see the module docstring."""
    return verify_intel_quote(
        data, tee="sgx", certs=certs, collateral=collateral, at=at, roots=roots
    )


def verify_tdx_quote(
    data: bytes,
    *,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> Claims:
    """Verify a TDX quote (v4, v5); see the module docstring."""
    return verify_intel_quote(
        data, tee="tdx", certs=certs, collateral=collateral, at=at, roots=roots
    )


def _p256_key(raw: bytes, field: str, offset: int) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise EvidenceError("not a P-256 public key", field=field, offset=offset) from None


def _verify_ecdsa(
    key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes, field: str, offset: int
) -> None:
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EvidenceError("signature does not verify", field=field, offset=offset) from None


def verify_intel_quote(
    data: bytes,
    *,
    tee: str,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> Claims:
    """Verify an Intel quote expected to come from ``tee`` (``sgx`` or ``tdx``)."""
    quote = parse_intel_quote(data)
    if quote.is_tdx != (tee == "tdx"):
        kind = "TDX" if quote.is_tdx else "SGX"
        raise EvidenceError(f"a {kind} quote, not {tee}", field="header.tee_type", offset=4)
    attestation_key = _p256_key(
        quote.attestation_key, "attestation_key", quote.attestation_key_offset
    )
    _verify_ecdsa(
        attestation_key, quote.signature, quote.signed, "signature", quote.signature_offset
    )
    chain = _pck_chain(quote, certs, at, roots or intel_roots())
    pck_key = chain.leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or pck_key.curve.name != "secp256r1":
        raise EvidenceError("the PCK certificate's key is not P-256", field="certs")
    _verify_ecdsa(
        pck_key,
        quote.qe_report_signature,
        quote.qe_report,
        "qe_report_signature",
        quote.qe_report_signature_offset,
    )
    qe = parse_sgx_report(quote.qe_report, quote.qe_report_offset)
    if qe.debug:  # a debug QE's key can be read by whoever runs it; refused with or without
        raise EvidenceError(  # collateral (whose QE identity says the same)
            "the quoting enclave is a debug enclave",
            field="qe_report.attributes",
            offset=quote.qe_report_offset + 48,
        )
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if qe.report_data != binding:
        raise EvidenceError(
            "the QE report does not bind the attestation key",
            field="qe_report.report_data",
            offset=quote.qe_report_offset + 320,
        )
    td = parse_td_report(quote.body, quote.body_offset) if quote.is_tdx else None
    verdict: TcbVerdict | None = None
    if collateral is not None:
        verdict = evaluate_tcb(
            parse_collateral(collateral, chain.tcb.fmspc),
            chain=chain,
            qe=qe,
            td=td,
            quote_version=quote.version,
            roots=roots or intel_roots(),
            at=at,
        )
    if td is not None:
        return _tdx_claims(quote, td, chain, qe, verdict)
    return _sgx_claims(quote, parse_sgx_report(quote.body, quote.body_offset), chain, qe, verdict)


def _pck_chain(
    quote: IntelQuote,
    certs: bytes | None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate],
) -> PckChain:
    if certs is not None:
        return verify_pck_chain(certs, 0, at=at, roots=roots)
    if quote.cert_type != CERT_PCK_CHAIN:
        raise EvidenceError(
            f"certification data of type {quote.cert_type} carries no PCK chain: "
            "give the chain separately",
            field="pck_certification_data.type",
            offset=quote.cert_data_offset - 6,
        )
    return verify_pck_chain(quote.cert_data, quote.cert_data_offset, at=at, roots=roots)


def sgx_report_claims(body: SgxReport) -> Claims:
    """The claims an enclave's report makes by itself (what a golden quote shows); a verified
    quote's claims add what checking it gave (``_verified``)."""
    return Claims(
        tee="sgx",
        measurement=body.mrenclave,
        report_data=body.report_data,
        debug=body.debug,
        signer=body.mrsigner,
        product_id=body.isv_prod_id,
        svn=body.isv_svn,
    )


def td_report_claims(td: TdReport) -> Claims:
    """The claims a TD's report makes by itself, as ``sgx_report_claims``."""
    return Claims(
        tee="tdx",
        measurement=td.mrtd,
        report_data=td.report_data,
        debug=td.debug,
        rtmrs=td.rtmrs,
        mrconfigid=td.mrconfigid,
        td_attributes=td.td_attributes,
    )


_SIGNED: frozenset[Check] = frozenset({"signature", "chain"})
_COLLATERAL: frozenset[Check] = frozenset({"revocation", "tcb"})


def _verified(
    claims: Claims, chain: PckChain, verdict: TcbVerdict | None, details: dict[str, str]
) -> Claims:
    """``claims`` with what verifying the quote found: the TCB verdict (``Unverified`` without
    collateral), the platform and the details."""
    return dataclasses.replace(
        claims,
        tcb_status=verdict.status if verdict else TCB_UNVERIFIED,
        tcb_reasons=verdict.reasons if verdict else (),
        # Collateral is checked whole (``check_collateral``): the root CA and PCK CRLs, then
        # the TCB info and the QE identity -- revocation and TCB level together, or neither.
        checked=_SIGNED | _COLLATERAL if verdict else _SIGNED,
        platform=chain.tcb.fmspc.hex(),
        advisory_ids=verdict.advisory_ids if verdict else (),
        details=details,
    )


def _common_details(
    quote: IntelQuote, chain: PckChain, qe: SgxReport, verdict: TcbVerdict | None
) -> dict[str, str]:
    details = {
        "quote_version": str(quote.version),
        "fmspc": chain.tcb.fmspc.hex(),
        # Which PCK CA issued the PCK (the PCK CRL to fetch): "processor" or "platform".
        "pck_ca": "processor" if "Processor" in common_name(chain.intermediate) else "platform",
        "pce_id": chain.tcb.pce_id.hex(),
        "ppid": chain.tcb.ppid.hex(),
        "pck_cpu_svn": chain.tcb.cpu_svn.hex(),
        "pck_pce_svn": str(chain.tcb.pce_svn),
        "qe_svn": str(qe.isv_svn),
    }
    if verdict is not None:
        details.update(verdict.details)
    return details


def _sgx_claims(
    quote: IntelQuote,
    body: SgxReport,
    chain: PckChain,
    qe: SgxReport,
    verdict: TcbVerdict | None,
) -> Claims:
    details = {
        "attributes": body.attributes.hex(),
        "misc_select": f"{body.misc_select:08x}",
        "cpu_svn": body.cpu_svn.hex(),
        "config_id": body.config_id.hex(),
        "config_svn": str(body.config_svn),
        "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
        "isv_family_id": body.isv_family_id.hex(),
        **_common_details(quote, chain, qe, verdict),
    }
    return _verified(sgx_report_claims(body), chain, verdict, details)


def _tdx_claims(
    quote: IntelQuote,
    td: TdReport,
    chain: PckChain,
    qe: SgxReport,
    verdict: TcbVerdict | None,
) -> Claims:
    details = {
        "tee_tcb_svn": td.tee_tcb_svn.hex(),
        "mrseam": td.mrseam.hex(),
        "mrsignerseam": td.mrsignerseam.hex(),
        "seam_attributes": td.seam_attributes.hex(),
        "td_attributes": td.td_attributes.hex(),
        "xfam": td.xfam.hex(),
        "mrowner": td.mrowner.hex(),
        "mrownerconfig": td.mrownerconfig.hex(),
        **_common_details(quote, chain, qe, verdict),
    }
    if td.tee_tcb_svn2:
        details.update(tee_tcb_svn2=td.tee_tcb_svn2.hex(), mrservicetd=td.mrservicetd.hex())
    return _verified(td_report_claims(td), chain, verdict, details)
