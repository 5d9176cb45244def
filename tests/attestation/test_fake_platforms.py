"""The fake TEE platforms (``tests/support/hardware.py``) every hardware test builds on: their
evidence verifies under their own test roots only, a platform reloaded from its directory (as
another process does) is the same platform, and derived keys follow what was launched."""

from __future__ import annotations

import ctypes
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from geode.attestation import EvidenceVerifier
from geode.errors import EvidenceError
from tests.attestation.support.devices import SNP_GET_DERIVED_KEY, FakeGramine, FakeSevGuest
from tests.support import REPO
from tests.support.hardware import FakeGuest, FakeSgx, FakeSnp, FakeTdx, load_guest

REPORT_DATA = bytes(range(64))


def snp_derived_key(guest: FakeGuest, field_select: int = 0x9, vmpl: int = 0) -> tuple[int, bytes]:
    """SNP_GET_DERIVED_KEY through the fake driver, laid out by hand (no code under test)."""
    assert isinstance(guest.ioctl, FakeSevGuest)
    req = ctypes.create_string_buffer(struct.pack("<IIQIIQ", 0, 0, field_select, vmpl, 0, 0), 32)
    resp = ctypes.create_string_buffer(64)
    arg = bytearray(32)
    arg[0] = 1
    arg[8:16] = ctypes.addressof(req).to_bytes(8, "little")
    arg[16:24] = ctypes.addressof(resp).to_bytes(8, "little")
    guest.ioctl(-1, SNP_GET_DERIVED_KEY, arg)
    return int.from_bytes(resp.raw[:4], "little"), resp.raw[32:64]


def test_snp_evidence_verifies_under_the_platform_roots_only(snp: FakeSnp) -> None:
    measurement = b"\x07" * 48
    for interfaces in [("sev-guest",), ("configfs-tsm",)]:
        guest = snp.launch(measurement=measurement, host_data=b"\x01" * 32, interfaces=interfaces)
        claims = EvidenceVerifier(trust=guest.trust()).verify(guest.evidence(REPORT_DATA))
        assert (claims.tee, claims.measurement, claims.report_data) == (
            "sev-snp",
            measurement,
            REPORT_DATA,
        )
        assert claims.host_data == b"\x01" * 32
        with pytest.raises(EvidenceError):
            EvidenceVerifier().verify(guest.evidence(REPORT_DATA))  # AMD's real ARK


def test_tdx_evidence_verifies_with_fresh_collateral(tdx: FakeTdx) -> None:
    guest = tdx.launch(mrtd=b"\x05" * 48)
    claims = EvidenceVerifier(trust=guest.trust()).verify(guest.evidence(REPORT_DATA))
    assert (claims.tee, claims.measurement, claims.report_data) == (
        "tdx",
        b"\x05" * 48,
        REPORT_DATA,
    )
    assert claims.tcb_status == "UpToDate"
    with pytest.raises(EvidenceError):
        EvidenceVerifier().verify(guest.evidence(REPORT_DATA))


def test_sgx_evidence_verifies_with_fresh_collateral(sgx: FakeSgx) -> None:
    guest = sgx.launch(mrenclave=b"\x0e" * 32, product_id=4, svn=9)
    claims = EvidenceVerifier(trust=guest.trust()).verify(guest.evidence(REPORT_DATA))
    assert (claims.tee, claims.measurement, claims.product_id, claims.svn) == (
        "sgx",
        b"\x0e" * 32,
        4,
        9,
    )
    assert claims.tcb_status == "UpToDate"


def test_snp_derived_keys_follow_the_launch(snp: FakeSnp, tmp_path: Path) -> None:
    first = snp_derived_key(snp.launch(measurement=b"\x01" * 48))
    assert first[0] == 0
    assert len(first[1]) == 32
    assert snp_derived_key(snp.launch(measurement=b"\x01" * 48)) == first
    assert snp_derived_key(FakeSnp.load(snp.directory).launch(measurement=b"\x01" * 48)) == first
    assert snp_derived_key(snp.launch(measurement=b"\x02" * 48))[1] != first[1]
    assert snp_derived_key(snp.launch(measurement=b"\x01" * 48, policy=0x70000))[1] != first[1]
    # The measurement bit unselected: the measurement no longer matters.
    assert snp_derived_key(snp.launch(measurement=b"\x01" * 48), 0x1) == snp_derived_key(
        snp.launch(measurement=b"\x02" * 48), 0x1
    )
    # Another chip, same launch: another key.
    other = FakeSnp.create(tmp_path / "other")
    assert snp_derived_key(other.launch(measurement=b"\x01" * 48))[1] != first[1]
    # A VMPL below the guest's own is refused by the firmware.
    assert snp_derived_key(snp.launch(vmpl=2), vmpl=0)[0] == 0x16


def test_gramine_keys_follow_the_launch(sgx: FakeSgx) -> None:
    def keys(guest: FakeGuest) -> tuple[bytes, bytes]:
        assert isinstance(guest.files, FakeGramine)
        root = guest.paths.gramine_root / "keys"
        return guest.files.read(root / "_sgx_mrenclave"), guest.files.read(root / "_sgx_mrsigner")

    enclave, signer = keys(sgx.launch(mrenclave=b"\x01" * 32))
    assert len(enclave) == len(signer) == 16
    other_enclave, same_signer = keys(sgx.launch(mrenclave=b"\x02" * 32))
    assert other_enclave != enclave
    assert same_signer == signer
    assert keys(sgx.launch(mrenclave=b"\x01" * 32, product_id=8))[1] != signer
    assert keys(FakeSgx.load(sgx.directory).launch(mrenclave=b"\x01" * 32)) == (enclave, signer)


def test_a_subprocess_reloads_the_same_guest(snp: FakeSnp) -> None:
    guest = snp.launch(measurement=b"\x03" * 48)
    script = (
        "import sys; from pathlib import Path; from tests.support.hardware import load_guest; "
        "from tests.attestation.test_fake_platforms import snp_derived_key; "
        "print(snp_derived_key(load_guest(Path(sys.argv[1])))[1].hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(guest.tree)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert out == snp_derived_key(guest)[1].hex()
    assert load_guest(guest.tree).launched == guest.launched
