"""Synthetic SEV-SNP evidence under test roots: an ARK, ASK and ASVK of our own (RSA-PSS, as
AMD's), VCEKs and VLEKs with AMD's extensions, and reports signed by them. With these, every
branch of the verifier is reached without real hardware."""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD_OID = "1.3.6.1.4.1.3704.1"
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
END = datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC)
AT = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x01)}


def amd_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str,
    issuer: str,
    public_key: object,
    not_before: datetime.datetime = START,
    not_after: datetime.datetime = END,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(amd_name(subject))
        .issuer_name(amd_name(issuer))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


@dataclass
class AmdPki:
    """A test ARK with its ASK and ASVK, named like AMD's for ``product``."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    asvk_key: rsa.RSAPrivateKey
    asvk: x509.Certificate

    @classmethod
    def create(cls, product: str = "Milan") -> AmdPki:
        ark_key = rsa.generate_private_key(65537, 2048)
        ark_name = f"ARK-{product}"
        ark = _builder(ark_name, ark_name, ark_key.public_key()).sign(
            ark_key, hashes.SHA384(), rsa_padding=PSS
        )
        ask_key = rsa.generate_private_key(65537, 2048)
        ask = _builder(f"SEV-{product}", ark_name, ask_key.public_key()).sign(
            ark_key, hashes.SHA384(), rsa_padding=PSS
        )
        asvk_key = rsa.generate_private_key(65537, 2048)
        asvk = _builder(f"SEV-VLEK-{product}", ark_name, asvk_key.public_key()).sign(
            ark_key, hashes.SHA384(), rsa_padding=PSS
        )
        return cls(product, ark_key, ark, ask_key, ask, asvk_key, asvk)

    def crl(
        self,
        *,
        revoked: tuple[x509.Certificate, ...] = (),
        issued: datetime.datetime = START,
        next_update: datetime.datetime = END,
        key: rsa.RSAPrivateKey | None = None,
        rsa_padding: padding.AsymmetricPadding = PSS,
        pem: bool = False,
        kind: str | None = "VCEK",
        distribution_point: str | None = None,
        extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    ) -> bytes:
        """AMD's CRL for this product, signed by the ARK (RSA-PSS, as AMD's), listing
        ``revoked``; ``key`` / ``rsa_padding`` forge a wrong signature. Its issuing distribution
        point states which CRL it is: ``distribution_point`` (a KDS URL), else the KDS URL of
        ``kind``'s CRL of this product; ``kind=None`` states none. ``extensions``: more, with
        their criticality."""
        if distribution_point is None and kind is not None:
            distribution_point = f"https://kdsintf.amd.com/{kind.lower()}/v1/{self.product}/crl"
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(issued)
            .next_update(next_update)
        )
        if distribution_point is not None:
            idp = x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(distribution_point)],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            )
            builder = builder.add_extension(idp, critical=True)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(issued)
                .build()
            )
        crl = builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=rsa_padding)  # type: ignore[arg-type]
        return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)

    def endorsement(
        self,
        *,
        kind: str = "VCEK",
        hwid: bytes | None = None,
        tcb: dict[str, int],
        product_name: str | None = None,
        not_before: datetime.datetime = START,
        not_after: datetime.datetime = END,
        extra: list[x509.UnrecognizedExtension] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A VCEK (or VLEK) for ``tcb`` (component name -> SPL), and its key."""
        key = ec.generate_private_key(ec.SECP384R1())
        issuer, signer = (
            (f"SEV-{self.product}", self.ask_key)
            if kind == "VCEK"
            else (f"SEV-VLEK-{self.product}", self.asvk_key)
        )
        builder = _builder(f"SEV-{kind}", issuer, key.public_key(), not_before, not_after)
        oids = {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 8, "fmc": 9}
        extensions = [
            x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID}.1"), der_int(1)),
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"{AMD_OID}.2"), ia5(product_name or self.product)
            ),
        ]
        for name, value in tcb.items():
            oid = x509.ObjectIdentifier(f"{AMD_OID}.3.{oids[name]}")
            extensions.append(x509.UnrecognizedExtension(oid, der_int(value)))
        if hwid is not None:
            extensions.append(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{AMD_OID}.4"), hwid)
            )
        if kind == "VLEK":
            extensions.append(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier(f"{AMD_OID}.5"), ia5("CN=csp.example")
                )
            )
        for extension in [*extensions, *(extra or [])]:
            builder = builder.add_extension(extension, critical=False)
        return key, builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)


def tcb_raw(
    product: str, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int = 0
) -> int:
    if product == "Turin":
        raw = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
    else:
        raw = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
    return int.from_bytes(raw, "little")


def forge_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    product: str = "Milan",
    version: int = 3,
    tcb: int,
    chip_id: bytes = b"",
    report_data: bytes = bytes(64),
    measurement: bytes = b"\x42" * 48,
    host_data: bytes = bytes(32),
    vmpl: int = 0,
    policy: int = 0x30000,
    signer_info: int = 0,
    cpuid: tuple[int, int, int] | None = None,
    signature_algo: int = 1,
) -> bytes:
    """A report signed by ``key`` (the layout of FORMATS.md, offsets as the ABI)."""
    r = bytearray(0x4A0)
    struct.pack_into("<IIQ", r, 0, version, 0, policy)
    struct.pack_into("<IIQQI", r, 0x30, vmpl, signature_algo, tcb, 0x1, signer_info)
    r[0x50:0x90] = report_data
    r[0x90:0xC0] = measurement
    r[0xC0:0xE0] = host_data
    struct.pack_into("<Q", r, 0x180, tcb)
    if version >= 3:
        r[0x188:0x18B] = bytes(cpuid or CPUID[product])
    r[0x1A0 : 0x1A0 + len(chip_id)] = chip_id
    struct.pack_into("<Q", r, 0x1E0, tcb)
    r[0x1E8:0x1EC] = bytes([7, 55, 1, 0])
    r[0x1EC:0x1F0] = bytes([7, 55, 1, 0])
    struct.pack_into("<Q", r, 0x1F0, tcb)
    sign_report(r, key)
    return bytes(r)


def sign_report(report: bytearray, key: ec.EllipticCurvePrivateKey) -> None:
    """(Re)sign a report in place."""
    der = key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    sig_r, sig_s = decode_dss_signature(der)
    report[0x2A0:0x2E8] = sig_r.to_bytes(72, "little")
    report[0x2E8:0x330] = sig_s.to_bytes(72, "little")
