"""``geode measure``: the expected values per TEE, printed as a policy entry.

SIGSTRUCTs are built here with a throwaway exponent-3 key; SNP reports and Intel quotes come from
the forging kits; the SEV-SNP launch measurement is the ``sev-snp-measure`` package's, run on a
tiny firmware image laid out here (its footer table and SEV metadata, nothing else).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from geode.attestation import (
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    match_claims,
    parse_sigstruct,
    verify_tdx_quote,
)
from geode.attestation._sigstruct import HEADER, HEADER2, SIGSTRUCT_SIZE
from geode.cli import cli
from geode.errors import EvidenceError
from tests.attestation.support import intel, snp

# -- helpers ------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["measure", *args])
    return result.exit_code, result.stdout, result.stderr


def policy_of(out: str) -> ReferenceValues:
    """The one entry of a printed policy file, loaded as the manifest's package fields."""
    doc = yaml.safe_load(out)
    assert set(doc) == {"version", "accept"}
    assert doc["version"] == 1
    assert isinstance(doc["accept"], list)
    assert len(doc["accept"]) == 1
    entry = doc["accept"][0]
    assert next(iter(entry)) == "tee"
    return ReferenceValues(**entry)


@pytest.fixture(scope="module")
def sgx_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=3072)


def build_sigstruct(
    key: rsa.RSAPrivateKey,
    *,
    mrenclave: bytes = b"\xab" * 32,
    prod_id: int = 5,
    svn: int = 9,
    debug: bool = False,
) -> bytes:
    s = bytearray(SIGSTRUCT_SIZE)
    s[0:16] = HEADER
    struct.pack_into("<II", s, 16, 0, 0x20261207)
    s[24:40] = HEADER2
    n = key.public_key().public_numbers().n
    s[128:512] = n.to_bytes(384, "little")
    struct.pack_into("<I", s, 512, 3)
    struct.pack_into("<Q", s, 928, 0x4 | (0x2 if debug else 0))  # MODE64BIT, DEBUG
    struct.pack_into("<Q", s, 936, 0x3)  # XFRM
    s[960:992] = mrenclave
    struct.pack_into("<HH", s, 1024, prod_id, svn)
    signed = bytes(s[0:128] + s[900:1028])
    signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    s[516:900] = signature[::-1]
    return bytes(s)


# -- sgx: the SIGSTRUCT -------------------------------------------------------------------------


def test_a_sigstruct_gives_mrenclave_mrsigner_product_and_svn(sgx_key: rsa.RSAPrivateKey) -> None:
    parsed = parse_sigstruct(build_sigstruct(sgx_key))
    modulus = sgx_key.public_key().public_numbers().n.to_bytes(384, "little")
    assert parsed.mrenclave == b"\xab" * 32
    assert parsed.mrsigner == hashlib.sha256(modulus).digest()
    assert (parsed.isv_prod_id, parsed.isv_svn, parsed.date, parsed.debug) == (
        5,
        9,
        0x20261207,
        False,
    )


@pytest.mark.parametrize(
    ("edit", "field", "offset"),
    [
        (lambda s: s[:1000], "sigstruct", 0),
        (lambda s: b"\x07" + s[1:], "header", 0),
        (lambda s: s[:16] + b"\x01\x02\x00\x00" + s[20:], "vendor", 16),
        (lambda s: s[:24] + bytes(16) + s[40:], "header2", 24),
        (lambda s: s[:512] + b"\x01\x00\x01\x00" + s[516:], "exponent", 512),
        (lambda s: s[:1024] + b"\x06\x00" + s[1026:], "signature", 516),  # ISVPRODID edited
        (lambda s: s[:960] + b"\x00" + s[961:], "signature", 516),  # MRENCLAVE edited
        (lambda s: s[:128] + bytes(384) + s[512:], "modulus", 128),
    ],
)
def test_a_broken_sigstruct_names_the_field_and_offset(
    sgx_key: rsa.RSAPrivateKey, edit: Callable[[bytes], bytes], field: str, offset: int
) -> None:
    with pytest.raises(EvidenceError) as caught:
        parse_sigstruct(edit(build_sigstruct(sgx_key)))
    assert (caught.value.field, caught.value.offset) == (field, offset)


