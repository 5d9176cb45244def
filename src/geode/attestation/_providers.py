"""Quote providers: where ``geode run`` gets evidence that binds 64 bytes of report data.

=============== ===================================================== ==========================
name            interface                                             evidence
=============== ===================================================== ==========================
``gramine``     ``/dev/attestation``: write ``user_report_data``,     ``sgx`` (DCAP quote v3)
                read ``quote`` (``attestation_type`` must be ``dcap``)
``configfs-tsm`` ``/sys/kernel/config/tsm/report/<entry>``: write      ``tdx`` (``tdx_guest``) or
                ``inblob``, read ``outblob`` (and ``auxblob``),       ``sev-snp`` (``sev_guest``:
                ``generation`` checked for a concurrent writer        report + certificate table)
``sev-guest``   ``/dev/sev-guest``: ioctl ``SNP_GET_EXT_REPORT``      ``sev-snp`` (report +
                (``SNP_GET_REPORT`` when the host has no certificates) certificate table)
``simulated``   the simulated platform key (``geode run`` builds it)  ``simulated``
=============== ===================================================== ==========================

``select_quote_provider`` picks ``GEODE_QUOTE_PROVIDER`` when set, else the first interface
present in that order, else ``None`` (simulation). File and ioctl access go through small
injectable objects, so tests drive every provider against a fake device tree in a temporary
directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from geode.attestation._evidence import REPORT_DATA_SIZE, Evidence
from geode.attestation._reader import ByteReader
from geode.attestation._snp_certs import parse_cert_table
from geode.attestation._snp_report import SNP_REPORT_SIZE
from geode.errors import EvidenceError
from geode.tee import TeeKind

__all__ = [
    "HARDWARE_PROVIDERS",
    "PROVIDER_KINDS",
    "PROVIDER_NAMES",
    "QUOTE_PROVIDER_ENV",
    "TSM_PROVIDER_KINDS",
    "ConfigfsTsmProvider",
    "DeviceFiles",
    "GramineProvider",
    "Ioctl",
    "QuoteProvider",
    "SevGuestProvider",
    "build_snp_report_request",
    "default_ioctl",
    "guest_request",
    "parse_snp_report_response",
    "select_quote_provider",
]

QUOTE_PROVIDER_ENV = "GEODE_QUOTE_PROVIDER"
HARDWARE_PROVIDERS = ("gramine", "configfs-tsm", "sev-guest")
PROVIDER_NAMES = ("simulated", *HARDWARE_PROVIDERS)
# The kinds of evidence each provider gives (every kind that is not a GPU's needs one).
PROVIDER_KINDS: Mapping[str, tuple[TeeKind, ...]] = {
    "simulated": ("simulated",),
    "gramine": ("sgx",),
    "configfs-tsm": ("tdx", "sev-snp"),
    "sev-guest": ("sev-snp",),
}


class QuoteProvider(Protocol):
    """Evidence whose report data is the given 64 bytes (``runtime.EvidenceProvider``)."""

    name: str

    def __call__(self, report_data: bytes) -> Evidence: ...


def _check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}")


class DeviceFiles:
    """File operations on a device tree; tests replace them to play the kernel's part."""

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        # One write(2): configfs and Gramine take an attribute in a single write.
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        path.rmdir()

    def check_open(self, path: Path) -> None:
        """Open ``path`` read-write and close it, as a device's ioctls need (``OSError`` when
        that is not allowed)."""
        os.close(os.open(path, os.O_RDWR))


def _io_error(path: Path, action: str, exc: OSError) -> EvidenceError:
    return EvidenceError(f"cannot {action}: {exc.strerror or exc}", field=str(path))


@dataclass
class GramineProvider:
    """SGX DCAP quotes from Gramine's ``/dev/attestation``."""

    root: Path = Path("/dev/attestation")
    files: DeviceFiles = field(default_factory=DeviceFiles)
    name: str = "gramine"

    @staticmethod
    def present(root: Path = Path("/dev/attestation")) -> bool:
        return (root / "attestation_type").exists()

    def __call__(self, report_data: bytes) -> Evidence:
        _check_report_data(report_data)
        kind_path = self.root / "attestation_type"
        try:
            kind = self.files.read(kind_path).strip().decode(errors="replace")
            if kind != "dcap":
                raise EvidenceError(
                    f"Gramine attestation type is {kind!r}; Geode verifies DCAP quotes only",
                    field=str(kind_path),
                )
            self.files.write(self.root / "user_report_data", report_data)
            quote = self.files.read(self.root / "quote")
        except OSError as exc:
            raise _io_error(self.root, "get a quote from Gramine", exc) from None
        if not quote:
            raise EvidenceError("Gramine returned an empty quote", field=str(self.root / "quote"))
        return Evidence("sgx", quote)


# configfs-tsm providers (an entry's `provider` attribute) and the evidence each gives.
TSM_PROVIDER_KINDS: Mapping[str, TeeKind] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}


