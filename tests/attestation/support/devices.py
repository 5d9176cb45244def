"""Fake TEE devices that answer like the kernel's and Gramine's interfaces, for tests only.

=================== ========================================================================
``FakeGramine``     Gramine's ``/dev/attestation`` pseudo-files: writing ``user_report_data``
                    makes the next ``quote``; ``keys/_sgx_mrenclave`` and ``keys/_sgx_mrsigner``
                    read as 16-byte keys derived from the CPU secret and the enclave identity
``FakeTsm``         the kernel's side of a configfs-tsm report entry (``provider``,
                    ``generation``, ``inblob`` -> ``outblob``/``auxblob``, ``privlevel``)
``FakeSevGuest``    the sev-guest driver's ioctls: ``SNP_GET_REPORT``, ``SNP_GET_EXT_REPORT`` and
                    ``SNP_GET_DERIVED_KEY``, reading and writing through the pointers in the
                    ``snp_guest_request_ioctl`` argument as the kernel does
``SnpFirmware``     what the PSP answers one launched guest: reports signed by the chip's VCEK,
                    the host's certificate table, derived keys
=================== ========================================================================

A derived key is a real function of what was launched: HMAC(chip or CPU secret, the selected
fields of the launched identity), so a guest launched with another measurement, policy or
enclave gets another key, and the same launch gets the same key in any process.
"""

from __future__ import annotations

import ctypes
import errno
import hmac
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation._providers import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    DeviceFiles,
)
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from tests.attestation.support.snp import AmdPki, forge_report, tcb_raw

__all__ = [
    "DEFAULT_CHIP",
    "DEFAULT_TCB",
    "SNP_GET_DERIVED_KEY",
    "FakeGramine",
    "FakeSevGuest",
    "FakeTsm",
    "SgxEnclave",
    "SnpFirmware",
    "gramine_tree",
    "sev_guest_node",
    "snp_responder",
    "tsm_tree",
]

# _IOWR('S', 1, struct snp_guest_request_ioctl): the number the kernel expects, written out
# here so the fake does not take it from the code under test.
SNP_GET_DERIVED_KEY = 0xC0205301
DEFAULT_CHIP = bytes(range(100, 164))
DEFAULT_TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}
# MSG_KEY_RSP status values (SEV-SNP firmware ABI).
FW_INVALID_PARAM = 0x16
FW_INVALID_KEY = 0x27
# GUEST_FIELD_SELECT bits the fake knows: policy, image id, family id, measurement, guest SVN,
# TCB version (bit 6, the launch mitigation vector, needs message version 2).
_GFS_KNOWN = 0x3F


@dataclass
class SnpFirmware:
    """The PSP's answers to one launched guest on one chip (a synthetic Genoa by default)."""

    pki: AmdPki
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    secret: bytes = b"\x5a" * 32  # the chip's VCEK-root secret the derived keys come from
    chip_id: bytes = DEFAULT_CHIP
    tcb: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TCB))
    measurement: bytes = b"\x42" * 48
    policy: int = 0x30000
    host_data: bytes = bytes(32)
    vmpl: int = 0  # the guest's own VMPL: reports and keys for a lower one are refused
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0

    @classmethod
    def create(cls, product: str = "Genoa", **launch: object) -> SnpFirmware:
        pki = AmdPki.create(product)
        key, vcek = pki.endorsement(hwid=DEFAULT_CHIP, tcb=dict(DEFAULT_TCB))
        return cls(pki, key, vcek, **launch)  # type: ignore[arg-type]

    @property
    def tcb_version(self) -> int:
        return tcb_raw(self.pki.product, **self.tcb)

    def report(self, report_data: bytes, vmpl: int = 0) -> bytes:
        return forge_report(
            self.vcek_key,
            product=self.pki.product,
            tcb=self.tcb_version,
            chip_id=self.chip_id,
            report_data=report_data,
            measurement=self.measurement,
            host_data=self.host_data,
            policy=self.policy,
            vmpl=vmpl,
        )

    def cert_table(self, *, pad_to: int = 0) -> bytes:
        table = build_cert_table(
            [
                (CERT_TABLE_GUIDS["ask"], self.pki.ask.public_bytes(Encoding.DER)),
                (CERT_TABLE_GUIDS["vcek"], self.vcek.public_bytes(Encoding.DER)),
            ]
        )
        return table + bytes(max(0, pad_to - len(table)))

    def derive_key(
        self, root_key_select: int, field_select: int, vmpl: int, guest_svn: int, tcb: int
    ) -> tuple[int, bytes]:
        """MSG_KEY_REQ as the firmware answers it: ``(status, key)``."""
        if root_key_select not in (0, 1) or field_select & ~_GFS_KNOWN or vmpl > 3:
            return FW_INVALID_PARAM, bytes(32)
        if vmpl < self.vmpl or guest_svn > self.guest_svn or tcb > self.tcb_version:
            return FW_INVALID_PARAM, bytes(32)
        parts = [
            b"vcek" if root_key_select == 0 else b"vmrk",
            struct.pack("<IQ", vmpl, field_select),
        ]
        selected = [
            self.policy.to_bytes(8, "little"),
            self.image_id,
            self.family_id,
            self.measurement,
            guest_svn.to_bytes(4, "little"),
            tcb.to_bytes(8, "little"),
        ]
        parts += [value for bit, value in enumerate(selected) if field_select >> bit & 1]
        return 0, hmac.digest(self.secret, b"|".join(parts), "sha256")