def test_measure_sgx_prints_a_policy_entry_by_mrenclave_or_by_signer(
    tmp_path: Path, sgx_key: rsa.RSAPrivateKey
) -> None:
    sig = tmp_path / "geode-coordinator.sig"
    sig.write_bytes(build_sigstruct(sgx_key))
    code, out, _ = run("sgx", str(sig))
    assert code == 0, out
    assert policy_of(out) == ReferenceValues(tee="sgx", measurement="ab" * 32, debug=False)
    code, out, _ = run("sgx", str(sig), "--identity", "mrsigner")
    assert code == 0
    signer = parse_sigstruct(sig.read_bytes()).mrsigner.hex()
    assert policy_of(out) == ReferenceValues(
        tee="sgx", signer=signer, product_id=5, min_svn=9, debug=False
    )


def test_measure_sgx_of_a_debug_enclave_says_so(tmp_path: Path, sgx_key: rsa.RSAPrivateKey) -> None:
    sig = tmp_path / "debug.sig"
    sig.write_bytes(build_sigstruct(sgx_key, debug=True))
    code, out, err = run("sgx", str(sig))
    assert code == 0
    assert policy_of(out).debug is True
    assert "debugging allowed" in err


def test_measure_sgx_of_a_bad_file_is_one_line(tmp_path: Path) -> None:
    sig = tmp_path / "bad.sig"
    sig.write_bytes(b"\x06" * 100)
    code, out, err = run("sgx", str(sig))
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        "Error: sigstruct (offset 0): a SIGSTRUCT is 1808 bytes, got 100"
    ]


# -- evidence: golden values, read not verified -------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_snp_evidence_gives_measurement_host_data_vmpl_tcb(tmp_path: Path) -> None:
    tcb = snp.tcb_raw("Genoa", bootloader=9, tee=0, snp=21, microcode=210)
    report = snp.forge_report(
        ec.generate_private_key(ec.SECP384R1()),
        product="Genoa",
        tcb=tcb,
        measurement=b"\x5a" * 48,
        host_data=b"\x07" * 32,
        vmpl=1,
    )
    code, out, err = run("evidence", _write(tmp_path, "golden.snp", report))
    assert code == 0, err
    assert "NOT verified" in err
    assert "not verified" in out.splitlines()[0]
    entry = yaml.safe_load(out)["accept"][0]
    assert entry == {
        "tee": "sev-snp",
        "measurement": "5a" * 48,
        "host_data": "07" * 32,
        "vmpl": 1,
        "min_tcb": {"bootloader": 9, "tee": 0, "snp": 21, "microcode": 210},
        "debug": False,
    }


def test_a_debug_snp_report_gives_debug_true_and_a_warning(tmp_path: Path) -> None:
    tcb = snp.tcb_raw("Milan", bootloader=3, tee=0, snp=8, microcode=115)
    key = ec.generate_private_key(ec.SECP384R1())
    report = snp.forge_report(key, tcb=tcb, policy=0x30000 | 1 << 19)
    code, out, err = run("evidence", _write(tmp_path, "debug.snp", report), "--kind", "sev-snp")
    assert code == 0
    assert policy_of(out).debug is True
    assert "debugging allowed" in err


def test_tdx_evidence_gives_mrtd_rtmr0_to_2_and_mrconfigid(tmp_path: Path) -> None:
    body = intel.td_report(mrtd=b"\x31" * 48, mrconfigid=b"\x09" * 48)
    quote = intel.build_quote(intel.QuoteSpec(version=4, tee="tdx", body=body))
    code, out, _ = run("evidence", _write(tmp_path, "golden.tdx", quote))
    assert code == 0
    ref = policy_of(out)
    assert (ref.tee, ref.mrtd, ref.mrconfigid) == ("tdx", "31" * 48, "09" * 48)
    assert (ref.rtmr0, ref.rtmr1, ref.rtmr2) == ("40" * 48, "41" * 48, "42" * 48)
    assert ref.rtmr3 is None  # extended at run time: a golden value would not repeat
    assert ref.debug is False


