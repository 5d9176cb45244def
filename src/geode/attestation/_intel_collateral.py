"""Intel collateral: TCB info, QE identity and CRLs, their signatures and windows.

The collateral document is JSON (one object, or a list of them for several platforms)::

    {"tcb_info": "<the tcbInfo JSON text exactly as served>", "tcb_info_signature": "<hex r||s>",
     "tcb_info_issuer_chain": "<PEM: Intel SGX TCB Signing, root>",
     "qe_identity": "<the enclaveIdentity JSON text>", "qe_identity_signature": "<hex>",
     "qe_identity_issuer_chain": "<PEM>",
     "root_ca_crl": "<hex DER or PEM>", "pck_crl": "<hex DER or PEM>", ...}

``tcb_info`` and ``qe_identity`` may instead hold the PCS response bodies
(``{"tcbInfo": {...}, "signature": "..."}``), with no separate signature. Signatures cover the
JSON text as served, byte for byte, so it is never re-serialised.

The document and each JSON text in it are bounded before they are parsed (``MAX_COLLATERAL_BYTES``,
``MAX_JSON_DEPTH``): Python's JSON decoder recurses, and a deeply nested text would end in
``RecursionError`` rather than in an ``EvidenceError`` naming the member.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from geode.attestation._evidence_certs import common_name, fully_decoded, x509_errors
from geode.attestation._intel_pck import PckChain, issuing_root
from geode.attestation._intel_quote import SgxReport, TdReport
from geode.attestation._intel_tcb import (
    QeIdentity,
    TcbInfo,
    TcbVerdict,
    parse_model,
    tcb_verdict,
)
from geode.attestation._intel_tcb import collateral_error as _error

__all__ = [
    "MAX_COLLATERAL_BYTES",
    "MAX_JSON_DEPTH",
    "IntelCollateral",
    "SignedJson",
    "check_collateral",
    "evaluate_tcb",
    "parse_collateral",
    "verify_signed_json",
]


@dataclass(frozen=True)
class SignedJson:
    """A JSON text as served, its signature (r||s) and the certificates that came with it."""

    text: str
    signature: bytes
    chain: list[x509.Certificate]


@dataclass(frozen=True)
class IntelCollateral:
    tcb_info: SignedJson
    qe_identity: SignedJson
    root_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    fmspc: bytes  # from the TCB info, to pick a document out of a list


# -- reading the document -------------------------------------------------------------------------

# Intel's collateral for one platform is about 20 KB and nests 7 deep (tcbInfo, tcbLevels, a level,
# tcb, sgxtcbcomponents, a component); a list of documents for many platforms stays far below.
MAX_COLLATERAL_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = re.compile(r"[^][{}]+")


def _json_depth(text: str) -> int:
    """How deep ``text`` nests arrays and objects (brackets inside strings do not count)."""
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    steps = (1 if c in "[{" else -1 for c in brackets)
    return max(itertools.accumulate(steps, initial=0))


def _bounded(text: str, what: str) -> str:
    """``text``, once it is known to be small and shallow enough to hand to a JSON parser."""
    if len(text) > MAX_COLLATERAL_BYTES:
        raise _error(what, f"{len(text)} characters, more than {MAX_COLLATERAL_BYTES}")
    if (depth := _json_depth(text)) > MAX_JSON_DEPTH:
        raise _error(what, f"JSON nested {depth} deep, more than {MAX_JSON_DEPTH}")
    return text


def _raw_members(text: str, what: str) -> dict[str, str]:
    """The members of a JSON object as the exact text of each value."""
    decoder = json.JSONDecoder()
    out: dict[str, str] = {}
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise _error(what, "expected a JSON object")
    i = _skip_ws(text, i + 1)
    while text[i : i + 1] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if not isinstance(key, str) or text[i : i + 1] != ":":
            raise _error(what, "malformed JSON object")
        start = _skip_ws(text, i + 1)
        _, end = decoder.raw_decode(text, start)
        out[key] = text[start:end]
        i = _skip_ws(text, end)
        if text[i : i + 1] == ",":
            i = _skip_ws(text, i + 1)
        elif text[i : i + 1] != "}":
            raise _error(what, "malformed JSON object")
    return out


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _signature(value: object, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise _error(what, "expected a 64-byte ECDSA signature in hex")
    return raw


def _chain(value: object, what: str) -> list[x509.Certificate]:
    if not isinstance(value, str):
        raise _error(what, "expected PEM certificates")
    field = f"collateral.{what}"
    with x509_errors(field, problem="expected PEM certificates"):
        certs = x509.load_pem_x509_certificates(value.encode())
    return [fully_decoded(cert, field) for cert in certs]


def _signed(doc: dict[str, object], name: str, member: str) -> SignedJson:
    text = doc.get(name)
    if not isinstance(text, str):
        raise _error(name, "missing" if text is None else "expected the JSON text as served")
    _bounded(text, name)
    if f"{name}_signature" in doc:
        signature = _signature(doc[f"{name}_signature"], f"{name}_signature")
    else:  # a PCS response body: {"<member>": {...}, "signature": "..."}
        try:
            members = _raw_members(text, name)
            text, signature = members[member], _signature(json.loads(members["signature"]), name)
        except (KeyError, ValueError):
            raise _error(name, f"expected the {member} text and its signature") from None
    return SignedJson(
        text, signature, _chain(doc.get(f"{name}_issuer_chain"), f"{name}_issuer_chain")
    )


def _crl(value: object, what: str) -> x509.CertificateRevocationList:
    if not isinstance(value, str):
        raise _error(what, "expected a CRL, hex DER or PEM (not text)")
    with x509_errors(f"collateral.{what}", problem="expected a CRL, hex DER or PEM"):
        if value.lstrip().startswith("-----BEGIN"):
            crl = x509.load_pem_x509_crl(value.encode())
        else:
            crl = x509.load_der_x509_crl(bytes.fromhex(value))
        # Decode every field now: cryptography decodes lazily, and would raise on first use.
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, list(crl.extensions))
        _ = (crl.signature_hash_algorithm, crl.signature_algorithm_oid)
        _ = [
            (entry.serial_number, entry.revocation_date_utc, list(entry.extensions))
            for entry in crl
        ]
    return crl


def _document(doc: object) -> IntelCollateral:
    if not isinstance(doc, dict):
        raise _error("", "expected a JSON object")
    tcb_info = _signed(doc, "tcb_info", "tcbInfo")
    try:
        fmspc = bytes.fromhex(json.loads(tcb_info.text).get("fmspc", ""))
    except (ValueError, AttributeError, TypeError):
        raise _error("tcb_info", "not a TCB info") from None
    return IntelCollateral(
        tcb_info=tcb_info,
        qe_identity=_signed(doc, "qe_identity", "enclaveIdentity"),
        root_crl=_crl(doc.get("root_ca_crl"), "root_ca_crl"),
        pck_crl=_crl(doc.get("pck_crl"), "pck_crl"),
        fmspc=fmspc,
    )


# A Coordinator verifies many quotes against the same collateral: parsing is done once per
# document (checks, which depend on the time, are not cached).
@functools.lru_cache(maxsize=16)
def _documents(raw: bytes) -> tuple[IntelCollateral, ...]:
    if len(raw) > MAX_COLLATERAL_BYTES:
        raise _error("", f"{len(raw)} bytes, more than {MAX_COLLATERAL_BYTES}")
    try:
        doc = json.loads(_bounded(raw.decode(), ""))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _error("", "not JSON") from None
    return tuple(_document(d) for d in (doc if isinstance(doc, list) else [doc]))


def parse_collateral(raw: bytes, fmspc: bytes) -> IntelCollateral:
    """The collateral document for the platform ``fmspc``."""
    documents = _documents(raw)
    for collateral in documents:
        if collateral.fmspc == fmspc:
            return collateral
    if len(documents) == 1:
        return documents[0]  # the TCB info check names the mismatch
    raise _error("", f"no collateral for FMSPC {fmspc.hex()}")


# -- checking it ----------------------------------------------------------------------------------


def _check_window(
    what: str, start: datetime.datetime, end: datetime.datetime | None, at: datetime.datetime
) -> None:
    if not start <= at or (end is not None and at > end):
        until = end.isoformat(timespec="seconds") if end else "?"
        raise _error(
            what,
            f"not valid at {at.isoformat(timespec='seconds')} "
            f"(issued {start.isoformat(timespec='seconds')}, next update {until})",
        )


def _check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    what: str,
    at: datetime.datetime,
) -> None:
    problem = _crl_problem(crl, issuer)
    if problem:
        raise _error(what, problem)
    _check_window(what, crl.last_update_utc, crl.next_update_utc, at)


def _check_not_revoked(
    cert: x509.Certificate, crl: x509.CertificateRevocationList, what: str, crl_name: str
) -> None:
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise _error(crl_name, f"the {what} is revoked (serial {cert.serial_number:x})")


def verify_signed_json(
    signed: SignedJson,
    what: str,
    *,
    roots: Sequence[x509.Certificate],
    root_crl: x509.CertificateRevocationList,
    at: datetime.datetime,
) -> None:
    signer = next((c for c in signed.chain if not _is_ca(c)), None)
    if signer is None:
        raise _error(f"{what}_issuer_chain", "no signing certificate")
    where = f"{what}_issuer_chain"
    if issuing_root(signer, roots) is None:
        raise _error(where, f"{common_name(signer)!r} is not issued by a trusted root")
    if not signer.not_valid_before_utc <= at <= signer.not_valid_after_utc:
        raise _error(
            where,
            f"the signing certificate is not valid at {at.isoformat(timespec='seconds')} "
            f"(valid {signer.not_valid_before_utc.date()} to {signer.not_valid_after_utc.date()})",
        )
    _check_not_revoked(signer, root_crl, f"{what} signing certificate", "root_ca_crl")
    if not _json_signed_by(signed.text, signed.signature, signer):
        raise _error(what, f"signature by {common_name(signer)!r} does not verify")


# The same collateral serves many quotes: which signatures verified is remembered (the
# signatures do not depend on the time; windows and revocation are checked on every call).
def _crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str:
    return _crl_problem_cached(_CrlKey(crl), issuer)


class _CrlKey:
    """A CRL object as a cache key (CRLs are not hashable). Parsed documents are cached, so the
    same CRL object comes back; the key holds it, so its identity is not reused meanwhile."""

    __slots__ = ("crl",)

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        self.crl = crl

    def __hash__(self) -> int:
        return id(self.crl)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CrlKey) and other.crl is self.crl


@functools.lru_cache(maxsize=64)
def _crl_problem_cached(key: _CrlKey, issuer: x509.Certificate) -> str:
    crl = key.crl
    if crl.issuer != issuer.subject:
        return f"issued by {crl.issuer.rfc4514_string()}, expected {common_name(issuer)!r}"
    public_key = issuer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        return f"not signed by {common_name(issuer)!r}"
    return ""


@functools.lru_cache(maxsize=64)
def _json_signed_by(text: str, signature: bytes, signer: x509.Certificate) -> bool:
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, text.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def evaluate_tcb(
    collateral: IntelCollateral,
    *,
    chain: PckChain,
    qe: SgxReport,
    td: TdReport | None,
    quote_version: int,
    roots: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> TcbVerdict:
    """Check the collateral at ``at`` and evaluate the platform's TCB against it."""
    info, identity = check_collateral(collateral, chain=chain, roots=roots, at=at)
    return tcb_verdict(info, identity, chain=chain, qe=qe, td=td, quote_version=quote_version)


