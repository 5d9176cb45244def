"""Intel collateral: TCB info, QE identity and CRLs, their signatures and windows, and the TCB
status they give a quote.

The collateral document is JSON (one object, or a list of them for several platforms)::

    {"tcb_info": "<the tcbInfo JSON text exactly as served>", "tcb_info_signature": "<hex r||s>",
     "tcb_info_issuer_chain": "<PEM: Intel SGX TCB Signing, root>",
     "qe_identity": "<the enclaveIdentity JSON text>", "qe_identity_signature": "<hex>",
     "qe_identity_issuer_chain": "<PEM>",
     "root_ca_crl": "<hex DER or PEM>", "pck_crl": "<hex DER or PEM>", ...}

``tcb_info`` and ``qe_identity`` may instead hold the PCS response bodies
(``{"tcbInfo": {...}, "signature": "..."}``), with no separate signature. Signatures cover the
JSON text as served, byte for byte, so it is never re-serialised.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from geode.attestation._evidence_certs import check_validity, common_name, verify_issued_by
from geode.attestation._intel_pck import PckChain, parse_fully
from geode.attestation._intel_quote import SgxReport, TdReport
from geode.errors import EvidenceError

__all__ = [
    "IntelCollateral",
    "QeIdentity",
    "SignedJson",
    "TcbInfo",
    "TcbVerdict",
    "check_collateral",
    "evaluate_tcb",
    "parse_collateral",
    "tcb_verdict",
    "verify_signed_json",
]

PLATFORM_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
IDENTITY_STATUSES = ("UpToDate", "OutOfDate", "Revoked")


def _hex(value: object) -> object:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError("expected hex") from None
    return value


Hex = Annotated[bytes, BeforeValidator(_hex)]
Svn = Annotated[int, Field(ge=0, le=0xFFFF)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Component(_Model):
    svn: Annotated[int, Field(ge=0, le=255)]


class _LevelTcb(_Model):
    sgxtcbcomponents: Annotated[list[_Component], Field(min_length=16, max_length=16)]
    pcesvn: Svn
    tdxtcbcomponents: Annotated[list[_Component], Field(min_length=16, max_length=16)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _version_2(cls, value: object) -> object:
        # TCB info version 2 spells the components sgxtcbcomp01svn .. sgxtcbcomp16svn.
        if (
            isinstance(value, dict)
            and "sgxtcbcomponents" not in value
            and "sgxtcbcomp01svn" in value
        ):
            parts = [{"svn": value.get(f"sgxtcbcomp{i:02d}svn")} for i in range(1, 17)]
            return {**value, "sgxtcbcomponents": parts}
        return value


class _TcbLevel(_Model):
    tcb: _LevelTcb
    tcb_date: str = Field(alias="tcbDate")
    status: str = Field(alias="tcbStatus")
    advisory_ids: list[str] = Field(default_factory=list, alias="advisoryIDs")


class _IsvTcb(_Model):
    isvsvn: Svn


class _IdentityLevel(_Model):
    tcb: _IsvTcb
    status: str = Field(alias="tcbStatus")
    advisory_ids: list[str] = Field(default_factory=list, alias="advisoryIDs")


class _TdxModule(_Model):
    mrsigner: Annotated[Hex, Field(min_length=48, max_length=48)]
    attributes: Annotated[Hex, Field(min_length=8, max_length=8)]
    attributes_mask: Annotated[Hex, Field(min_length=8, max_length=8, alias="attributesMask")]


class _TdxModuleIdentity(_TdxModule):
    id: str
    tcb_levels: Annotated[list[_IdentityLevel], Field(min_length=1, alias="tcbLevels")]


class TcbInfo(_Model):
    id: str = "SGX"  # version 2 has no id and is SGX only
    version: Annotated[int, Field(ge=2, le=3)]
    issue_date: datetime.datetime = Field(alias="issueDate")
    next_update: datetime.datetime = Field(alias="nextUpdate")
    fmspc: Annotated[Hex, Field(min_length=6, max_length=6)]
    pce_id: Annotated[Hex, Field(min_length=2, max_length=2, alias="pceId")]
    tcb_type: int = Field(0, alias="tcbType")
    evaluation_number: int = Field(0, alias="tcbEvaluationDataNumber")
    tdx_module: _TdxModule | None = Field(None, alias="tdxModule")
    tdx_module_identities: list[_TdxModuleIdentity] = Field(
        default_factory=list, alias="tdxModuleIdentities"
    )
    tcb_levels: Annotated[list[_TcbLevel], Field(min_length=1, alias="tcbLevels")]


class QeIdentity(_Model):
    id: str
    version: Annotated[int, Field(ge=2, le=2)]
    issue_date: datetime.datetime = Field(alias="issueDate")
    next_update: datetime.datetime = Field(alias="nextUpdate")
    evaluation_number: int = Field(0, alias="tcbEvaluationDataNumber")
    miscselect: Annotated[Hex, Field(min_length=4, max_length=4)]
    miscselect_mask: Annotated[Hex, Field(min_length=4, max_length=4, alias="miscselectMask")]
    attributes: Annotated[Hex, Field(min_length=16, max_length=16)]
    attributes_mask: Annotated[Hex, Field(min_length=16, max_length=16, alias="attributesMask")]
    mrsigner: Annotated[Hex, Field(min_length=32, max_length=32)]
    isvprodid: Svn
    tcb_levels: Annotated[list[_IdentityLevel], Field(min_length=1, alias="tcbLevels")]


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


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    advisory_ids: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)


# -- reading the document -------------------------------------------------------------------------


def _error(field_name: str, message: str) -> EvidenceError:
    return EvidenceError(message, field=f"collateral.{field_name}")


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
    try:
        return [parse_fully(cert) for cert in x509.load_pem_x509_certificates(value.encode())]
    except (
        ValueError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ):
        raise _error(what, "expected PEM certificates") from None


def _signed(doc: dict[str, object], name: str, member: str) -> SignedJson:
    text = doc.get(name)
    if not isinstance(text, str):
        raise _error(name, "missing")
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
    try:
        if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
            crl = x509.load_pem_x509_crl(value.encode())
        elif isinstance(value, str):
            crl = x509.load_der_x509_crl(bytes.fromhex(value))
        else:
            raise ValueError("not text")
        # Decode every field now: cryptography decodes lazily, and would raise on first use.
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, list(crl.extensions))
        _ = [(entry.serial_number, list(entry.extensions)) for entry in crl]
    except (ValueError, x509.DuplicateExtension) as exc:
        raise _error(what, f"expected a CRL, hex DER or PEM ({exc})") from None
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
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
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
    if crl.issuer != issuer.subject:
        raise _error(
            what, f"issued by {crl.issuer.rfc4514_string()}, expected {common_name(issuer)!r}"
        )
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise _error(what, f"not signed by {common_name(issuer)!r}")
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
    root = next((r for r in roots if r.subject == signer.issuer), None)
    if root is None:
        raise _error(
            f"{what}_issuer_chain", f"{common_name(signer)!r} is not issued by a trusted root"
        )
    verify_issued_by(signer, root, f"{what} signing certificate")
    check_validity(signer, at, f"the {what} signing certificate")
    _check_not_revoked(signer, root_crl, f"{what} signing certificate", "root_ca_crl")
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _error(f"{what}_issuer_chain", "the signing key is not ECDSA")
    der = encode_dss_signature(
        int.from_bytes(signed.signature[:32], "big"), int.from_bytes(signed.signature[32:], "big")
    )
    try:
        key.verify(der, signed.text.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _error(what, f"signature by {common_name(signer)!r} does not verify") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


_M = TypeVar("_M", bound=BaseModel)


@functools.lru_cache(maxsize=32)
def _model(model: type[_M], text: str, what: str) -> _M:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _error(f"{what}.{where}" if where else what, first["msg"]) from None


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    return all(v & m == e & m for v, e, m in zip(value, expected, mask, strict=True))


def _merge(*lists: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update(dict.fromkeys(items))
    return tuple(seen)


def _converge(platform: str, component: str) -> str:
    """A platform status with a QE's or TDX module's: an out-of-date component makes the
    platform out of date (keeping 'configuration needed'); a revoked one revokes it."""
    if component == "Revoked":
        return "Revoked"
    if component == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return platform


def _status(level_status: str, allowed: Sequence[str], what: str) -> str:
    if level_status not in allowed:
        raise _error(what, f"unrecognised TCB status {level_status!r}")
    return level_status


def _identity_level(levels: Sequence[_IdentityLevel], isvsvn: int, what: str) -> _IdentityLevel:
    for level in levels:
        if isvsvn >= level.tcb.isvsvn:
            return level
    raise _error(what, f"ISVSVN {isvsvn} is below every TCB level (not supported)")


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
    info = _model(TcbInfo, collateral.tcb_info.text, "tcb_info")
    _check_window("tcb_info", info.issue_date, info.next_update, at)
    identity = _model(QeIdentity, collateral.qe_identity.text, "qe_identity")
    _check_window("qe_identity", identity.issue_date, identity.next_update, at)
    return info, identity


def tcb_verdict(
    info: TcbInfo,
    identity: QeIdentity,
    *,
    chain: PckChain,
    qe: SgxReport,
    td: TdReport | None,
    quote_version: int,
) -> TcbVerdict:
    """The TCB status of a platform (and TD) under checked TCB info and QE identity."""
    kind = "TDX" if td is not None else "SGX"
    if info.id != kind:
        raise _error("tcb_info.id", f"TCB info for {info.id}, the quote is {kind}")
    if td is not None and info.version < 3:
        raise _error("tcb_info.version", "TDX needs TCB info version 3")
    if info.tcb_type != 0:
        raise _error("tcb_info.tcbType", f"unsupported TCB type {info.tcb_type}")
    if info.fmspc != chain.tcb.fmspc or info.pce_id != chain.tcb.pce_id:
        raise _error(
            "tcb_info.fmspc",
            f"TCB info for FMSPC {info.fmspc.hex()} / PCE {info.pce_id.hex()}, the PCK "
            f"certificate is FMSPC {chain.tcb.fmspc.hex()} / PCE {chain.tcb.pce_id.hex()}",
        )
    expected_id = "TD_QE" if td is not None else "QE"
    if identity.id != expected_id:
        raise _error("qe_identity.id", f"identity of {identity.id}, the quote needs {expected_id}")
    if qe.mrsigner != identity.mrsigner or qe.isv_prod_id != identity.isvprodid:
        raise _error("qe_identity", "the quoting enclave is not the one the identity names")
    misc = qe.misc_select.to_bytes(4, "little")
    if not _masked_equal(misc, identity.miscselect, identity.miscselect_mask) or not _masked_equal(
        qe.attributes, identity.attributes, identity.attributes_mask
    ):
        raise _error("qe_identity", "the quoting enclave's MISCSELECT or attributes do not match")
    qe_level = _identity_level(identity.tcb_levels, qe.isv_svn, "qe_identity.tcbLevels")
    qe_status = _status(qe_level.status, IDENTITY_STATUSES, "qe_identity.tcbLevels")

    sgx_level, tdx_level = _match_levels(info.tcb_levels, chain, td)
    level = tdx_level or sgx_level
    status = _status(level.status, PLATFORM_STATUSES, "tcb_info.tcbLevels")
    advisories: list[Sequence[str]] = [level.advisory_ids]
    details = {"tcb_date": level.tcb_date, "qe_tcb_status": qe_status}
    if td is not None:
        module = _module_level(info, td, quote_version)
        if module is not None:
            module_status = _status(
                module.status, IDENTITY_STATUSES, "tcb_info.tdxModuleIdentities"
            )
            details["tdx_module_tcb_status"] = module_status
            status = _converge(status, module_status)
            advisories.append(module.advisory_ids)
    status = _converge(status, qe_status)
    advisories.append(qe_level.advisory_ids)
    details["tcb_evaluation_data_number"] = str(info.evaluation_number)
    return TcbVerdict(status, _merge(*advisories), details)


def _match_levels(
    levels: Sequence[_TcbLevel], chain: PckChain, td: TdReport | None
) -> tuple[_TcbLevel, _TcbLevel | None]:
    """The first level the PCK's TCB reaches and, for TDX, the first the TD's TEE TCB SVN
    reaches too (its first two bytes left to the module identity when the module says so)."""
    sgx_level: _TcbLevel | None = None
    for level in levels:
        if chain.tcb.pce_svn < level.tcb.pcesvn or any(
            mine < theirs.svn
            for mine, theirs in zip(
                chain.tcb.cpu_svn_components, level.tcb.sgxtcbcomponents, strict=True
            )
        ):
            continue
        sgx_level = sgx_level or level
        if td is None:
            return level, None
        if level.tcb.tdxtcbcomponents is None:
            raise _error("tcb_info.tcbLevels", "a TDX TCB level without tdxtcbcomponents")
        start = 2 if td.tee_tcb_svn[1] > 0 else 0
        if all(td.tee_tcb_svn[i] >= level.tcb.tdxtcbcomponents[i].svn for i in range(start, 16)):
            return sgx_level, level
    what = "the platform's TCB" if sgx_level is None else "the TD's TEE TCB SVN"
    raise _error("tcb_info.tcbLevels", f"{what} is below every TCB level (not supported)")


def _module_level(info: TcbInfo, td: TdReport, quote_version: int) -> _IdentityLevel | None:
    """The TDX module's TCB level, after checking the module's signer and attributes."""
    version, isvsvn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    module: _TdxModule | None
    if version == 0 and quote_version > 3:
        module, levels = info.tdx_module, None
    else:
        wanted = f"TDX_{version:02X}"
        found = next((m for m in info.tdx_module_identities if m.id.upper() == wanted), None)
        if found is None:
            raise _error("tcb_info.tdxModuleIdentities", f"no identity {wanted} for the TDX module")
        module, levels = found, found.tcb_levels
    if module is None:
        raise _error("tcb_info.tdxModule", "missing")
    if td.mrsignerseam != module.mrsigner or not _masked_equal(
        td.seam_attributes, module.attributes, module.attributes_mask
    ):
        raise _error("tcb_info.tdxModule", "the TDX module's signer or attributes do not match")
    return (
        None if levels is None else _identity_level(levels, isvsvn, "tcb_info.tdxModuleIdentities")
    )
