"""Sealing keys per TEE: the SNP_GET_DERIVED_KEY request and response, Gramine's seal keys, and
the property the Coordinator relies on: the same launch on the same platform derives the same
key (in any process), another measurement, policy, enclave or chip another one."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys

import pytest

from geode.attestation._sealing import (
    SNP_GET_DERIVED_KEY,
    build_derived_key_request,
    parse_derived_key_response,
    sealing_key,
)
from geode.errors import EvidenceError
from tests.attestation.support.devices import FakeGramine, FakeSevGuest
from tests.support import REPO
from tests.support.hardware import FakeGuest, FakeSgx, FakeSnp, FakeTdx


def key_of(guest: FakeGuest, **options: object) -> bytes:
    key = guest.probe(**options).sealing_key()
    assert key is not None
    assert len(key) == 32
    return key


# -- the ioctl's layout -------------------------------------------------------------------


def test_the_derived_key_ioctl_number_and_request_layout() -> None:
    # _IOWR('S', 1, struct snp_guest_request_ioctl (32 bytes))
    assert SNP_GET_DERIVED_KEY == (3 << 30) | (32 << 16) | (ord("S") << 8) | 1 == 0xC0205301
    request = build_derived_key_request(field_select=0x9, vmpl=2)
    assert len(request) == 32
    assert request[0:4] == bytes(4)  # root_key_select: VCEK
    assert request[4:8] == bytes(4)  # reserved
    assert request[8:16] == (0x9).to_bytes(8, "little")  # guest_field_select: policy|measurement
    assert request[16:20] == (2).to_bytes(4, "little")  # vmpl
    assert request[20:32] == bytes(12)  # guest_svn, tcb_version
    assert build_derived_key_request() == struct.pack("<IIQIIQ", 0, 0, 0x9, 0, 0, 0)
    assert build_derived_key_request(root_key=1, guest_svn=3, tcb_version=7)[20:32] == (
        struct.pack("<IQ", 3, 7)
    )
    for bad in ({"root_key": 2}, {"field_select": 1 << 6}, {"vmpl": 4}):
        with pytest.raises(ValueError):
            build_derived_key_request(**bad)  # type: ignore[arg-type]


def test_the_derived_key_response_is_parsed() -> None:
    key = bytes(range(32))
    assert parse_derived_key_response(bytes(32) + key) == key
    with pytest.raises(EvidenceError) as caught:
        parse_derived_key_response(bytes(40))
    assert (caught.value.field, caught.value.offset) == ("derived_key", 32)
    with pytest.raises(EvidenceError) as caught:
        parse_derived_key_response(bytes(2))
    assert caught.value.field == "status"


@pytest.mark.parametrize(
    ("status", "message"),
    [(0x16, "invalid parameters (status 0x16)"), (0x99, "unknown error (status 0x99)")],
)
def test_a_firmware_refusal_is_one_line(status: int, message: str) -> None:
    with pytest.raises(EvidenceError) as caught:
        parse_derived_key_response(struct.pack("<I", status) + bytes(60))
    assert (caught.value.field, caught.value.offset) == ("status", 0)
    assert (
        str(caught.value) == f"status (offset 0): the firmware refused the derived key: {message}"
    )
    assert "\n" not in str(caught.value)


# -- SEV-SNP ------------------------------------------------------------------------------


def test_snp_asks_for_the_vcek_key_of_policy_and_measurement(snp: FakeSnp) -> None:
    guest = snp.launch(interfaces=("sev-guest",), vmpl=1)
    key = key_of(guest, snp_vmpl=1)
    assert isinstance(guest.ioctl, FakeSevGuest)
    assert guest.ioctl.calls[-1] == SNP_GET_DERIVED_KEY
    assert guest.ioctl.requests[-1] == build_derived_key_request(field_select=0x9, vmpl=1)
    # HKDF over the firmware's key, never the firmware's key itself.
    status, raw = guest.ioctl.firmware.derive_key(0, 0x9, 1, 0, 0)
    assert status == 0
    assert key == sealing_key(raw, "sev-snp") != raw


def test_snp_same_launch_same_key_other_launch_other_key(
    snp: FakeSnp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    launch = {"measurement": b"\x01" * 48, "policy": 0x30000}
    first = key_of(snp.launch(**launch))
    assert key_of(snp.launch(**launch)) == first  # a second probe
    assert key_of(FakeSnp.load(snp.directory).launch(**launch)) == first  # reloaded platform
    assert key_of(snp.launch(**launch, interfaces=("sev-guest",))) == first  # other evidence path
    assert key_of(snp.launch(measurement=b"\x02" * 48, policy=0x30000)) != first
    assert key_of(snp.launch(measurement=b"\x01" * 48, policy=0xB0000)) != first  # debug
    assert key_of(snp.launch(measurement=b"\x01" * 48, policy=0x70000)) != first  # migratable
    other_chip = FakeSnp.create(tmp_path_factory.mktemp("other-chip"))
    assert key_of(other_chip.launch(**launch)) != first
    # HOST_DATA cannot be selected for the key (documented in _sealing).
    assert key_of(snp.launch(**launch, host_data=b"\x09" * 32)) == first


def test_snp_same_launch_same_key_in_another_process(snp: FakeSnp) -> None:
    guest = snp.launch(measurement=b"\x05" * 48)
    script = (
        "import hashlib, sys; from pathlib import Path; "
        "from tests.support.hardware import load_guest; "
        "print(hashlib.sha256(load_guest(Path(sys.argv[1])).probe().sealing_key()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(guest.tree)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert out == hashlib.sha256(key_of(guest)).hexdigest()


def test_snp_firmware_errors_are_one_line(snp: FakeSnp) -> None:
    host = snp.launch(vmpl=2).probe()  # asks at VMPL 0, below the guest's own
    with pytest.raises(EvidenceError, match=r"invalid parameters \(status 0x16\)$"):
        host.sealing_key()
    assert key_of(snp.launch(vmpl=2), snp_vmpl=2)
    with pytest.raises(EvidenceError, match=r"SNP_GET_DERIVED_KEY failed: .*firmware error 0x0"):
        snp.launch(derived="enotty").probe().sealing_key()


def test_snp_through_configfs_alone_and_tdx_have_no_sealing_key(
    snp: FakeSnp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert snp.launch(interfaces=("configfs-tsm",)).probe().sealing_key() is None
    tdx = FakeTdx.create(tmp_path_factory.mktemp("tdx")).launch().probe()
    assert (tdx.sealing, tdx.sealing_key()) == ("none", None)


# -- Gramine ------------------------------------------------------------------------------


def test_gramine_mrenclave_and_mrsigner_keys(sgx: FakeSgx) -> None:
    guest = sgx.launch(mrenclave=b"\x01" * 32, mrsigner=b"\x0f" * 32, product_id=7)
    enclave, signer = key_of(guest), key_of(guest, sgx_sealing="mrsigner")
    assert enclave != signer
    assert isinstance(guest.files, FakeGramine)
    raw = guest.files.read(guest.paths.gramine_root / "keys" / "_sgx_mrenclave")
    assert len(raw) == 16
    assert enclave == sealing_key(raw, "sgx-gramine", "_sgx_mrenclave")
    updated = sgx.launch(mrenclave=b"\x02" * 32, mrsigner=b"\x0f" * 32, product_id=7)
    assert key_of(updated) != enclave  # new code: the MRENCLAVE key is gone
    assert key_of(updated, sgx_sealing="mrsigner") == signer  # same signer and product
    other_product = sgx.launch(mrenclave=b"\x02" * 32, mrsigner=b"\x0f" * 32, product_id=8)
    assert key_of(other_product, sgx_sealing="mrsigner") != signer
    assert key_of(FakeSgx.load(sgx.directory).launch(
        mrenclave=b"\x01" * 32, mrsigner=b"\x0f" * 32, product_id=7
    )) == enclave  # fmt: skip


def test_a_short_gramine_key_is_refused(sgx: FakeSgx) -> None:
    guest = sgx.launch(mrenclave=b"\x03" * 32)
    assert isinstance(guest.files, FakeGramine)
    guest.files.enclave = None  # plain files: the key file is empty
    with pytest.raises(EvidenceError, match="_sgx_mrenclave: 0 bytes, 16 expected"):
        guest.probe().sealing_key()


# -- the key stays out of sight -----------------------------------------------------------


def test_the_key_is_in_no_repr_or_str(snp: FakeSnp, sgx: FakeSgx) -> None:
    for guest in (snp.launch(), sgx.launch()):
        host = guest.probe()
        key = host.sealing_key()
        assert key is not None
        shown = repr(host) + str(host) + repr(vars(host))
        for form in (key.hex(), repr(key), key.hex().upper()):
            assert form not in shown
        assert repr(host) == f"HostTee({host.name!r}, sealing={host.sealing!r})"
