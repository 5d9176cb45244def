"""Quote providers against fake device trees in a temporary directory: Gramine's
/dev/attestation, configfs-tsm report entries (TDX; SNP with the auxblob) and /dev/sev-guest
ioctls, each faked by playing the kernel's part; SNP evidence they return verifies end to end."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation._providers import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    ConfigfsTsmProvider,
    GramineProvider,
    SevGuestProvider,
    build_snp_report_request,
    parse_snp_report_response,
)
from geode.attestation._snp import verify_snp_report
from geode.errors import EvidenceError
from tests.attestation.support import devices
from tests.attestation.support.devices import FakeGramine, FakeSevGuest, FakeTsm, SnpFirmware
from tests.attestation.support.snp import AT

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def platform() -> SnpFirmware:
    return SnpFirmware.create()


# -- Gramine -------------------------------------------------------------------------------


def gramine_tree(tmp_path: Path, kind: bytes = b"dcap") -> Path:
    return devices.gramine_tree(tmp_path / "dev", kind)


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


def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys" / "kernel" / "config" / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def test_configfs_tsm_snp_report_with_auxblob_verifies(
    tmp_path: Path, platform: SnpFirmware
) -> None:
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


def test_configfs_tsm_malformed_auxblob_is_typed(tmp_path: Path, platform: SnpFirmware) -> None:
    table = bytearray(platform.cert_table())
    table[20:24] = (1 << 20).to_bytes(4, "little")  # the first entry runs far past the end
    kernel = FakeTsm("sev_guest", lambda i, v: (platform.report(i, v), bytes(table)))
    with pytest.raises(EvidenceError) as caught:
        ConfigfsTsmProvider(tsm_root(tmp_path), kernel)(REPORT_DATA)
    assert caught.value.field == "cert_table[0].length"


# -- /dev/sev-guest ------------------------------------------------------------------------


def sev_guest(tmp_path: Path) -> Path:
    device = tmp_path / "dev" / "sev-guest"
    device.parent.mkdir(parents=True, exist_ok=True)
    device.write_bytes(b"")
    return device


def test_sev_guest_extended_report_verifies(tmp_path: Path, platform: SnpFirmware) -> None:
    driver = FakeSevGuest(platform)
    provider = SevGuestProvider(sev_guest(tmp_path), vmpl=1, ioctl=driver)
    evidence = provider(REPORT_DATA)
    assert driver.calls == [SNP_GET_EXT_REPORT]
    assert driver.requests[0][:64] == REPORT_DATA
    claims = verify_snp_report(evidence.data, at=AT, roots=[platform.pki.ark])
    assert claims.report_data == REPORT_DATA
    assert claims.vmpl == 1


def test_sev_guest_falls_back_to_the_plain_report(tmp_path: Path, platform: SnpFirmware) -> None:
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
    tmp_path: Path, platform: SnpFirmware, driver: dict[str, object], message: str
) -> None:
    fake = FakeSevGuest(platform, **driver)  # type: ignore[arg-type]
    with pytest.raises(EvidenceError, match=message):
        SevGuestProvider(sev_guest(tmp_path), ioctl=fake)(REPORT_DATA)


def test_sev_guest_absent_device_is_typed(tmp_path: Path, platform: SnpFirmware) -> None:
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
