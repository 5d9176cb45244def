"""The SGX enclave signature structure (SIGSTRUCT): what an operator reads the expected SGX
reference values from.

Gramine's signing tool writes it as the ``.sig`` file next to the manifest; EINIT checks it,
and an enclave's report then carries its MRENCLAVE (``enclave_hash``), its MRSIGNER (the SHA-256
of the signer's RSA modulus, as the structure stores it) and its ISVPRODID and ISVSVN. Reading
the values from the signed structure, rather than recomputing MRENCLAVE from the manifest and
every trusted file, leaves the measurement to the tool that produced it.

Layout (1808 bytes, little-endian; Intel SDM vol. 3D, "Enclave Signature Structure"):

====== ====== =======================================================================
offset size   field
====== ====== =======================================================================
0      16     header (fixed: 06000000 e1000000 00000100 00000000)
16     4      vendor (0, or 0x8086 for Intel's own enclaves)
20     4      date (BCD yyyymmdd)
24     16     header2 (fixed: 01010000 60000000 60000000 01000000)
40     4      swdefined
44     84     reserved (zero)
128    384    modulus (RSA-3072, little-endian)
512    4      exponent (3)
516    384    signature (little-endian)
900    4      miscselect
904    4      miscmask
908    4      cet_attributes, cet_attributes_mask, reserved
912    16     isvfamilyid
928    16     attributes (flags u64 || xfrm u64; flags bit 1 = DEBUG)
944    16     attributemask
960    32     enclavehash (MRENCLAVE)
992    16     reserved
1008   16     isvextprodid
1024   2      isvprodid
1026   2      isvsvn
1028   12     reserved
1040   384    q1 (helper for the exponent-3 check; not read here)
1424   384    q2 (likewise)
====== ====== =======================================================================

The signature covers bytes 0..127 and 900..1027 (RSASSA-PKCS1-v1_5, SHA-256). It is checked
here so that a truncated or edited file is refused rather than turned into reference values; it
says nothing about who the signer is, which is exactly what MRSIGNER then pins.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from geode.attestation._reader import ByteReader
from geode.errors import EvidenceError

__all__ = ["SIGSTRUCT_SIZE", "Sigstruct", "parse_sigstruct"]

SIGSTRUCT_SIZE = 1808
HEADER = bytes.fromhex("06000000e10000000000010000000000")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")
EXPONENT = 3
MODULUS_SIZE = 384
_ATTRIBUTE_DEBUG = 1 << 1
_SIGNED = ((0, 128), (900, 1028))


@dataclass(frozen=True)
class Sigstruct:
    """A parsed SIGSTRUCT whose signature was checked; hashes are raw bytes."""

    vendor: int
    date: int
    swdefined: int
    modulus: bytes
    miscselect: int
    miscmask: int
    isv_family_id: bytes
    attributes: bytes
    attribute_mask: bytes
    mrenclave: bytes
    isv_ext_prod_id: bytes
    isv_prod_id: int
    isv_svn: int

    @property
    def mrsigner(self) -> bytes:
        """SHA-256 of the modulus as the structure stores it (little-endian)."""
        return hashlib.sha256(self.modulus).digest()

    @property
    def debug(self) -> bool:
        """The enclave is signed to launch in debug mode (its memory is readable)."""
        return bool(int.from_bytes(self.attributes[:8], "little") & _ATTRIBUTE_DEBUG)


def parse_sigstruct(data: bytes) -> Sigstruct:
    """Parse a ``.sig`` file and check its signature; raises ``EvidenceError`` naming the field
    and offset of what is wrong."""
    r = ByteReader(data, "SIGSTRUCT")
    if len(data) != SIGSTRUCT_SIZE:
        raise r.error("sigstruct", f"a SIGSTRUCT is {SIGSTRUCT_SIZE} bytes, got {len(data)}", 0)
    if r.bytes("header", 16) != HEADER:
        raise r.error("header", "not a SIGSTRUCT (unexpected header)", 0)
    vendor = r.u32("vendor")
    if vendor not in (0, 0x8086):
        raise r.error("vendor", f"vendor {vendor:#x} is neither 0 nor 0x8086", 16)
    date = r.u32("date")
    if r.bytes("header2", 16) != HEADER2:
        raise r.error("header2", "not a SIGSTRUCT (unexpected second header)", 24)
    swdefined = r.u32("swdefined")
    r.skip("reserved", 84)
    modulus = r.bytes("modulus", MODULUS_SIZE)
    exponent = r.u32("exponent")
    if exponent != EXPONENT:
        raise r.error("exponent", f"SGX signing keys have exponent 3, this one {exponent}", 512)
    signature = r.bytes("signature", MODULUS_SIZE)
    miscselect = r.u32("miscselect")
    miscmask = r.u32("miscmask")
    r.skip("cet_attributes", 4)
    isv_family_id = r.bytes("isvfamilyid", 16)
    attributes = r.bytes("attributes", 16)
    attribute_mask = r.bytes("attributemask", 16)
    mrenclave = r.bytes("enclavehash", 32)
    r.skip("reserved", 16)
    isv_ext_prod_id = r.bytes("isvextprodid", 16)
    isv_prod_id = r.u16("isvprodid")
    isv_svn = r.u16("isvsvn")
    _check_signature(data, modulus, signature)
    return Sigstruct(
        vendor=vendor,
        date=date,
        swdefined=swdefined,
        modulus=modulus,
        miscselect=miscselect,
        miscmask=miscmask,
        isv_family_id=isv_family_id,
        attributes=attributes,
        attribute_mask=attribute_mask,
        mrenclave=mrenclave,
        isv_ext_prod_id=isv_ext_prod_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
    )


def _check_signature(data: bytes, modulus: bytes, signature: bytes) -> None:
    n = int.from_bytes(modulus, "little")
    if n.bit_length() != 8 * MODULUS_SIZE:
        raise EvidenceError("the modulus is not a 3072-bit number", field="modulus", offset=128)
    signed = b"".join(data[start:end] for start, end in _SIGNED)
    key = rsa.RSAPublicNumbers(EXPONENT, n).public_key()
    try:
        # The structure stores the signature little-endian; RSA reads it big-endian.
        key.verify(signature[::-1], signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise EvidenceError(
            "the signature does not verify under the modulus (file edited or truncated?)",
            field="signature",
            offset=516,
        ) from None