def _cert_table_extent(blob: bytes) -> bytes:
    """A certificate table cut after its last certificate (hosts hand out whole pages)."""
    if not any(blob):
        return b""
    entries = parse_cert_table(blob)
    end = max([24 * (len(entries) + 1)] + [entry.offset + len(entry.data) for entry in entries])
    return blob[:end]


@dataclass
class ConfigfsTsmProvider:
    """TDX quotes and SEV-SNP reports from Linux configfs-tsm (6.7 and later).

    Each call makes its own report entry and removes it afterwards; ``generation`` must have
    moved by exactly one between writing ``inblob`` and reading the results, or another writer
    raced us and the outputs may be theirs. ``privlevel`` is the SNP VMPL to request (unset:
    the kernel's default).
    """

    root: Path = Path("/sys/kernel/config/tsm/report")
    files: DeviceFiles = field(default_factory=DeviceFiles)
    privlevel: int | None = None
    name: str = "configfs-tsm"

    @staticmethod
    def present(root: Path = Path("/sys/kernel/config/tsm/report")) -> bool:
        return root.is_dir()

    def __call__(self, report_data: bytes) -> Evidence:
        _check_report_data(report_data)
        entry = self.root / f"geode-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.files.mkdir(entry)
        except OSError as exc:
            raise _io_error(entry, "create a configfs-tsm report entry", exc) from None
        try:
            return self._report(entry, report_data)
        except OSError as exc:
            raise _io_error(entry, "get a report from configfs-tsm", exc) from None
        finally:
            # A leftover entry is only a name; the next call makes another.
            with contextlib.suppress(OSError):
                self.files.rmdir(entry)

    def _generation(self, entry: Path) -> int:
        text = self.files.read(entry / "generation").strip()
        try:
            return int(text)
        except ValueError:
            raise EvidenceError("not a number", field=str(entry / "generation")) from None

    def _report(self, entry: Path, report_data: bytes) -> Evidence:
        provider = self.files.read(entry / "provider").strip().decode(errors="replace")
        kind = TSM_PROVIDER_KINDS.get(provider)
        if kind is None:
            raise EvidenceError(
                f"unsupported configfs-tsm provider {provider!r}", field=str(entry / "provider")
            )
        if self.privlevel is not None:
            self.files.write(entry / "privlevel", str(self.privlevel).encode())
        before = self._generation(entry)
        self.files.write(entry / "inblob", report_data)
        outblob = self.files.read(entry / "outblob")
        auxblob = b""
        if kind == "sev-snp" and (entry / "auxblob").exists():
            auxblob = self.files.read(entry / "auxblob")
        after = self._generation(entry)
        if after != before + 1:
            raise EvidenceError(
                f"generation moved from {before} to {after}: another writer used the entry",
                field=str(entry / "generation"),
            )
        if not outblob:
            raise EvidenceError("empty outblob", field=str(entry / "outblob"))
        if kind == "sev-snp":
            return Evidence(kind, outblob[:SNP_REPORT_SIZE] + _cert_table_extent(auxblob))
        return Evidence(kind, outblob)


# /dev/sev-guest (linux/sev-guest.h). The ioctl argument is struct snp_guest_request_ioctl:
# msg_version u8 (+7 padding), req_data u64, resp_data u64, exitinfo2 u64 (fw_error u32,
# vmm_error u32) — 32 bytes, so _IOWR('S', n, 32).
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
_GUEST_REQUEST_SIZE = 32
_REPORT_REQUEST_SIZE = 96  # report_data[64], vmpl u32, reserved[28]
_EXT_REPORT_REQUEST_SIZE = 112  # the report request, certs_address u64, certs_len u32, padding
_RESPONSE_SIZE = 4000
_CERTS_SIZE = 0x4000  # SEV_FW_BLOB_MAX_SIZE: the most the kernel accepts, page aligned
_VMM_ERR_INVALID_LEN = 1


def build_snp_report_request(report_data: bytes, vmpl: int = 0) -> bytes:
    """struct snp_report_req: the report data, the VMPL, 28 reserved zero bytes."""
    _check_report_data(report_data)
    return report_data + vmpl.to_bytes(4, "little") + bytes(28)


def parse_snp_report_response(response: bytes) -> bytes:
    """The report in a MSG_REPORT_RSP: status u32, report size u32, 24 reserved, the report."""
    r = ByteReader(response, "SNP report response")
    status = r.u32("status")
    if status != 0:
        raise r.error("status", f"the firmware refused the request (status 0x{status:x})", 0)
    size = r.u32("report_size")
    if size < SNP_REPORT_SIZE:
        raise r.error("report_size", f"report of {size} bytes, {SNP_REPORT_SIZE} expected", 4)
    r.skip("reserved", 24)
    return r.bytes("report", size)


# ``ioctl(fd, request, buffer) -> int`` as ``fcntl.ioctl`` does it with a mutable buffer.
Ioctl = Callable[[int, int, bytearray], int]


