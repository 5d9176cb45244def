"""Verification of NVIDIA Hopper (H100, H200) GPU attestation: the SPDM 1.1 GET_MEASUREMENTS
exchange, signed by the GPU.

Evidence of kind ``nvidia`` is the 37-byte request (``11 e0``, param1 bit 0 "sign", param2 ``ff``
"all", the caller's 32-byte nonce, the slot), the response (version, ``60``, params, block count,
u24 record length, measurement blocks, the GPU's nonce, u16 opaque length, opaque TLVs, a 96-byte
r‖s ECDSA P-384 signature), and, as Geode's provider sends it, a trailer::

    offset size
    0      8    magic "GEODENV1"
    8      1    confidential-computing mode, as the driver in the guest reports it:
                0 off, 1 on, 2 devtools
    9      3    reserved (zero)
    12     4    length of the certificate chain (u32)
    16     n    the GPU's certificate chain, DER certificates back to back, leaf first

Verification without collateral: the signature over request ‖ response (without the signature)
by the chain's leaf (``GH100 A01 GSP FMC LF``); each link of the chain up to the pinned NVIDIA
Device Identity CA; the leaf's DICE FWID equals the report's FWID; the mode is ``on``. The claims
then say ``tcb_status`` ``Unverified`` and ``checked`` = {signature, chain}: nothing says the
firmware that signed is one NVIDIA released, nor that the chain is not revoked. The caller's nonce
comes back as the claims' report data (the nonce then 32 zero bytes), which is how Geode's binding
check sees it; ``verify_nvidia_evidence(nonce=...)`` checks it directly. Matching the measurement
blocks against a package's golden values is ``match_claims``'s.

The mode is not in the signed report: a GPU in devtools mode still signs valid-looking reports.
The trailer carries what the guest's driver says; a report that does not state mode ``on`` (off,
devtools, or a raw report without the trailer) is refused (field ``cc_mode``).

What the status rests on is in the claims' ``tcb_reasons`` (so in every verdict's reasons):
``UpToDate`` means the measurements match signed, non-revoked NVIDIA RIMs for the driver and
VBIOS versions the report states, not that those are the newest releases
(``NVIDIA_UP_TO_DATE_REASON``); the mode is the guest's driver's word, not signed by the GPU
(``NVIDIA_CC_MODE_REASON``, always).

Collateral (``collateral``, ``geode evidence verify --collateral``, ``TrustAnchors``) is one JSON
object, all three keys required (a partial document is refused, naming what is missing)::

    {"driver_rim": "<the driver's RIM, XML text>",
     "vbios_rim": "<the VBIOS's RIM, XML text>",
     "ocsp": ["<base64 DER OCSP response>", ...]}

as NVIDIA's RIM service (the XML) and OCSP responder (``ocsp.ndis.nvidia.com``) hand them out;
fetching them is the caller's. With it, additionally: each RIM (``_nvidia_rim``: SWID tag,
enveloped XML-DSig) chains to a trusted NVIDIA RIM root, its signature verifies with its leaf, and
its version is the report's driver or VBIOS version; every certificate of the GPU's chain below
the root but its leaf (made by the GPU's firmware, unknown to OCSP), and every certificate of both
RIM chains below the root, has a good OCSP response, fresh at ``at`` and signed by its issuer or a
delegated responder (``_nvidia_ocsp``); and every active measurement index ``i`` of the RIMs
(driver and VBIOS together; both claiming one index is refused) matches one of its alternative
values in the report's block ``i + 1``, a mismatch refused naming the index (the details:
``_nvidia_collateral``). Then ``tcb_status`` is ``UpToDate`` and ``checked`` = {signature, chain,
revocation, tcb, reference}: ``reference`` because the verifier itself compared the measurements
with NVIDIA's signed golden values, before any package's are matched.

Roots: the device root (``nvidia_device_identity_ca.pem``) and the RIM root
(``nvidia_rim_root_ca.pem``, "NVIDIA CoRIM signing Root CA", as nvtrust ships it) are pinned by
SHA-256 and used each for its own chains; ``roots`` (tests) replaces both. What was tested:
the device chain and signature against NVIDIA's real sample report; RIMs, OCSP responses and the
comparison only against RIMs and responses Geode's tests make under their own CA (no real RIM
with its OCSP responses for the sample report is in the test vectors), so RIM parsing follows
NVIDIA's published format (nvtrust's samples) but was not run against NVIDIA's live services.
"""