def check_collateral(
    collateral: IntelCollateral,
    *,
    chain: PckChain,
    roots: Sequence[x509.Certificate],
    at: datetime.datetime,
) -> tuple[TcbInfo, QeIdentity]:
    """CRLs (signed by their issuers, current, revoking none of the chain), the TCB info and QE
    identity (signed over their text as served, current); returns them parsed."""
    _check_crl(collateral.root_crl, chain.root, "root_ca_crl", at)
    _check_not_revoked(chain.intermediate, collateral.root_crl, "PCK CA certificate", "root_ca_crl")
    _check_crl(collateral.pck_crl, chain.intermediate, "pck_crl", at)
    _check_not_revoked(chain.leaf, collateral.pck_crl, "PCK certificate", "pck_crl")
    for signed, what in (
        (collateral.tcb_info, "tcb_info"),
        (collateral.qe_identity, "qe_identity"),
    ):
        verify_signed_json(signed, what, roots=roots, root_crl=collateral.root_crl, at=at)
    info = parse_model(TcbInfo, collateral.tcb_info.text, "tcb_info")
    _check_window("tcb_info", info.issue_date, info.next_update, at)
    identity = parse_model(QeIdentity, collateral.qe_identity.text, "qe_identity")
    _check_window("qe_identity", identity.issue_date, identity.next_update, at)
    return info, identity