# -- Gramine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SgxEnclave:
    """What an SGX CPU launched, for Gramine's keys: the CPU secret and the enclave identity."""

    secret: bytes
    mrenclave: bytes
    mrsigner: bytes
    product_id: int = 0
    svn: int = 0

    def key(self, policy: str) -> bytes:
        """EGETKEY's 16-byte seal key: MRENCLAVE-bound, or MRSIGNER- and ISVPRODID-bound."""
        if policy == "_sgx_mrenclave":
            message = b"mrenclave|" + self.mrenclave
        elif policy == "_sgx_mrsigner":
            message = b"mrsigner|" + self.mrsigner + struct.pack("<H", self.product_id)
        else:
            raise FileNotFoundError(errno.ENOENT, "No such key", policy)
        return hmac.digest(self.secret, message, "sha256")[:16]


class FakeGramine(DeviceFiles):
    """Gramine's pseudo-files: writing ``user_report_data`` makes the next quote (``quote``
    gives it from the report data; by default ``SGXQUOTE`` + the data); the ``keys/`` files
    read as the enclave's seal keys."""

    def __init__(
        self,
        quote: Callable[[bytes], bytes] | None = None,
        enclave: SgxEnclave | None = None,
    ) -> None:
        self.quote = quote or (lambda data: b"SGXQUOTE" + data)
        self.enclave = enclave

    def read(self, path: Path) -> bytes:
        if path.parent.name == "keys" and self.enclave is not None:
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            return self.enclave.key(path.name)
        return super().read(path)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "user_report_data":
            (path.parent / "quote").write_bytes(self.quote(data))


def gramine_tree(dev: Path, kind: bytes = b"dcap", *, keys: bool = True) -> Path:
    """``dev/attestation`` with the files Gramine shows (and its ``keys/`` directory)."""
    root = dev / "attestation"
    root.mkdir(parents=True, exist_ok=True)
    (root / "attestation_type").write_bytes(kind)
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(b"")
    if keys:
        (root / "keys").mkdir(exist_ok=True)
        for name in ("_sgx_mrenclave", "_sgx_mrsigner"):
            (root / "keys" / name).write_bytes(b"")  # read through FakeGramine.read
    return root


# -- configfs-tsm -------------------------------------------------------------------------


class FakeTsm(DeviceFiles):
    """The kernel's side of a configfs-tsm report entry: ``respond(inblob, privlevel)`` gives
    ``(outblob, auxblob)``."""

    def __init__(
        self,
        provider: str,
        respond: Callable[[bytes, int], tuple[bytes, bytes]],
        *,
        extra_generations: int = 0,
    ) -> None:
        self.provider = provider
        self.respond = respond
        self.extra_generations = extra_generations
        self.made: list[Path] = []

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        self.made.append(path)
        for name, value in [
            ("provider", f"{self.provider}\n".encode()),
            ("generation", b"0\n"),
            ("inblob", b""),
            ("outblob", b""),
            ("privlevel", b"0\n"),
            ("auxblob", b""),
        ]:
            (path / name).write_bytes(value)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        generation = int((path.parent / "generation").read_bytes()) + 1
        if path.name == "inblob":
            vmpl = int((path.parent / "privlevel").read_bytes())
            outblob, auxblob = self.respond(data, vmpl)
            (path.parent / "outblob").write_bytes(outblob)
            (path.parent / "auxblob").write_bytes(auxblob)
            generation += self.extra_generations
        (path.parent / "generation").write_bytes(f"{generation}\n".encode())

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)  # configfs removes the attributes with the entry