from __future__ import annotations

import datetime
import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from geode.attestation._evidence import REPORT_DATA_SIZE, TCB_UNVERIFIED, Claims
from geode.attestation._evidence_certs import (
    common_name,
    load_evidence_certificates,
    public_key,
)
from geode.attestation._nvidia_chain import verify_chain
from geode.attestation._nvidia_collateral import (
    NvidiaCollateral,
    apply_collateral,
    nvidia_rim_roots,
)
from geode.attestation._nvidia_rim import Rim
from geode.attestation._reader import ByteReader
from geode.attestation._roots import certificate_sha256, load_pinned_root
from geode.errors import EvidenceError
from geode.tee import Check

__all__ = [
    "NVIDIA_CC_MODE_REASON",
    "NVIDIA_ROOT_SHA256",
    "NVIDIA_TRAILER_MAGIC",
    "NVIDIA_UP_TO_DATE_REASON",
    "CcMode",
    "SpdmMeasurementReport",
    "build_nvidia_evidence",
    "nvidia_root",
    "parse_spdm_report",
    "verify_nvidia_evidence",
    "verify_nvidia_report",
]

NVIDIA_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
NVIDIA_TRAILER_MAGIC = b"GEODENV1"
SPDM_VERSION = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_SIZE = 37
NONCE_SIZE = 32
SIGNATURE_SIZE = 96
DMTF_SPECIFICATION = 0x01
_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384_OCTETS = b"\x04\x30"


class CcMode(enum.Enum):
    """The GPU's confidential-computing mode, as the guest's driver (NVML) reports it."""

    OFF = 0
    ON = 1
    DEVTOOLS = 2


# Opaque data fields this verifier reads (NVIDIA's numbering).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_BOARD_ID = 14
OPAQUE_CHIP_SKU = 15
OPAQUE_PROJECT = 17
OPAQUE_FWID = 20


@dataclass(frozen=True)
class SpdmMeasurementReport:
    """A parsed GET_MEASUREMENTS exchange."""

    raw: bytes
    nonce: bytes
    slot: int
    version: int
    measurements: Mapping[int, bytes]
    gpu_nonce: bytes
    opaque: Mapping[int, bytes]
    signature: bytes
    signed_size: int
    trailer_offset: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[: self.signed_size]

    def opaque_text(self, field: int) -> str:
        return self.opaque.get(field, b"").split(b"\0", 1)[0].decode("ascii", errors="replace")


def _parse_request(r: ByteReader) -> tuple[int, bytes, int]:
    version = r.u8("request.version")
    if version != SPDM_VERSION:
        raise r.error("request.version", f"SPDM version 0x{version:02x}, 0x11 expected", 0)
    if r.u8("request.code") != GET_MEASUREMENTS:
        raise r.error("request.code", "not a GET_MEASUREMENTS request", 1)
    if not r.u8("request.param1") & 0x01:
        raise r.error("request.param1", "the request did not ask for a signature", 2)
    if r.u8("request.param2") != 0xFF:
        raise r.error("request.param2", "the request did not ask for all measurements", 3)
    nonce = r.bytes("request.nonce", NONCE_SIZE)
    slot = r.u8("request.slot")
    return version, nonce, slot


