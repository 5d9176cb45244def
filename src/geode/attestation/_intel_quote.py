"""Intel DCAP quotes (SGX v3, SGX/TDX v4, v5): the layout, parsed by its length fields.

A quote is a 48-byte header, a report body (an SGX enclave report or a TD report), a 32-bit
length, and that many bytes of signature data: the quote signature by the attestation key, the
attestation key, and the quoting enclave's report signed by the PCK certificate, with the QE
authentication data and the PCK chain (certification data type 5, PEM). Version 3 lays the QE
report out directly; versions 4 and 5 wrap it in certification data of type 6. Version 5 says the
body's type and size in front of the body. Whatever follows the signature data is not part of
the quote: real quotes carry padding, and one sample carries text. Offsets are the quote's.
"""

from __future__ import annotations

from dataclasses import dataclass

from geode.attestation._reader import ByteReader
from geode.errors import EvidenceError

__all__ = [
    "BODY_SGX",
    "BODY_TDX10",
    "BODY_TDX15",
    "INTEL_QE_VENDOR_ID",
    "TEE_SGX",
    "TEE_TDX",
    "IntelQuote",
    "SgxReport",
    "TdReport",
    "parse_intel_quote",
    "parse_sgx_report",
    "parse_td_report",
]

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TEE_SGX = 0x00
TEE_TDX = 0x81
ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
BODY_SGX, BODY_TDX10, BODY_TDX15 = 1, 2, 3
_BODY_SIZES = {BODY_SGX: SGX_REPORT_SIZE, BODY_TDX10: 584, BODY_TDX15: 648}
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
SGX_ATTRIBUTE_DEBUG = 1 << 1
TD_ATTRIBUTE_DEBUG = 1 << 0


@dataclass(frozen=True)
class SgxReport:
    """An SGX enclave report body (384 bytes): the application enclave's, or the QE's."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes  # flags (u64) || xfrm (u64), as in the report
    mrenclave: bytes
    mrsigner: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.attributes[:8], "little") & SGX_ATTRIBUTE_DEBUG)


@dataclass(frozen=True)
class TdReport:
    """A TD report body: 584 bytes for TDX 1.0, 648 for TDX 1.5 (``tee_tcb_svn2``,
    ``mrservicetd``)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes = b""
    mrservicetd: bytes = b""

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTRIBUTE_DEBUG)


@dataclass(frozen=True)
class IntelQuote:
    """A parsed quote; ``*_offset`` locate fields for error messages."""

    version: int
    tee_type: int
    qe_svn: int  # v3 header only, else 0
    pce_svn: int  # v3 header only, else 0
    body_type: int
    body: bytes
    body_offset: int
    signed: bytes  # header and body: what the attestation key signs
    signature: bytes
    signature_offset: int
    attestation_key: bytes
    attestation_key_offset: int
    qe_report: bytes
    qe_report_offset: int
    qe_report_signature: bytes
    qe_report_signature_offset: int
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes
    cert_data_offset: int
    size: int  # bytes the quote occupies; trailing data after it is ignored

    @property
    def is_tdx(self) -> bool:
        return self.tee_type == TEE_TDX