def guest_request(
    ioctl: Ioctl, fd: int, number: int, request: bytes, response_size: int
) -> tuple[int, bytes, OSError | None]:
    """One sev-guest ioctl: ``request`` and a response buffer of ``response_size`` bytes behind
    the pointers of a ``snp_guest_request_ioctl``; ``(exitinfo2, response, the ioctl's error)``
    (exitinfo2: firmware error in the low 32 bits, the host's in the high ones)."""
    req = ctypes.create_string_buffer(request, len(request))
    resp = ctypes.create_string_buffer(response_size)
    arg = bytearray(_GUEST_REQUEST_SIZE)
    arg[0] = 1  # msg_version
    arg[8:16] = ctypes.addressof(req).to_bytes(8, "little")
    arg[16:24] = ctypes.addressof(resp).to_bytes(8, "little")
    error: OSError | None = None
    try:
        ioctl(fd, number, arg)
    except OSError as exc:
        error = exc
    return int.from_bytes(arg[24:32], "little"), resp.raw, error


def default_ioctl(fd: int, request: int, arg: bytearray) -> int:
    """``fcntl.ioctl`` with a mutable buffer the kernel writes back into."""
    result: int = fcntl.ioctl(fd, request, arg, True)
    return result


@dataclass
class SevGuestProvider:
    """SEV-SNP reports from ``/dev/sev-guest``: ``SNP_GET_EXT_REPORT`` for the report with the
    host's certificate table, ``SNP_GET_REPORT`` when the host has none to give."""

    device: Path = Path("/dev/sev-guest")
    vmpl: int = 0
    ioctl: Ioctl = default_ioctl
    name: str = "sev-guest"

    @staticmethod
    def present(device: Path = Path("/dev/sev-guest")) -> bool:
        return device.exists()

    def __call__(self, report_data: bytes) -> Evidence:
        request = build_snp_report_request(report_data, self.vmpl)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise _io_error(self.device, "open", exc) from None
        try:
            report, certs = self._ext_report(fd, request)
        finally:
            os.close(fd)
        return Evidence("sev-snp", report[:SNP_REPORT_SIZE] + _cert_table_extent(certs))

    def _call(self, fd: int, number: int, request: bytes) -> tuple[int, bytes, OSError | None]:
        return guest_request(self.ioctl, fd, number, request, _RESPONSE_SIZE)

    def _ext_report(self, fd: int, request: bytes) -> tuple[bytes, bytes]:
        certs = ctypes.create_string_buffer(_CERTS_SIZE)
        ext = (
            request
            + ctypes.addressof(certs).to_bytes(8, "little")
            + _CERTS_SIZE.to_bytes(4, "little")
            + bytes(4)
        )
        exitinfo2, response, error = self._call(fd, SNP_GET_EXT_REPORT, ext)
        if error is None:
            return parse_snp_report_response(response), certs.raw
        if exitinfo2 >> 32 == _VMM_ERR_INVALID_LEN:
            raise EvidenceError(
                "the host's certificates do not fit the largest buffer the kernel takes",
                field=str(self.device),
            )
        # No extended report (an older host, or none configured): the plain report.
        exitinfo2, response, error = self._call(fd, SNP_GET_REPORT, request)
        if error is not None:
            raise EvidenceError(
                f"SNP_GET_REPORT failed: {error.strerror or error} "
                f"(firmware error 0x{exitinfo2 & 0xFFFFFFFF:x}, host error 0x{exitinfo2 >> 32:x})",
                field=str(self.device),
            )
        return parse_snp_report_response(response), b""


def select_quote_provider(
    name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    gramine_root: Path = Path("/dev/attestation"),
    tsm_root: Path = Path("/sys/kernel/config/tsm/report"),
    sev_guest: Path = Path("/dev/sev-guest"),
) -> QuoteProvider | None:
    """The provider ``name`` (else ``$GEODE_QUOTE_PROVIDER``, else the first interface present);
    ``None`` means simulation. A named provider whose interface is absent is an error."""
    env = os.environ if environ is None else environ
    chosen = name or env.get(QUOTE_PROVIDER_ENV) or "auto"
    if chosen not in (*PROVIDER_NAMES, "auto"):
        raise EvidenceError(
            f"unknown quote provider {chosen!r} (one of auto, {', '.join(PROVIDER_NAMES)})",
            field=QUOTE_PROVIDER_ENV,
        )
    if chosen == "simulated":
        return None
    present = {
        "gramine": GramineProvider.present(gramine_root),
        "configfs-tsm": ConfigfsTsmProvider.present(tsm_root),
        "sev-guest": SevGuestProvider.present(sev_guest),
    }
    if chosen == "auto":
        chosen = next((n for n in HARDWARE_PROVIDERS if present[n]), "simulated")
        if chosen == "simulated":
            return None
    elif not present[chosen]:
        raise EvidenceError(f"quote provider {chosen!r} is not available here", field="provider")
    if chosen == "gramine":
        return GramineProvider(gramine_root)
    if chosen == "configfs-tsm":
        return ConfigfsTsmProvider(tsm_root)
    return SevGuestProvider(sev_guest)