def _parse_blocks(r: ByteReader, count: int, end: int) -> dict[int, bytes]:
    blocks: dict[int, bytes] = {}
    for number in range(count):
        field = f"measurement_block[{number}]"
        start = r.offset
        if start >= end:
            raise r.error(field, f"{count} blocks announced, the record holds {number}")
        # index u8, specification u8, size u16, then the DMTF type u8 and value size u16.
        index, specification, size = struct.unpack("<BBH", r.bytes(field, 4))
        if index in blocks:
            raise r.error(f"{field}.index", f"measurement index {index} appears twice", start)
        if specification != DMTF_SPECIFICATION:
            raise r.error(f"{field}.specification", "not a DMTF measurement", start + 1)
        if start + 4 + size > end:
            raise r.error(f"{field}.size", "block runs past the measurement record", start + 2)
        _, value_size = struct.unpack("<BH", r.bytes(f"{field}.value_size", 3))
        if value_size + 3 != size:
            raise r.error(
                f"{field}.value_size",
                f"{value_size} + 3 does not fill the block's {size} bytes",
                start + 5,
            )
        blocks[index] = r.bytes(f"{field}.value", value_size)
    if r.offset != end:
        raise r.error("measurement_record", f"{end - r.offset} bytes after the last block")
    return blocks


def _parse_opaque(r: ByteReader, end: int) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    while r.offset < end:
        start = r.offset
        kind = r.u16("opaque.type")
        length = r.u16("opaque.length")
        if r.offset + length > end:
            raise r.error(f"opaque[{kind}]", "field runs past the opaque data", start)
        fields.setdefault(kind, r.bytes(f"opaque[{kind}]", length))
    return fields


def parse_spdm_report(data: bytes) -> SpdmMeasurementReport:
    """Parse request and response, following their length fields; bytes after the signature
    are not read here (``trailer_offset`` says where they start)."""
    r = ByteReader(data, "SPDM measurement report")
    version, nonce, slot = _parse_request(r)
    if r.u8("response.version") != version:
        raise r.error("response.version", "the response's SPDM version is not the request's", 37)
    code = r.u8("response.code")
    if code != MEASUREMENTS:
        raise r.error("response.code", f"response code 0x{code:02x}, not MEASUREMENTS", 38)
    r.u8("response.param1")
    if r.u8("response.param2") & 0x0F != slot:
        raise r.error("response.param2", "the response is from another slot than requested", 40)
    count = r.u8("response.block_count")
    length = r.u24("response.record_length")
    end = r.offset + length
    if end > len(data):
        raise r.error("response.record_length", f"record of {length} bytes truncated", 42)
    blocks = _parse_blocks(r, count, end)
    gpu_nonce = r.bytes("response.nonce", NONCE_SIZE)
    opaque_length = r.u16("response.opaque_length")
    opaque_end = r.offset + opaque_length
    if opaque_end > len(data):
        raise r.error("response.opaque_length", f"opaque data of {opaque_length} bytes truncated")
    opaque = _parse_opaque(r, opaque_end)
    signed_size = r.offset
    signature = r.bytes("response.signature", SIGNATURE_SIZE)
    return SpdmMeasurementReport(
        raw=bytes(data[: r.offset]),
        nonce=nonce,
        slot=slot,
        version=version,
        measurements=MappingProxyType(blocks),
        gpu_nonce=gpu_nonce,
        opaque=MappingProxyType(opaque),
        signature=signature,
        signed_size=signed_size,
        trailer_offset=r.offset,
    )


def _parse_trailer(data: bytes, offset: int) -> tuple[CcMode, bytes] | None:
    if offset == len(data):
        return None
    r = ByteReader(data, "Geode NVIDIA trailer", offset=offset)
    if r.bytes("trailer.magic", 8) != NVIDIA_TRAILER_MAGIC:
        raise r.error("trailer.magic", "unexpected bytes after the report's signature", offset)
    mode_value = r.u8("trailer.cc_mode")
    try:
        mode = CcMode(mode_value)
    except ValueError:
        raise r.error("trailer.cc_mode", f"unknown mode {mode_value}", offset + 8) from None
    if any(r.bytes("trailer.reserved", 3)):
        raise r.error("trailer.reserved", "reserved bytes are not zero", offset + 9)
    length = r.u32("trailer.chain_length")
    chain = r.bytes("trailer.chain", length)
    if r.remaining:
        raise r.error("trailer", f"{r.remaining} bytes after the certificate chain")
    return mode, chain