def parse_intel_quote(data: bytes) -> IntelQuote:
    """Parse a DCAP quote; raises ``EvidenceError`` naming the field and offset."""
    r = ByteReader(data, "quote")
    version = r.u16("header.version")
    if version not in (3, 4, 5):
        raise r.error("header.version", f"unsupported quote version {version}", 0)
    key_type = r.u16("header.attestation_key_type")
    if key_type != ECDSA_P256:
        raise r.error(
            "header.attestation_key_type", f"unsupported attestation key type {key_type}", 2
        )
    tee_type = r.u32("header.tee_type")
    if version == 3:
        tee_type = TEE_SGX  # v3 quotes are SGX only; the field is reserved
    elif tee_type not in (TEE_SGX, TEE_TDX):
        raise r.error("header.tee_type", f"unknown TEE type {tee_type:#x}", 4)
    qe_svn, pce_svn = r.u16("header.qe_svn"), r.u16("header.pce_svn")
    if version != 3:
        qe_svn = pce_svn = 0
    if r.bytes("header.qe_vendor_id", 16) != INTEL_QE_VENDOR_ID:
        raise r.error("header.qe_vendor_id", "not Intel's quoting enclave", 12)
    r.skip("header.user_data", 20)

    if version == 5:
        body_type = r.u16("body_type")
        size_offset = r.offset
        body_size = r.u32("body_size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise r.error("body_type", f"unknown body type {body_type}", HEADER_SIZE)
        if body_size != expected:
            raise r.error(
                "body_size", f"{body_size}, a type {body_type} body is {expected}", size_offset
            )
        if (body_type == BODY_SGX) != (tee_type == TEE_SGX):
            raise r.error(
                "body_type",
                f"body type {body_type} in a quote of TEE type {tee_type:#x}",
                HEADER_SIZE,
            )
    else:
        body_type = BODY_SGX if tee_type == TEE_SGX else BODY_TDX10
    body_offset = r.offset
    body = r.bytes("body", _BODY_SIZES[body_type])
    signed = data[: r.offset]

    sig_len_offset = r.offset
    sig_len = r.u32("signature_data_len")
    if sig_len > r.remaining:
        raise r.error(
            "signature_data_len", f"{sig_len} bytes declared, {r.remaining} present", sig_len_offset
        )
    s = ByteReader(data[: r.offset + sig_len], "signature data", offset=r.offset)
    signature_offset = s.offset
    signature = s.bytes("signature", 64)
    key_offset = s.offset
    attestation_key = s.bytes("attestation_key", 64)
    if version != 3:
        # v4/v5: the QE report travels in certification data of type 6.
        outer_type = s.u16("certification_data.type")
        if outer_type != CERT_QE_REPORT:
            raise s.error(
                "certification_data.type",
                f"expected type 6 (QE report), got {outer_type}",
                s.offset - 2,
            )
        outer_size = s.u32("certification_data.size")
        if outer_size != s.remaining:  # it is the rest of the signature data, exactly
            raise s.error(
                "certification_data.size",
                f"{outer_size} bytes declared, {s.remaining} left in the signature data",
                s.offset - 4,
            )
        s = ByteReader(
            data[: s.offset + outer_size], "QE report certification data", offset=s.offset
        )
    qe_report_offset = s.offset
    qe_report = s.bytes("qe_report", SGX_REPORT_SIZE)
    qe_sig_offset = s.offset
    qe_report_signature = s.bytes("qe_report_signature", 64)
    auth_len = s.u16("qe_auth_data.size")
    qe_auth_data = s.bytes("qe_auth_data", auth_len)
    cert_type = s.u16("pck_certification_data.type")
    cert_size_offset = s.offset
    cert_size = s.u32("pck_certification_data.size")
    if cert_size > s.remaining:
        raise s.error(
            "pck_certification_data.size",
            f"{cert_size} bytes declared, {s.remaining} present",
            cert_size_offset,
        )
    cert_data_offset = s.offset
    cert_data = s.bytes("pck_certification_data", cert_size)
    if s.remaining:
        raise s.error(
            "certification_data", f"{s.remaining} unexplained bytes inside the signature data"
        )
    return IntelQuote(
        version=version,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        body_type=body_type,
        body=body,
        body_offset=body_offset,
        signed=signed,
        signature=signature,
        signature_offset=signature_offset,
        attestation_key=attestation_key,
        attestation_key_offset=key_offset,
        qe_report=qe_report,
        qe_report_offset=qe_report_offset,
        qe_report_signature=qe_report_signature,
        qe_report_signature_offset=qe_sig_offset,
        qe_auth_data=qe_auth_data,
        cert_type=cert_type,
        cert_data=cert_data,
        cert_data_offset=cert_data_offset,
        size=sig_len_offset + 4 + sig_len,
    )


def parse_sgx_report(body: bytes, base: int = 0) -> SgxReport:
    r = ByteReader(body, "SGX report", base=base)
    if len(body) != SGX_REPORT_SIZE:
        raise r.error("report", f"an SGX report is {SGX_REPORT_SIZE} bytes, got {len(body)}", 0)
    cpu_svn = r.bytes("cpu_svn", 16)
    misc_select = r.u32("misc_select")
    r.skip("reserved", 12)
    isv_ext_prod_id = r.bytes("isv_ext_prod_id", 16)
    attributes = r.bytes("attributes", 16)
    mrenclave = r.bytes("mrenclave", 32)
    r.skip("reserved", 32)
    mrsigner = r.bytes("mrsigner", 32)
    r.skip("reserved", 32)
    config_id = r.bytes("config_id", 64)
    isv_prod_id = r.u16("isv_prod_id")
    isv_svn = r.u16("isv_svn")
    config_svn = r.u16("config_svn")
    r.skip("reserved", 42)
    isv_family_id = r.bytes("isv_family_id", 16)
    report_data = r.bytes("report_data", 64)
    return SgxReport(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        isv_ext_prod_id=isv_ext_prod_id,
        attributes=attributes,
        mrenclave=mrenclave,
        mrsigner=mrsigner,
        config_id=config_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=isv_family_id,
        report_data=report_data,
    )


def parse_td_report(body: bytes, base: int = 0) -> TdReport:
    r = ByteReader(body, "TD report", base=base)
    if len(body) not in (_BODY_SIZES[BODY_TDX10], _BODY_SIZES[BODY_TDX15]):
        raise EvidenceError(
            f"a TD report is 584 or 648 bytes, got {len(body)}", field="body", offset=base
        )
    fields = [r.bytes(name, size) for name, size in _TD_FIELDS]
    rtmrs = (fields[10], fields[11], fields[12], fields[13])
    extra = [r.bytes(name, size) for name, size in _TD15_FIELDS] if r.remaining else [b"", b""]
    return TdReport(
        tee_tcb_svn=fields[0],
        mrseam=fields[1],
        mrsignerseam=fields[2],
        seam_attributes=fields[3],
        td_attributes=fields[4],
        xfam=fields[5],
        mrtd=fields[6],
        mrconfigid=fields[7],
        mrowner=fields[8],
        mrownerconfig=fields[9],
        rtmrs=rtmrs,
        report_data=fields[14],
        tee_tcb_svn2=extra[0],
        mrservicetd=extra[1],
    )


_TD_FIELDS = (
    ("tee_tcb_svn", 16),
    ("mrseam", 48),
    ("mrsignerseam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mrtd", 48),
    ("mrconfigid", 48),
    ("mrowner", 48),
    ("mrownerconfig", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)
_TD15_FIELDS = (("tee_tcb_svn2", 16), ("mrservicetd", 48))
