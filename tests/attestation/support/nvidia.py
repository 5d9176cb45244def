"""Synthetic NVIDIA SPDM measurement reports under a test root (P-384, as NVIDIA's chain)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
END = datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC)
AT = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extensions: list[x509.UnrecognizedExtension] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class GpuPki:
    """A test device root, one intermediate, and a GPU leaf with a DICE FWID."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ica: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    fwid: bytes

    @classmethod
    def create(cls, *, leaf_ca: bool = False) -> GpuPki:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _cert(
            "Test Device Identity CA", root_key, "Test Device Identity CA", root_key, ca=True
        )
        ica_key = ec.generate_private_key(ec.SECP384R1())
        ica = _cert("Test GPU ICA", ica_key, "Test Device Identity CA", root_key, ca=True)
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        fwid = os.urandom(48)
        dice = x509.UnrecognizedExtension(DICE_TCB_INFO, b"\x30\x32\x04\x30" + fwid)
        leaf = _cert(
            "Test GPU FMC LF", leaf_key, "Test GPU ICA", ica_key, ca=leaf_ca, extensions=[dice]
        )
        return cls(root_key, root, ica, leaf_key, leaf, fwid)

    def chain_der(self, *, with_root: bool = True) -> list[bytes]:
        certs = [self.leaf, self.ica, *([self.root] if with_root else [])]
        return [cert.public_bytes(Encoding.DER) for cert in certs]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.leaf, self.ica, self.root))


def tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def block(index: int, value: bytes, *, spec: int = 1, kind: int = 1) -> bytes:
    measurement = bytes([kind]) + len(value).to_bytes(2, "little") + value
    return bytes([index, spec]) + len(measurement).to_bytes(2, "little") + measurement


def forge_spdm(
    key: ec.EllipticCurvePrivateKey,
    *,
    nonce: bytes,
    measurements: dict[int, bytes],
    opaque: bytes = b"",
    request: bytes | None = None,
    response_head: bytes | None = None,
    blocks: bytes | None = None,
    block_count: int | None = None,
) -> bytes:
    """Request ‖ response, signed by ``key`` over everything but the signature."""
    req = request if request is not None else b"\x11\xe0\x01\xff" + nonce + b"\x00"
    record = (
        blocks if blocks is not None else b"".join(block(i, v) for i, v in measurements.items())
    )
    count = len(measurements) if block_count is None else block_count
    head = response_head if response_head is not None else b"\x11\x60\x00\x00"
    response = (
        head
        + bytes([count])
        + len(record).to_bytes(3, "little")
        + record
        + os.urandom(32)
        + len(opaque).to_bytes(2, "little")
        + opaque
    )
    signed = req + response
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")