def build_nvidia_evidence(report: bytes, chain_der: Sequence[bytes], mode: CcMode) -> bytes:
    """Evidence as Geode's provider sends it: the exchange, then the trailer."""
    chain = b"".join(chain_der)
    return (
        bytes(report)
        + NVIDIA_TRAILER_MAGIC
        + bytes([mode.value, 0, 0, 0])
        + len(chain).to_bytes(4, "little")
        + chain
    )


def nvidia_root() -> x509.Certificate:
    """The pinned NVIDIA Device Identity CA shipped with Geode."""
    return load_pinned_root("nvidia_device_identity_ca.pem", NVIDIA_ROOT_SHA256)


def _check_fwid(report: SpdmMeasurementReport, leaf: x509.Certificate) -> None:
    fwid = report.opaque.get(OPAQUE_FWID)
    if fwid is None:
        return
    try:
        ext = leaf.extensions.get_extension_for_oid(_DICE_TCB_INFO).value
    except (x509.ExtensionNotFound, ValueError):
        raise EvidenceError(
            "the report has a FWID, its leaf certificate none", field="certs"
        ) from None
    value = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    if _SHA384_OCTETS + fwid not in value:
        raise EvidenceError(
            "the report's FWID is not its leaf certificate's", field=f"opaque[{OPAQUE_FWID}]"
        )


# What the claims' status and mode rest on, in every verdict's reasons.
NVIDIA_UP_TO_DATE_REASON = (
    "UpToDate: the measurements match signed, non-revoked NVIDIA RIMs for {versions} "
    "(not: the newest driver or VBIOS)"
)
NVIDIA_CC_MODE_REASON = "cc_mode on: as the guest's driver states it, not signed by the GPU"


@dataclass(frozen=True)
class NvidiaVerified:
    report: SpdmMeasurementReport
    chain: tuple[x509.Certificate, ...]
    mode: CcMode
    rims: tuple[Rim, ...] = ()

    def claims(self) -> Claims:
        report = self.report
        vbios = report.opaque.get(OPAQUE_VBIOS_VERSION, b"")
        details = {
            "cc_mode": self.mode.name.lower(),
            "spdm_version": f"{report.version >> 4}.{report.version & 0xF}",
            "driver_version": report.opaque_text(OPAQUE_DRIVER_VERSION),
            "gpu_nonce": report.gpu_nonce.hex(),
            "leaf": common_name(self.chain[0]),
        }
        if len(vbios) >= 5:
            details["vbios_version"] = _vbios_version(report)
        for name, field in (("project", OPAQUE_PROJECT), ("chip_sku", OPAQUE_CHIP_SKU)):
            if field in report.opaque:
                details[name] = report.opaque_text(field)
        if OPAQUE_FWID in report.opaque:
            details["fwid"] = report.opaque[OPAQUE_FWID].hex()
        for rim in self.rims:
            details[f"{rim.which}_rim_signer"] = common_name(rim.chain[0])
        serial = self.chain[0].subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        platform = str(serial[0].value) if serial else certificate_sha256(self.chain[0])
        checked: frozenset[Check] = frozenset({"signature", "chain"})
        reasons = [NVIDIA_CC_MODE_REASON]
        if self.rims:
            checked |= {"revocation", "tcb", "reference"}
            versions = ", ".join(f"{rim.which} {rim.version}" for rim in self.rims)
            reasons.insert(0, NVIDIA_UP_TO_DATE_REASON.format(versions=versions))
        return Claims(
            tee="nvidia",
            measurement=b"",
            report_data=report.nonce + bytes(REPORT_DATA_SIZE - NONCE_SIZE),
            debug=False,
            tcb_status="UpToDate" if self.rims else TCB_UNVERIFIED,
            checked=checked,
            platform=platform,
            measurements=report.measurements,
            details=details,
            tcb_reasons=tuple(reasons),
        )