def test_sgx_evidence_gives_mrenclave_or_the_signer(tmp_path: Path) -> None:
    body = intel.sgx_report(mrenclave=b"\x11" * 32, mrsigner=b"\x22" * 32, product_id=7, svn=3)
    path = _write(tmp_path, "golden.sgx", intel.build_quote(intel.QuoteSpec(body=body)))
    code, out, _ = run("evidence", path)
    assert code == 0
    assert policy_of(out) == ReferenceValues(tee="sgx", measurement="11" * 32, debug=False)
    code, out, _ = run("evidence", path, "--identity", "mrsigner")
    assert policy_of(out) == ReferenceValues(
        tee="sgx", signer="22" * 32, product_id=7, min_svn=3, debug=False
    )


@pytest.mark.parametrize("migratable", [False, True])
def test_snp_evidence_of_a_migratable_guest_gives_migrate_ma(
    migratable: bool, tmp_path: Path
) -> None:
    """Guest policy bit 18 (a migration agent may take the guest away) is refused unless the
    entry allows it: golden evidence of such a guest gives ``migrate_ma: true``, and the
    printed entry accepts that same guest's verified evidence."""
    from tests.support.hardware import FakeSnp

    platform = FakeSnp.create(tmp_path / "snp")
    policy = 0x30000 | (1 << 18 if migratable else 0)
    guest = platform.launch(policy=policy, interfaces=("configfs-tsm",))
    evidence = guest.evidence(bytes(64))
    code, out, err = run("evidence", _write(tmp_path, "golden.snp", evidence.data))
    assert code == 0, err
    entry = yaml.safe_load(out)["accept"][0]
    assert entry.get("migrate_ma", False) is migratable
    if not migratable:
        assert "migrate_ma" not in entry
    match_claims(EvidenceVerifier(trust=guest.trust()).verify(evidence), policy_of(out))


@pytest.mark.parametrize(
    ("attributes", "sept_ve_disable", "debug"),
    [(0x10000000, True, False), (0, False, False), (0x10000001, True, True), (1, False, True)],
)
def test_tdx_evidence_gives_sept_ve_disable_and_debug_from_the_td_attributes(
    attributes: int, sept_ve_disable: bool, debug: bool, tmp_path: Path
) -> None:
    body = intel.td_report(td_attributes=attributes)
    quote = intel.build_quote(intel.QuoteSpec(version=4, tee="tdx", body=body))
    code, out, _ = run("evidence", _write(tmp_path, "golden.tdx", quote))
    assert code == 0
    entry = yaml.safe_load(out)["accept"][0]
    assert entry["sept_ve_disable"] is sept_ve_disable
    assert entry["debug"] is debug
    claims = verify_tdx_quote(quote, at=intel.NOW, roots=[intel.pki().root])
    ref = policy_of(out).model_copy(update={"accepted_tcb_statuses": ["Unverified"]})
    match_claims(claims, ref)


def test_evidence_of_the_wrong_kind_or_truncated_is_one_line(tmp_path: Path) -> None:
    quote = intel.build_quote(intel.QuoteSpec())
    code, out, err = run("evidence", _write(tmp_path, "sgx.quote", quote), "--kind", "tdx")
    assert (code, out) == (1, "")
    assert "header.tee_type (offset 4): an SGX quote, not a TDX one" in err
    tcb = snp.tcb_raw("Milan", bootloader=3, tee=0, snp=8, microcode=115)
    report = snp.forge_report(ec.generate_private_key(ec.SECP384R1()), tcb=tcb)
    code, _, err = run(
        "evidence", _write(tmp_path, "short.snp", report[:0x100]), "--kind", "sev-snp"
    )
    assert code == 1
    assert "SEV-SNP report truncated" in err
    assert len(err.strip().splitlines()) == 1


# -- sev-snp: the launch measurement, from sev-snp-measure --------------------------------------

HAS_SEV_SNP_MEASURE = importlib.util.find_spec("sevsnpmeasure") is not None
# The package is in the test extra: locally a test that needs it may skip, under CI it fails.
NEEDS_SEV_SNP_MEASURE = pytest.mark.skipif(
    not HAS_SEV_SNP_MEASURE and os.environ.get("CI") != "true",
    reason="sev-snp-measure is not installed (pip install 'geode[measure]')",
)


