"""Quote providers against fake device trees in a temporary directory: Gramine's
/dev/attestation, configfs-tsm report entries (TDX; SNP with the auxblob) and /dev/sev-guest
ioctls, each faked by playing the kernel's part; SNP evidence they return verifies end to end."""

from __future__ import annotations

import ctypes
import errno
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation._providers import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    ConfigfsTsmProvider,
    DeviceFiles,
    GramineProvider,
    SevGuestProvider,
    build_snp_report_request,
    parse_snp_report_response,
)
from geode.attestation._snp import verify_snp_report
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from geode.errors import EvidenceError
from tests.attestation.support.snp import AT, AmdPki, forge_report, tcb_raw

REPORT_DATA = bytes(range(64))
CHIP = bytes(range(100, 164))
TCB = {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210}


class Platform:
    """A synthetic Genoa: signs reports for whatever report data and VMPL it is asked."""

    def __init__(self) -> None:
        self.pki = AmdPki.create("Genoa")
        self.key, self.vcek = self.pki.endorsement(hwid=CHIP, tcb=TCB)

    def report(self, report_data: bytes, vmpl: int = 0) -> bytes:
        tcb = tcb_raw("Genoa", **TCB)
        return forge_report(
            self.key, product="Genoa", tcb=tcb, chip_id=CHIP, report_data=report_data, vmpl=vmpl
        )

    def cert_table(self, *, pad_to: int = 0) -> bytes:
        entries = [
            (CERT_TABLE_GUIDS["ask"], self.pki.ask.public_bytes(Encoding.DER)),
            (CERT_TABLE_GUIDS["vcek"], self.vcek.public_bytes(Encoding.DER)),
        ]
        table = build_cert_table(entries)
        return table + bytes(max(0, pad_to - len(table)))


@pytest.fixture(scope="module")
def platform() -> Platform:
    return Platform()


# -- Gramine -------------------------------------------------------------------------------


class FakeGramine(DeviceFiles):
    """Gramine's pseudo-files: writing user_report_data makes the next quote."""

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "user_report_data":
            (path.parent / "quote").write_bytes(b"SGXQUOTE" + data)


def gramine_tree(tmp_path: Path, kind: bytes = b"dcap") -> Path:
    root = tmp_path / "dev" / "attestation"
    root.mkdir(parents=True)
    (root / "attestation_type").write_bytes(kind)
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(b"")
    return root


def test_gramine_writes_report_data_and_reads_the_quote(tmp_path: Path) -> None:
    root = gramine_tree(tmp_path)
    evidence = GramineProvider(root, FakeGramine())(REPORT_DATA)
    assert evidence.kind == "sgx"
    assert evidence.data == b"SGXQUOTE" + REPORT_DATA
    assert (root / "user_report_data").read_bytes() == REPORT_DATA


def test_gramine_without_dcap_is_refused(tmp_path: Path) -> None:
    root = gramine_tree(tmp_path, b"none")
    with pytest.raises(EvidenceError, match="'none'; Geode verifies DCAP quotes only"):
        GramineProvider(root, FakeGramine())(REPORT_DATA)


def test_gramine_errors_are_typed(tmp_path: Path) -> None:
    root = gramine_tree(tmp_path)
    with pytest.raises(EvidenceError, match="empty quote"):
        GramineProvider(root)(REPORT_DATA)  # nothing plays Gramine: the quote stays empty
    (root / "user_report_data").unlink()
    with pytest.raises(EvidenceError, match="cannot get a quote from Gramine"):
        GramineProvider(root, FakeGramine())(REPORT_DATA)
    with pytest.raises(ValueError, match="64 bytes"):
        GramineProvider(root)(b"short")


# -- configfs-tsm --------------------------------------------------------------------------


class FakeTsm(DeviceFiles):
    """The kernel's side of a configfs-tsm report entry."""

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