def _vbios_version(report: SpdmMeasurementReport) -> str:
    vbios = report.opaque.get(OPAQUE_VBIOS_VERSION, b"")
    return ".".join(f"{vbios[i]:02X}" for i in (3, 2, 1, 0, 4)) if len(vbios) >= 5 else ""


def _check_mode(mode: CcMode | None, report: SpdmMeasurementReport) -> CcMode:
    offset = report.trailer_offset
    if mode is None:
        raise EvidenceError(
            "the report does not state the GPU's confidential-computing mode (no Geode trailer)",
            field="cc_mode",
            offset=offset,
        )
    if mode is CcMode.OFF:
        raise EvidenceError(
            "the GPU's confidential-computing mode is off", field="cc_mode", offset=offset + 8
        )
    if mode is CcMode.DEVTOOLS:
        raise EvidenceError(
            "the GPU is in devtools mode: not confidential", field="cc_mode", offset=offset + 8
        )
    return mode


def verify_nvidia_evidence(
    data: bytes,
    *,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
    nonce: bytes | None = None,
) -> NvidiaVerified:
    """Verify the exchange and its trailer; with ``collateral``, the RIMs, revocation and the
    measurements too. ``certs`` (PEM or DER, leaf first) stands in for the trailer's chain;
    ``roots`` replaces the pinned NVIDIA roots, device and RIM alike (tests); ``nonce`` is the
    one the caller sent, if it wants it checked here."""
    if at.tzinfo is None:
        raise ValueError("at must be an aware datetime")
    report = parse_spdm_report(data)
    trailer = _parse_trailer(data, report.trailer_offset)
    chain_bytes, chain_field, chain_offset = certs, "certs", None
    if trailer is not None and not certs:
        chain_bytes, chain_field = trailer[1], "trailer.chain"
        chain_offset = report.trailer_offset + 16
    mode = _check_mode(None if trailer is None else trailer[0], report)
    parsed = NvidiaCollateral.from_json(collateral) if collateral is not None else None
    chain = load_evidence_certificates(chain_bytes or b"", chain_field, chain_offset)
    links = verify_chain(chain, list(roots) if roots is not None else [nvidia_root()], at)
    _check_fwid(report, chain[0])
    key = public_key(chain[0], "GPU leaf certificate")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EvidenceError("the GPU's leaf key is not an ECDSA P-384 key", field="certs")
    half = SIGNATURE_SIZE // 2
    signature = encode_dss_signature(
        int.from_bytes(report.signature[:half], "big"),
        int.from_bytes(report.signature[half:], "big"),
    )
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "the report's signature does not verify with the GPU's key",
            field="response.signature",
            offset=report.signed_size,
        ) from None
    if nonce is not None and nonce != report.nonce:
        raise EvidenceError("the report answers another nonce", field="request.nonce", offset=4)
    rims: tuple[Rim, ...] = ()
    if parsed is not None:
        rim_roots = tuple(roots) if roots is not None else nvidia_rim_roots()
        rims = apply_collateral(
            parsed,
            measurements=report.measurements,
            versions={
                "driver": report.opaque_text(OPAQUE_DRIVER_VERSION),
                "vbios": _vbios_version(report),
            },
            device_links=links,
            rim_roots=rim_roots,
            at=at,
        )
    return NvidiaVerified(report, tuple(chain), mode, rims)


def verify_nvidia_report(
    data: bytes,
    *,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> Claims:
    """The ``nvidia`` verifier of ``EvidenceVerifier`` (see ``_verifier``)."""
    return verify_nvidia_evidence(
        data, certs=certs, collateral=collateral, at=at, roots=roots
    ).claims()