def _footer_entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def tiny_ovmf(path: Path) -> Path:
    """An 8 KiB firmware image with only what the measurement reads: the footer table (reset
    vector, kernel hash table, SEV metadata) and one SNP_KERNEL_HASHES section."""
    size, metadata_at, hashes_gpa = 0x2000, 0x100, 0xFFFF_0000
    image = bytearray(size)
    struct.pack_into("<4sIII", image, metadata_at, b"ASEV", 16 + 12, 1, 1)
    struct.pack_into("<III", image, metadata_at + 16, hashes_gpa, 0x1000, 0x10)
    table = (
        _footer_entry("dc886566-984a-4798-a75e-5585a7bf67cc", struct.pack("<I", size - metadata_at))
        + _footer_entry(
            "7255371f-3a3b-4b04-927b-1da6efa8d454", struct.pack("<II", hashes_gpa, 0x400)
        )
        + _footer_entry("00f771de-1a7e-4fcb-890e-68c77e2fb44e", struct.pack("<I", 0xFFFFF000))
    )
    footer = table + struct.pack("<H", len(table) + 18)
    footer += uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
    image[size - 32 - len(footer) : size - 32] = footer
    path.write_bytes(bytes(image))
    return path


@pytest.fixture
def vm_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 100)
    (tmp_path / "initrd.img").write_bytes(b"initrd with geode" * 100)
    return {
        "ovmf": str(tiny_ovmf(tmp_path / "OVMF.fd")),
        "kernel": str(tmp_path / "vmlinuz"),
        "initrd": str(tmp_path / "initrd.img"),
    }


def _snp_args(files: dict[str, str], *extra: str) -> list[str]:
    return [
        "sev-snp",
        "--ovmf",
        files["ovmf"],
        "--kernel",
        files["kernel"],
        "--initrd",
        files["initrd"],
        "--append",
        "console=ttyS0 geode.verity=ab",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        *extra,
    ]


def test_sev_snp_without_the_package_is_one_line(
    monkeypatch: pytest.MonkeyPatch, vm_files: dict[str, str]
) -> None:
    monkeypatch.setitem(sys.modules, "sevsnpmeasure.guest", None)
    code, out, err = run(*_snp_args(vm_files))
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [
        "Error: the sev-snp-measure package is not installed: pip install 'geode[measure]' "
        "(or pip install sev-snp-measure)"
    ]


def test_sev_snp_passes_every_input_to_the_package(
    monkeypatch: pytest.MonkeyPatch, vm_files: dict[str, str]
) -> None:
    calls: list[tuple[Any, ...]] = []

    def calc_launch_digest(*args: Any) -> bytes:
        calls.append(args)
        return b"\x77" * 48

    mode = types.SimpleNamespace(SEV_SNP="snp-mode")
    monkeypatch.setitem(
        sys.modules,
        "sevsnpmeasure.guest",
        types.SimpleNamespace(calc_launch_digest=calc_launch_digest),
    )
    monkeypatch.setitem(
        sys.modules,
        "sevsnpmeasure.vcpu_types",
        types.SimpleNamespace(CPU_SIGS={"EPYC-Milan": 0xA00F11}),
    )
    monkeypatch.setitem(sys.modules, "sevsnpmeasure.sev_mode", types.SimpleNamespace(SevMode=mode))
    code, out, err = run(*_snp_args(vm_files, "--guest-features", "0x21", "--host-data", "0c" * 32))
    assert code == 0, err
    assert calls == [
        (
            "snp-mode",
            2,
            0xA00F11,
            vm_files["ovmf"],
            vm_files["kernel"],
            vm_files["initrd"],
            "console=ttyS0 geode.verity=ab",
            0x21,
        )
    ]
    assert policy_of(out) == ReferenceValues(
        tee="sev-snp", measurement="77" * 48, host_data="0c" * 32, debug=False
    )
    code, _, err = run(*_snp_args(vm_files, "--host-data", "zz"))
    assert code == 2
    assert "'zz': expected 32 bytes as 64 hex digits" in err
    code, _, err = run(*_snp_args(vm_files, "--vcpu-type", "Pentium"))
    assert code == 2
    assert "'Pentium': not one of EPYC-Milan" in err


