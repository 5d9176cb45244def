"""Synthetic Intel DCAP evidence under a test root: quotes (SGX v3/v4/v5, TDX v4/v5), a PCK
chain with the SGX extension, and collateral (TCB info, QE identity, CRLs) signed by a test TCB
signing key. Everything the real vectors cannot reach (debug enclaves, every TCB status, revoked
certificates, other certification data) is built here.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

QE_VENDOR = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
QE_MRSIGNER = bytes(range(32))
TD_QE_PRODUCT, QE_PRODUCT = 2, 1
FMSPC = bytes.fromhex("00906ed50000")
PCE_ID = bytes(2)
CPU_SVN = bytes([4, 4, 2, 2, 3, 1, 0, 5] + [0] * 8)
PCE_SVN = 13
NOW = datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC)
ISSUED = NOW - datetime.timedelta(days=10)
NEXT = NOW + datetime.timedelta(days=20)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: Sequence[x509.ExtensionType] = (),
    serial: int = 1,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2035, 1, 1, tzinfo=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


# -- a little DER for the SGX extension ---------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _int(value: int, tag: int = 0x02) -> bytes:
    return _der(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _pair(oid: str, value: bytes) -> bytes:
    return _der(0x30, _oid(oid) + value)


SGX = "1.2.840.113741.1.13.1"


def sgx_extension(cpu_svn: bytes, pce_svn: int, fmspc: bytes, pce_id: bytes) -> bytes:
    tcb = b"".join(_pair(f"{SGX}.2.{i + 1}", _int(svn)) for i, svn in enumerate(cpu_svn))
    tcb += _pair(f"{SGX}.2.17", _int(pce_svn)) + _pair(f"{SGX}.2.18", _der(0x04, cpu_svn))
    return _der(
        0x30,
        _pair(f"{SGX}.1", _der(0x04, bytes(16)))
        + _pair(f"{SGX}.2", _der(0x30, tcb))
        + _pair(f"{SGX}.3", _der(0x04, pce_id))
        + _pair(f"{SGX}.4", _der(0x04, fmspc))
        + _pair(f"{SGX}.5", _int(0, 0x0A)),
    )


# -- the test PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb_signer: x509.Certificate

    def chain_pem(self, *, with_root: bool = True) -> bytes:
        certs = [self.pck, self.ca] + ([self.root] if with_root else [])
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_pki(
    *,
    cpu_svn: bytes = CPU_SVN,
    pce_svn: int = PCE_SVN,
    fmspc: bytes = FMSPC,
    root_name: str = "Test SGX Root CA",
) -> Pki:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    root = _cert(root_name, keys[0], root_name, keys[0], ca=True)
    ca = _cert("Test SGX PCK Platform CA", keys[1], root_name, keys[0], ca=True, serial=2)
    extension = x509.UnrecognizedExtension(
        x509.ObjectIdentifier(SGX), sgx_extension(cpu_svn, pce_svn, fmspc, PCE_ID)
    )
    pck = _cert(
        "Test SGX PCK Certificate",
        keys[2],
        "Test SGX PCK Platform CA",
        keys[1],
        ca=False,
        extensions=[extension],
        serial=3,
    )
    tcb = _cert("Test SGX TCB Signing", keys[3], root_name, keys[0], ca=False, serial=4)
    return Pki(keys[0], root, keys[1], ca, keys[2], pck, keys[3], tcb)


@functools.cache
def pki() -> Pki:
    return make_pki()


# -- reports and quotes -------------------------------------------------------------------------


def sgx_report(
    *,
    mrenclave: bytes = b"\x11" * 32,
    mrsigner: bytes = b"\x22" * 32,
    product_id: int = 7,
    svn: int = 3,
    debug: bool = False,
    report_data: bytes = bytes(64),
    misc_select: int = 0,
    attributes: bytes | None = None,
    cpu_svn: bytes = CPU_SVN,
) -> bytes:
    flags = 0x05 | (0x02 if debug else 0)
    attrs = attributes if attributes is not None else struct.pack("<QQ", flags, 0xE7)
    return (
        cpu_svn
        + struct.pack("<I", misc_select)
        + bytes(12)
        + bytes(16)
        + attrs
        + mrenclave
        + bytes(32)
        + mrsigner
        + bytes(32)
        + bytes(64)
        + struct.pack("<HHH", product_id, svn, 0)
        + bytes(42)
        + bytes(16)
        + report_data
    )


def td_report(
    *,
    mrtd: bytes = b"\x33" * 48,
    rtmrs: Sequence[bytes] = (b"\x40" * 48, b"\x41" * 48, b"\x42" * 48, b"\x43" * 48),
    mrconfigid: bytes = bytes(48),
    debug: bool = False,
    report_data: bytes = bytes(64),
    tee_tcb_svn: bytes = bytes([3, 0, 5] + [0] * 13),
    mrsignerseam: bytes = bytes(48),
    tdx15: bool = False,
    td_attributes: int | None = None,
) -> bytes:
    """A TD report body; ``td_attributes`` replaces the default (SEPT_VE_DISABLE, and DEBUG
    when ``debug``)."""
    attributes = 0x10000000 | (1 if debug else 0) if td_attributes is None else td_attributes
    body = (
        tee_tcb_svn
        + b"\x01" * 48
        + mrsignerseam
        + bytes(8)
        + struct.pack("<Q", attributes)
        + struct.pack("<Q", 0xE7)
        + mrtd
        + mrconfigid
        + bytes(48)
        + bytes(48)
        + b"".join(rtmrs)
        + report_data
    )
    return body + (tee_tcb_svn + b"\x05" * 48 if tdx15 else b"")


def _raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class QuoteSpec:
    """What to put in a quote; defaults give a valid SGX v3 quote."""

    version: int = 3
    tee: str = "sgx"
    body: bytes = b""
    body_type: int | None = None  # v5 only; None: from the TEE and body size
    auth_data: bytes = bytes(range(32))
    qe_svn: int = 8
    qe_product: int | None = None
    qe_report_data: bytes | None = None  # None: the correct binding
    qe_attributes: bytes = bytes.fromhex("11000000000000000000000000000000")
    cert_type: int = 5
    chain: bytes | None = None  # None: the PKI's chain, with root
    trailing: bytes = b""
    pki: Pki = field(default_factory=pki)


def build_quote(spec: QuoteSpec) -> bytes:
    tdx = spec.tee == "tdx"
    body = spec.body or (td_report() if tdx else sgx_report())
    header = struct.pack(
        "<HHIHH", spec.version, 2, 0x81 if tdx else 0, 0 if spec.version > 3 else 10, 13
    )
    header += QE_VENDOR + bytes(20)
    if spec.version == 5:
        body_type = spec.body_type or (1 if not tdx else 2 if len(body) == 584 else 3)
        header += struct.pack("<HI", body_type, len(body))
    signed = header + body
    attestation = ec.generate_private_key(ec.SECP256R1())
    point = attestation.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    binding = hashlib.sha256(point + spec.auth_data).digest() + bytes(32)
    product = spec.qe_product if spec.qe_product is not None else (2 if tdx else 1)
    qe = sgx_report(
        mrsigner=QE_MRSIGNER,
        product_id=product,
        svn=spec.qe_svn,
        report_data=binding if spec.qe_report_data is None else spec.qe_report_data,
        attributes=spec.qe_attributes,
    )
    chain = spec.chain if spec.chain is not None else spec.pki.chain_pem() + b"\0"
    pck_data = struct.pack("<H", len(spec.auth_data)) + spec.auth_data
    pck_data += struct.pack("<HI", spec.cert_type, len(chain)) + chain
    qe_part = qe + _raw_signature(spec.pki.pck_key, qe) + pck_data
    # v4 and v5 wrap the QE report in certification data of type 6.
    wrapped = struct.pack("<HI", 6, len(qe_part)) + qe_part
    certification = qe_part if spec.version == 3 else wrapped
    signature_data = _raw_signature(attestation, signed) + point + certification
    return signed + struct.pack("<I", len(signature_data)) + signature_data + spec.trailing


# -- collateral ---------------------------------------------------------------------------------


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def tcb_level(
    status: str,
    *,
    cpu_svn: bytes = CPU_SVN,
    pce_svn: int = PCE_SVN,
    tdx: bytes | None = bytes([3, 0, 5] + [0] * 13),
    advisories: Sequence[str] = (),
) -> dict[str, object]:
    tcb: dict[str, object] = {
        "sgxtcbcomponents": [{"svn": s} for s in cpu_svn],
        "pcesvn": pce_svn,
    }
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": s} for s in tdx]
    level: dict[str, object] = {"tcb": tcb, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def identity_level(svn: int, status: str, advisories: Sequence[str] = ()) -> dict[str, object]:
    level: dict[str, object] = {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z"}
    level["tcbStatus"] = status
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def tcb_info(
    *,
    tdx: bool = False,
    levels: Sequence[dict[str, object]] | None = None,
    module_identities: Sequence[dict[str, object]] | None = None,
    fmspc: bytes = FMSPC,
    issued: datetime.datetime = ISSUED,
    next_update: datetime.datetime = NEXT,
) -> dict[str, object]:
    info: dict[str, object] = {
        "id": "TDX" if tdx else "SGX",
        "version": 3,
        "issueDate": _stamp(issued),
        "nextUpdate": _stamp(next_update),
        "fmspc": fmspc.hex().upper(),
        "pceId": PCE_ID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tcbLevels": list(
            levels or [tcb_level("UpToDate", tdx=None if not tdx else bytes([3, 0, 5] + [0] * 13))]
        ),
    }
    if tdx:
        info["tdxModule"] = {
            "mrsigner": "00" * 48,
            "attributes": "00" * 8,
            "attributesMask": "FF" * 8,
        }
        if module_identities is not None:
            info["tdxModuleIdentities"] = list(module_identities)
    return info


def qe_identity(
    *,
    tdx: bool = False,
    levels: Sequence[dict[str, object]] | None = None,
    issued: datetime.datetime = ISSUED,
    next_update: datetime.datetime = NEXT,
) -> dict[str, object]:
    return {
        "id": "TD_QE" if tdx else "QE",
        "version": 2,
        "issueDate": _stamp(issued),
        "nextUpdate": _stamp(next_update),
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": 2 if tdx else 1,
        "tcbLevels": list(levels or [identity_level(8, "UpToDate")]),
    }


def crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    revoked: Sequence[int] = (),
    issued: datetime.datetime = ISSUED,
    next_update: datetime.datetime = NEXT,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(issued)
        .next_update(next_update)
        # As Intel's CRLs: a CRL number and the issuer's key id (RFC 5280 asks for both).
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(issued).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def collateral(
    *,
    tdx: bool = False,
    info: dict[str, object] | None = None,
    identity: dict[str, object] | None = None,
    root_crl: bytes | None = None,
    pck_crl: bytes | None = None,
    pki: Pki | None = None,
    tamper: str = "",
) -> dict[str, object]:
    """A collateral document; ``tamper`` names a text to alter after signing."""
    kit = pki or globals()["pki"]()
    info_text = json.dumps(info or tcb_info(tdx=tdx), separators=(",", ":"))
    identity_text = json.dumps(identity or qe_identity(tdx=tdx), separators=(",", ":"))
    chain = (
        kit.tcb_signer.public_bytes(serialization.Encoding.PEM)
        + kit.root.public_bytes(serialization.Encoding.PEM)
    ).decode()
    doc: dict[str, object] = {
        "tcb_info": info_text,
        "tcb_info_signature": _raw_signature(kit.tcb_key, info_text.encode()).hex(),
        "tcb_info_issuer_chain": chain,
        "qe_identity": identity_text,
        "qe_identity_signature": _raw_signature(kit.tcb_key, identity_text.encode()).hex(),
        "qe_identity_issuer_chain": chain,
        "root_ca_crl": (root_crl or crl(kit.root, kit.root_key)).hex(),
        "pck_crl": (pck_crl or crl(kit.ca, kit.ca_key)).hex(),
    }
    if tamper:
        doc[tamper] = str(doc[tamper]).replace('"version"', ' "version"', 1)
    return doc


def collateral_bytes(**kwargs: object) -> bytes:
    return json.dumps(collateral(**kwargs)).encode()  # type: ignore[arg-type]
