"""Sealing keys from the TEE: SEV-SNP derived keys and Gramine's SGX seal keys.

A Coordinator seals its state under a key only the same code on the same platform derives
again. Each TEE gives such a key its own way; ``sealing_key`` turns every one into Geode's
32 bytes with HKDF-SHA256 (info ``b"geode sealing key v1"``, the TEE and the key's source), so
a key is never used raw and keys from different sources never coincide.

SEV-SNP: ioctl ``SNP_GET_DERIVED_KEY`` = _IOWR('S', 1, struct snp_guest_request_ioctl)
(0xC0205301) on ``/dev/sev-guest``; the argument points at the request and the response::

    request (struct snp_derived_key_req, 32 bytes, little-endian)
    offset  size  field
    0x00    4     root_key_select      0: VCEK (the chip's, per TCB), 1: VMRK (the VM root key)
    0x04    4     reserved             0
    0x08    8     guest_field_select   bits mixed into the key: 0 guest policy, 1 image id,
                                       2 family id, 3 measurement, 4 guest SVN, 5 TCB version
    0x10    4     vmpl                 at least the guest's own VMPL
    0x14    4     guest_svn            at most the launched guest SVN
    0x18    8     tcb_version          at most the current TCB

    response (MSG_KEY_RSP, 64 bytes)
    0x00    4     status               0: success; otherwise the firmware's error
    0x04    28    reserved
    0x20    32    derived key

Geode asks for the VCEK root with the guest policy and the measurement selected, at the VMPL
its reports carry, with SVN and TCB 0: the key is bound to this chip, this launch measurement
and this policy (so a debug or migratable launch of the same image gets another key), and
survives firmware TCB updates. HOST_DATA cannot be selected: the same image launched with
other host data derives the same key.

Gramine: ``/dev/attestation/keys/_sgx_mrenclave`` (bound to the enclave's measurement) or
``/dev/attestation/keys/_sgx_mrsigner`` (bound to the signer and product id, for code that is
updated), 16 bytes each, from the CPU's EGETKEY.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geode.attestation._providers import DeviceFiles, Ioctl, guest_request
from geode.attestation._reader import ByteReader
from geode.errors import EvidenceError

__all__ = [
    "GFS_MEASUREMENT",
    "GFS_POLICY",
    "SEALING_KEY_INFO",
    "SEALING_KEY_SIZE",
    "SNP_GET_DERIVED_KEY",
    "SNP_SEALING_FIELDS",
    "build_derived_key_request",
    "gramine_seal_key",
    "parse_derived_key_response",
    "sealing_key",
    "snp_derived_key",
]

SNP_GET_DERIVED_KEY = 0xC0205301
DERIVED_KEY_REQUEST_SIZE = 32
DERIVED_KEY_RESPONSE_SIZE = 64
ROOT_KEY_VCEK, ROOT_KEY_VMRK = 0, 1
GFS_POLICY = 1 << 0
GFS_IMAGE_ID = 1 << 1
GFS_FAMILY_ID = 1 << 2
GFS_MEASUREMENT = 1 << 3
GFS_GUEST_SVN = 1 << 4
GFS_TCB_VERSION = 1 << 5
_GFS_ALL = (1 << 6) - 1
# What Geode's SNP sealing key is bound to (besides the chip): the policy and the measurement.
SNP_SEALING_FIELDS = GFS_POLICY | GFS_MEASUREMENT
# MSG_KEY_RSP status values the firmware documents.
_FIRMWARE_STATUS = {0x16: "invalid parameters", 0x27: "invalid key"}

SEALING_KEY_INFO = b"geode sealing key v1"
SEALING_KEY_SIZE = 32
GRAMINE_KEY_SIZE = 16


def build_derived_key_request(
    *,
    field_select: int = SNP_SEALING_FIELDS,
    vmpl: int = 0,
    root_key: int = ROOT_KEY_VCEK,
    guest_svn: int = 0,
    tcb_version: int = 0,
) -> bytes:
    """struct snp_derived_key_req (32 bytes, layout above)."""
    if root_key not in (ROOT_KEY_VCEK, ROOT_KEY_VMRK):
        raise ValueError(f"root_key_select must be 0 (VCEK) or 1 (VMRK), not {root_key}")
    if field_select & ~_GFS_ALL or field_select < 0:
        raise ValueError(f"guest_field_select 0x{field_select:x} has bits the firmware lacks")
    if not 0 <= vmpl <= 3:
        raise ValueError(f"vmpl must be 0 to 3, not {vmpl}")
    return struct.pack("<IIQIIQ", root_key, 0, field_select, vmpl, guest_svn, tcb_version)


def parse_derived_key_response(response: bytes) -> bytes:
    """The 32-byte key in a MSG_KEY_RSP; the firmware's refusal as one ``EvidenceError``."""
    r = ByteReader(response, "SNP derived key response")
    status = r.u32("status")
    if status != 0:
        name = _FIRMWARE_STATUS.get(status, "unknown error")
        raise r.error(
            "status", f"the firmware refused the derived key: {name} (status 0x{status:x})", 0
        )
    r.skip("reserved", 28)
    return r.bytes("derived_key", 32)


def snp_derived_key(
    device: Path,
    ioctl: Ioctl,
    *,
    vmpl: int = 0,
    field_select: int = SNP_SEALING_FIELDS,
) -> bytes:
    """The firmware's derived key (VCEK root) through ``device`` (``/dev/sev-guest``)."""
    request = build_derived_key_request(field_select=field_select, vmpl=vmpl)
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise EvidenceError(f"cannot open: {exc.strerror or exc}", field=str(device)) from None
    try:
        exitinfo2, response, error = guest_request(
            ioctl, fd, SNP_GET_DERIVED_KEY, request, DERIVED_KEY_RESPONSE_SIZE
        )
    finally:
        os.close(fd)
    if error is not None:
        raise EvidenceError(
            f"SNP_GET_DERIVED_KEY failed: {error.strerror or error} "
            f"(firmware error 0x{exitinfo2 & 0xFFFFFFFF:x}, host error 0x{exitinfo2 >> 32:x})",
            field=str(device),
        )
    return parse_derived_key_response(response[:DERIVED_KEY_RESPONSE_SIZE])


def gramine_seal_key(root: Path, files: DeviceFiles, which: str) -> bytes:
    """Gramine's 16-byte SGX seal key ``keys/<which>`` (``_sgx_mrenclave`` or
    ``_sgx_mrsigner``) under ``root`` (``/dev/attestation``)."""
    path = root / "keys" / which
    try:
        key = files.read(path)
    except OSError as exc:
        raise EvidenceError(f"cannot read: {exc.strerror or exc}", field=str(path)) from None
    if len(key) != GRAMINE_KEY_SIZE:
        raise EvidenceError(f"{len(key)} bytes, {GRAMINE_KEY_SIZE} expected", field=str(path))
    return key


def sealing_key(tee_key: bytes, *context: str) -> bytes:
    """Geode's 32-byte sealing key from a TEE's key; ``context`` names the TEE and the key's
    source (``"sev-snp"``; ``"sgx-gramine", "_sgx_mrenclave"``)."""
    info = b"\0".join([SEALING_KEY_INFO, *(part.encode() for part in context)])
    return HKDF(hashes.SHA256(), SEALING_KEY_SIZE, salt=None, info=info).derive(tee_key)