@NEEDS_SEV_SNP_MEASURE
def test_sev_snp_agrees_with_the_packages_own_command(vm_files: dict[str, str]) -> None:
    code, out, err = run(*_snp_args(vm_files, "--hex"))
    assert code == 0, err
    ours = out.strip()
    assert len(bytes.fromhex(ours)) == 48
    tool = shutil.which("sev-snp-measure", path=str(Path(sys.executable).parent))
    assert tool is not None
    theirs = subprocess.run(
        [tool, "--mode", "snp", *_snp_args(vm_files)[1:], "--guest-features", "0x1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert ours == theirs
    # The initrd (where the Coordinator lives) and the command line are in the measurement.
    Path(vm_files["initrd"]).write_bytes(b"initrd with other code")
    assert run(*_snp_args(vm_files, "--hex"))[1].strip() != ours
    code, out, _ = run(*_snp_args(vm_files))
    assert policy_of(out).measurement == run(*_snp_args(vm_files, "--hex"))[1].strip()


@NEEDS_SEV_SNP_MEASURE
def test_sev_snp_with_firmware_that_has_no_kernel_hashes_says_so(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"k")
    plain = tmp_path / "plain.fd"
    plain.write_bytes(bytes(0x1000))
    code, out, err = run(
        "sev-snp",
        "--ovmf",
        str(plain),
        "--kernel",
        str(tmp_path / "k"),
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    )
    assert (code, out) == (1, "")
    assert err.startswith("Error: sev-snp-measure: ")
    assert len(err.strip().splitlines()) == 1


# -- bundle: the old forms still work -----------------------------------------------------------


def test_measure_dir_and_bundle_dir_are_the_same(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    code, short, _ = run(str(tmp_path))
    assert code == 0
    assert run("bundle", str(tmp_path))[1] == short
    assert len(bytes.fromhex(short.strip())) == 32
    assert run("--coordinator-package")[0] == 0
    code, _, err = run()
    assert code == 2
    assert "give a DIRECTORY or --coordinator-package" in err


def test_evidence_in_its_json_envelope_as_a_statement_carries_it(tmp_path: Path) -> None:
    body = intel.td_report(mrtd=b"\x31" * 48)
    quote = intel.build_quote(intel.QuoteSpec(version=4, tee="tdx", body=body))
    envelope = json.dumps(Evidence("tdx", quote).to_json()).encode()
    code, out, _ = run("evidence", _write(tmp_path, "statement-evidence.json", envelope))
    assert code == 0
    assert policy_of(out).mrtd == "31" * 48


def test_every_printed_policy_loads_as_a_verification_policy(
    tmp_path: Path, sgx_key: rsa.RSAPrivateKey
) -> None:
    """``geode verify --policy`` reads what ``geode measure`` prints."""
    from geode.client import VerificationPolicy as loader

    tcb = snp.tcb_raw("Genoa", bootloader=9, tee=0, snp=21, microcode=210)
    key = ec.generate_private_key(ec.SECP384R1())
    files = {
        "snp": _write(tmp_path, "a.snp", snp.forge_report(key, product="Genoa", tcb=tcb)),
        "tdx": _write(tmp_path, "a.tdx", intel.build_quote(intel.QuoteSpec(version=4, tee="tdx"))),
        "sgx": _write(tmp_path, "a.sgx", intel.build_quote(intel.QuoteSpec())),
        "sig": _write(tmp_path, "a.sig", build_sigstruct(sgx_key)),
    }
    for args in (
        ["evidence", files["snp"]],
        ["evidence", files["tdx"]],
        ["evidence", files["sgx"], "--identity", "mrsigner"],
        ["sgx", files["sig"]],
    ):
        code, out, _ = run(*args)
        assert code == 0
        policy = tmp_path / "policy.yaml"
        policy.write_text(out)
        (got,) = loader.load(policy).accept
        entry = yaml.safe_load(out)["accept"][0]
        dumped = got.model_dump(mode="json", exclude_none=True)
        assert {k: dumped[k] for k in entry} == entry