def tsm_tree(base: Path) -> Path:
    """``base/sys/kernel/config/tsm/report``, as a mounted configfs with configfs-tsm shows."""
    root = base / "sys" / "kernel" / "config" / "tsm" / "report"
    root.mkdir(parents=True, exist_ok=True)
    return root


def snp_responder(
    firmware: SnpFirmware, *, pad_to: int = 0
) -> Callable[[bytes, int], tuple[bytes, bytes]]:
    """configfs-tsm's ``sev_guest`` provider over ``firmware``: report, certificate table."""

    def respond(inblob: bytes, vmpl: int) -> tuple[bytes, bytes]:
        if vmpl < firmware.vmpl:
            raise OSError(errno.EINVAL, "Invalid argument")
        return firmware.report(inblob, vmpl), firmware.cert_table(pad_to=pad_to)

    return respond


# -- /dev/sev-guest -----------------------------------------------------------------------


def sev_guest_node(base: Path) -> Path:
    """``base/dev/sev-guest`` (a plain file: the ioctls go to ``FakeSevGuest``)."""
    device = base / "dev" / "sev-guest"
    device.parent.mkdir(parents=True, exist_ok=True)
    device.write_bytes(b"")
    return device


class FakeSevGuest:
    """The sev-guest driver: reads the request through the pointers in the ioctl argument
    (``struct snp_guest_request_ioctl``: msg_version u8 + 7 padding, req_data u64, resp_data
    u64, exitinfo2 u64) and writes the response (and the certificate table) where they point.

    ``ext``: ``ok``, ``enotty`` (no extended report), ``too-long`` (certificates do not fit),
    ``both-fail``; ``status`` forces the firmware status of every response; ``derived``:
    ``ok`` or ``enotty`` (a driver without SNP_GET_DERIVED_KEY)."""

    def __init__(
        self, firmware: SnpFirmware, *, ext: str = "ok", status: int = 0, derived: str = "ok"
    ) -> None:
        self.firmware = firmware
        self.ext = ext
        self.status = status
        self.derived = derived
        self.calls: list[int] = []
        self.requests: list[bytes] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert len(arg) == 32
        assert arg[0] == 1  # msg_version
        self.calls.append(request)
        req_addr = int.from_bytes(arg[8:16], "little")
        resp_addr = int.from_bytes(arg[16:24], "little")
        if not req_addr or not resp_addr:
            raise OSError(errno.EINVAL, "Invalid argument")
        if request == SNP_GET_DERIVED_KEY:
            return self._derived_key(req_addr, resp_addr, arg)
        if request == SNP_GET_EXT_REPORT:
            raw = ctypes.string_at(req_addr, 112)
            if self.ext in ("enotty", "both-fail"):
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            if self.ext == "too-long":
                arg[24:32] = (1 << 32).to_bytes(8, "little")
                raise OSError(errno.EIO, "Input/output error")
            certs_addr, certs_len = struct.unpack_from("<QI", raw, 96)
            assert certs_len == 0x4000
            table = self.firmware.cert_table()
            ctypes.memmove(certs_addr, table, len(table))
        elif request == SNP_GET_REPORT:
            raw = ctypes.string_at(req_addr, 96)
            if self.ext == "both-fail":
                arg[24:32] = (0x16).to_bytes(8, "little")
                raise OSError(errno.EIO, "Input/output error")
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        self.requests.append(raw)
        report_data, vmpl = raw[:64], int.from_bytes(raw[64:68], "little")
        assert raw[68:96] == bytes(28)
        status = self.status or (FW_INVALID_PARAM if vmpl < self.firmware.vmpl else 0)
        report = self.firmware.report(report_data, vmpl) if status == 0 else b""
        response = struct.pack("<II", status, len(report)) + bytes(24) + report
        ctypes.memmove(resp_addr, response, len(response))
        return 0

    def _derived_key(self, req_addr: int, resp_addr: int, arg: bytearray) -> int:
        if self.derived == "enotty":
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        raw = ctypes.string_at(req_addr, 32)
        self.requests.append(raw)
        root, reserved, gfs, vmpl, svn, tcb = struct.unpack("<IIQIIQ", raw)
        if reserved:
            status, key = FW_INVALID_PARAM, bytes(32)
        else:
            status, key = self.firmware.derive_key(root, gfs, vmpl, svn, tcb)
        status = self.status or status
        response = struct.pack("<I", status) + bytes(28) + (key if status == 0 else bytes(32))
        ctypes.memmove(resp_addr, response, 64)
        return 0
