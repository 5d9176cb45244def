"""The AMD SEV-SNP attestation report (versions 2 to 5): layout, TCB versions, parsing.

The report is 1184 bytes, little-endian; the firmware signs bytes 0..0x29F with the chip's VCEK
or the cloud provider's VLEK (ECDSA P-384, SHA-384). Version 3 added the CPUID family, model and
stepping (which tell Turin, with its own TCB layout, from Milan and Genoa); version 5 added the
mitigation vectors. Offsets below are the ABI's; see docs/attestation.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from geode.attestation._reader import ByteReader

__all__ = [
    "SNP_REPORT_SIZE",
    "SNP_SIGNED_SIZE",
    "SigningKey",
    "SnpProduct",
    "SnpReport",
    "TcbVersion",
    "parse_snp_report",
]

SNP_REPORT_SIZE = 0x4A0
SNP_SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = range(2, 6)
ECDSA_P384_SHA384 = 1
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
_SIGNATURE_COMPONENT = 72  # R and S are each 72 little-endian bytes, zero above 48


class SnpProduct(enum.Enum):
    """An EPYC generation, as AMD's certificate names spell it."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def turin_tcb_layout(self) -> bool:
        return self is SnpProduct.TURIN

    @classmethod
    def from_cpuid(cls, family: int, model: int) -> SnpProduct | None:
        """The product of a CPUID family and model, ``None`` when this code does not know it."""
        if family == 0x19:
            if model <= 0x0F:
                return cls.MILAN
            if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
                return cls.GENOA
        if family == 0x1A and model <= 0x1F:
            return cls.TURIN
        return None


class SigningKey(enum.Enum):
    """Which key signed a report (signer info bits 4:2)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """An SEV-SNP TCB version: the security patch level of each firmware component.

    Milan and Genoa put the bootloader in byte 0, the TEE in 1, SNP in 6 and the microcode in 7;
    Turin adds the FMC in byte 0 and moves bootloader, TEE and SNP to bytes 1, 2 and 3.
    """

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def components(self) -> dict[str, int]:
        """By name, in the manifest's vocabulary (``fmc`` only on Turin)."""
        out = {} if self.fmc is None else {"fmc": self.fmc}
        out.update(bootloader=self.bootloader, tee=self.tee, snp=self.snp, microcode=self.microcode)
        return out

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.components().items())


@dataclass(frozen=True)
class SnpReport:
    """A parsed report. TCB values are raw (their layout depends on the product, which the
    endorsement key's chain settles); ``decode_tcb`` reads them."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SNP_SIGNED_SIZE]

    @property
    def debug(self) -> bool:
        """The guest policy allows a debugger (the hypervisor may read and write its memory)."""
        return bool(self.policy & POLICY_DEBUG)

    @property
    def cpuid_product(self) -> SnpProduct | None:
        return None if self.cpuid is None else SnpProduct.from_cpuid(*self.cpuid[:2])

    def decode_tcb(self, raw: int, product: SnpProduct) -> TcbVersion:
        return TcbVersion.decode(raw, turin=product.turin_tcb_layout)


def _version_triple(reader: ByteReader, field: str) -> tuple[int, int, int]:
    build, minor, major = reader.bytes(field, 3)
    reader.skip(field, 1)
    return major, minor, build


def parse_snp_report(data: bytes) -> SnpReport:
    """Parse the first 1184 bytes of ``data`` as a report; bytes after them are not read here
    (evidence may carry a certificate table there). Raises ``EvidenceError`` naming the field."""
    r = ByteReader(data, "SEV-SNP report")
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise r.error("version", f"unsupported report version {version} (2 to 5 known)", 0)
    guest_svn = r.u32("guest_svn")
    policy = r.u64("policy")
    family_id = r.bytes("family_id", 16)
    image_id = r.bytes("image_id", 16)
    vmpl = r.u32("vmpl")
    signature_algo = r.u32("signature_algo")
    if signature_algo != ECDSA_P384_SHA384:
        raise r.error(
            "signature_algo", f"unknown signature algorithm {signature_algo} (1 is known)", 0x34
        )
    current_tcb = r.u64("current_tcb")
    platform_info = r.u64("platform_info")
    signer_info = r.u32("signer_info")
    key_bits = (signer_info >> 2) & 0x7
    try:
        signing_key = SigningKey(key_bits)
    except ValueError:
        raise r.error("signer_info", f"reserved signing key selector {key_bits}", 0x48) from None
    r.skip("reserved", 4)
    report_data = r.bytes("report_data", 64)
    measurement = r.bytes("measurement", 48)
    host_data = r.bytes("host_data", 32)
    id_key_digest = r.bytes("id_key_digest", 48)
    author_key_digest = r.bytes("author_key_digest", 48)
    report_id = r.bytes("report_id", 32)
    report_id_ma = r.bytes("report_id_ma", 32)
    reported_tcb = r.u64("reported_tcb")
    cpuid_bytes = r.bytes("cpuid", 3)
    cpuid = None if version < 3 else (cpuid_bytes[0], cpuid_bytes[1], cpuid_bytes[2])
    r.seek(0x1A0)
    chip_id = r.bytes("chip_id", 64)
    committed_tcb = r.u64("committed_tcb")
    current_version = _version_triple(r, "current_version")
    committed_version = _version_triple(r, "committed_version")
    launch_tcb = r.u64("launch_tcb")
    launch_mit = r.u64("launch_mit_vector")
    current_mit = r.u64("current_mit_vector")
    r.seek(SNP_SIGNED_SIZE)
    sig_r = r.bytes("signature.r", _SIGNATURE_COMPONENT)
    sig_s = r.bytes("signature.s", _SIGNATURE_COMPONENT)
    r.seek(SNP_REPORT_SIZE - 1)
    r.skip("reserved", 1)  # the report is whole: a truncated tail is not accepted either
    return SnpReport(
        raw=bytes(data[:SNP_REPORT_SIZE]),
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=family_id,
        image_id=image_id,
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=current_tcb,
        platform_info=platform_info,
        author_key_en=bool(signer_info & 1),
        mask_chip_key=bool(signer_info & 2),
        signing_key=signing_key,
        report_data=report_data,
        measurement=measurement,
        host_data=host_data,
        id_key_digest=id_key_digest,
        author_key_digest=author_key_digest,
        report_id=report_id,
        report_id_ma=report_id_ma,
        reported_tcb=reported_tcb,
        cpuid=cpuid,
        chip_id=chip_id,
        committed_tcb=committed_tcb,
        current_version=current_version,
        committed_version=committed_version,
        launch_tcb=launch_tcb,
        launch_mit_vector=launch_mit if version >= 5 else None,
        current_mit_vector=current_mit if version >= 5 else None,
        signature_r=int.from_bytes(sig_r, "little"),
        signature_s=int.from_bytes(sig_s, "little"),
    )