def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys" / "kernel" / "config" / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def test_configfs_tsm_snp_report_with_auxblob_verifies(tmp_path: Path, platform: Platform) -> None:
    def respond(inblob: bytes, vmpl: int) -> tuple[bytes, bytes]:
        return platform.report(inblob, vmpl), platform.cert_table(pad_to=8192)

    root = tsm_root(tmp_path)
    kernel = FakeTsm("sev_guest", respond)
    evidence = ConfigfsTsmProvider(root, kernel, privlevel=2)(REPORT_DATA)
    assert evidence.kind == "sev-snp"
    assert len(evidence.data) < 4096  # the host's page of zeros is cut after the table
    claims = verify_snp_report(evidence.data, at=AT, roots=[platform.pki.ark])
    assert claims.report_data == REPORT_DATA
    assert claims.vmpl == 2
    assert list(root.iterdir()) == []  # the entry is gone
    assert kernel.made[0].name.startswith("geode-")


def test_configfs_tsm_tdx_returns_the_outblob(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    kernel = FakeTsm("tdx_guest", lambda inblob, _: (b"TDXQUOTE" + inblob, b""))
    evidence = ConfigfsTsmProvider(root, kernel)(REPORT_DATA)
    assert evidence.kind == "tdx"
    assert evidence.data == b"TDXQUOTE" + REPORT_DATA
    assert list(root.iterdir()) == []


def test_configfs_tsm_detects_a_concurrent_writer(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    kernel = FakeTsm("tdx_guest", lambda inblob, _: (inblob, b""), extra_generations=1)
    with pytest.raises(EvidenceError, match="generation moved from 0 to 2"):
        ConfigfsTsmProvider(root, kernel)(REPORT_DATA)
    assert list(root.iterdir()) == []


def test_configfs_tsm_refusals(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    with pytest.raises(EvidenceError, match="unsupported configfs-tsm provider 'arm_cca_guest'"):
        ConfigfsTsmProvider(root, FakeTsm("arm_cca_guest", lambda i, _: (i, b"")))(REPORT_DATA)
    with pytest.raises(EvidenceError, match="empty outblob"):
        ConfigfsTsmProvider(root, FakeTsm("tdx_guest", lambda i, _: (b"", b"")))(REPORT_DATA)
    with pytest.raises(EvidenceError, match="cannot create a configfs-tsm report entry"):
        ConfigfsTsmProvider(root / "absent", FakeTsm("tdx_guest", lambda i, _: (i, b"")))(
            REPORT_DATA
        )
    # Plain files do not play the kernel: the entry has no attributes to read.
    with pytest.raises(EvidenceError, match="cannot get a report from configfs-tsm"):
        ConfigfsTsmProvider(root)(REPORT_DATA)
    assert list(root.iterdir()) == []


def test_configfs_tsm_malformed_auxblob_is_typed(tmp_path: Path, platform: Platform) -> None:
    table = bytearray(platform.cert_table())
    table[20:24] = (1 << 20).to_bytes(4, "little")  # the first entry runs far past the end
    kernel = FakeTsm("sev_guest", lambda i, v: (platform.report(i, v), bytes(table)))
    with pytest.raises(EvidenceError) as caught:
        ConfigfsTsmProvider(tsm_root(tmp_path), kernel)(REPORT_DATA)
    assert caught.value.field == "cert_table[0].length"


# -- /dev/sev-guest ------------------------------------------------------------------------


class FakeSevGuest:
    """The sev-guest driver: reads the request through the pointers in the ioctl argument and
    writes the response (and the certificate table) where they point, as the kernel does."""

    def __init__(self, platform: Platform, *, ext: str = "ok", status: int = 0) -> None:
        self.platform = platform
        self.ext = ext
        self.status = status
        self.calls: list[int] = []
        self.requests: list[bytes] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert len(arg) == 32
        assert arg[0] == 1  # msg_version
        self.calls.append(request)
        req_addr = int.from_bytes(arg[8:16], "little")
        resp_addr = int.from_bytes(arg[16:24], "little")
        if request == SNP_GET_EXT_REPORT:
            raw = ctypes.string_at(req_addr, 112)
            if self.ext in ("enotty", "both-fail"):
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            if self.ext == "too-long":
                arg[24:32] = (1 << 32).to_bytes(8, "little")
                raise OSError(errno.EIO, "Input/output error")
            certs_addr, certs_len = struct.unpack_from("<QI", raw, 96)
            assert certs_len == 0x4000
            table = self.platform.cert_table()
            ctypes.memmove(certs_addr, table, len(table))
        else:
            assert request == SNP_GET_REPORT
            raw = ctypes.string_at(req_addr, 96)
            if self.ext == "both-fail":
                arg[24:32] = (0x16).to_bytes(8, "little")
                raise OSError(errno.EIO, "Input/output error")
        self.requests.append(raw)
        report_data, vmpl = raw[:64], int.from_bytes(raw[64:68], "little")
        assert raw[68:96] == bytes(28)
        report = self.platform.report(report_data, vmpl)
        response = struct.pack("<II", self.status, len(report)) + bytes(24) + report
        ctypes.memmove(resp_addr, response, len(response))
        return 0


def sev_guest(tmp_path: Path) -> Path:
    device = tmp_path / "dev" / "sev-guest"
    device.parent.mkdir(parents=True, exist_ok=True)
    device.write_bytes(b"")
    return device


def test_sev_guest_extended_report_verifies(tmp_path: Path, platform: Platform) -> None:
    driver = FakeSevGuest(platform)
    provider = SevGuestProvider(sev_guest(tmp_path), vmpl=1, ioctl=driver)
    evidence = provider(REPORT_DATA)
    assert driver.calls == [SNP_GET_EXT_REPORT]
    assert driver.requests[0][:64] == REPORT_DATA
    claims = verify_snp_report(evidence.data, at=AT, roots=[platform.pki.ark])
    assert claims.report_data == REPORT_DATA
    assert claims.vmpl == 1


def test_sev_guest_falls_back_to_the_plain_report(tmp_path: Path, platform: Platform) -> None:
    driver = FakeSevGuest(platform, ext="enotty")
    evidence = SevGuestProvider(sev_guest(tmp_path), ioctl=driver)(REPORT_DATA)
    assert driver.calls == [SNP_GET_EXT_REPORT, SNP_GET_REPORT]
    assert len(evidence.data) == 0x4A0  # no certificates: the verifier wants them with certs=
    vcek = platform.vcek.public_bytes(Encoding.DER) + platform.pki.ask.public_bytes(Encoding.DER)
    verify_snp_report(evidence.data, certs=vcek, at=AT, roots=[platform.pki.ark])


@pytest.mark.parametrize(
    ("driver", "message"),
    [
        ({"ext": "too-long"}, "do not fit"),
        ({"ext": "both-fail"}, "firmware error 0x16"),
        ({"status": 0x16}, "status 0x16"),
    ],
)
def test_sev_guest_errors_are_typed(
    tmp_path: Path, platform: Platform, driver: dict[str, object], message: str
) -> None:
    fake = FakeSevGuest(platform, **driver)  # type: ignore[arg-type]
    with pytest.raises(EvidenceError, match=message):
        SevGuestProvider(sev_guest(tmp_path), ioctl=fake)(REPORT_DATA)


def test_sev_guest_absent_device_is_typed(tmp_path: Path, platform: Platform) -> None:
    with pytest.raises(EvidenceError, match="cannot open"):
        SevGuestProvider(tmp_path / "nothing", ioctl=FakeSevGuest(platform))(REPORT_DATA)


def test_report_request_and_response_layouts() -> None:
    request = build_snp_report_request(REPORT_DATA, vmpl=3)
    assert len(request) == 96
    assert request[64:68] == b"\x03\x00\x00\x00"
    report = bytes(0x4A0)
    assert parse_snp_report_response(struct.pack("<II", 0, 0x4A0) + bytes(24) + report) == report
    with pytest.raises(EvidenceError) as caught:
        parse_snp_report_response(struct.pack("<II", 0, 0x10) + bytes(24))
    assert caught.value.field == "report_size"
    with pytest.raises(EvidenceError) as caught:
        parse_snp_report_response(struct.pack("<II", 0, 0x4A0) + bytes(24) + bytes(100))
    assert caught.value.field == "report"
    assert caught.value.offset == 32
