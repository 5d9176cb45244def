"""A bundle's measurement as SEV-SNP HOST_DATA and TDX MRCONFIGID: the value to launch with,
read back from real-format evidence of the fake platforms, and the launcher's check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from geode.attestation import (
    BINDING_KINDS,
    Evidence,
    bundle_binding,
    check_bundle_binding,
    measure_bundle,
    reported_binding,
)
from geode.errors import EvidenceError, LaunchError
from tests.support.hardware import FakeSgx, FakeSnp, FakeTdx

MEASUREMENT = hashlib.sha256(b"the bundle").digest()
OTHER = hashlib.sha256(b"another bundle").digest()


def test_the_binding_is_the_measurement_in_the_fields_size() -> None:
    assert BINDING_KINDS == {"sev-snp": "host_data", "tdx": "mrconfigid"}
    assert bundle_binding(MEASUREMENT, "sev-snp") == MEASUREMENT
    assert bundle_binding(MEASUREMENT, "tdx") == MEASUREMENT + bytes(16)
    for kind in ("sgx", "nvidia", "simulated"):
        with pytest.raises(EvidenceError, match=f"^kind: {kind} evidence carries no bundle"):
            bundle_binding(MEASUREMENT, kind)
    with pytest.raises(ValueError, match="32 bytes, not 48"):
        bundle_binding(bytes(48), "sev-snp")


def test_snp_reports_give_their_host_data(snp: FakeSnp) -> None:
    guest = snp.launch(host_data=bundle_binding(MEASUREMENT, "sev-snp"))
    evidence = guest.evidence(bytes(64))
    assert evidence.kind == "sev-snp"
    assert reported_binding(evidence) == MEASUREMENT
    check_bundle_binding(evidence, MEASUREMENT)
    with pytest.raises(LaunchError) as refused:
        check_bundle_binding(evidence, OTHER)
    message = str(refused.value)
    assert "\n" not in message
    assert f"HOST_DATA is {MEASUREMENT.hex()}," in message
    assert f"(measurement {OTHER.hex()}) needs {OTHER.hex()}" in message


def test_tdx_quotes_give_their_mrconfigid(tdx: FakeTdx) -> None:
    guest = tdx.launch(mrconfigid=bundle_binding(MEASUREMENT, "tdx"))
    evidence = guest.evidence(bytes(64))
    assert evidence.kind == "tdx"
    assert reported_binding(evidence) == MEASUREMENT + bytes(16)
    check_bundle_binding(evidence, MEASUREMENT)
    with pytest.raises(LaunchError, match=f"MRCONFIGID is {MEASUREMENT.hex()}0{{32}},"):
        check_bundle_binding(evidence, OTHER)


def test_the_measurement_must_fill_mrconfigid_exactly(tdx: FakeTdx) -> None:
    """The 16 bytes after the measurement are part of the binding: not zero, not bound."""
    guest = tdx.launch(mrconfigid=MEASUREMENT + b"\x01" + bytes(15))
    with pytest.raises(LaunchError, match="MRCONFIGID"):
        check_bundle_binding(guest.evidence(bytes(64)), MEASUREMENT)


def test_a_vm_launched_without_a_binding_says_so(snp: FakeSnp) -> None:
    evidence = snp.launch().evidence(bytes(64))  # HOST_DATA left zero
    with pytest.raises(LaunchError, match=r"0{64} \(the VM was launched without a binding\)"):
        check_bundle_binding(evidence, MEASUREMENT)


def test_a_bundle_directory_binds_through_its_measurement(snp: FakeSnp, bundle: Path) -> None:
    measurement = measure_bundle(bundle)
    guest = snp.launch(host_data=bundle_binding(measurement, "sev-snp"))
    check_bundle_binding(guest.evidence(bytes(64)), measurement)
    (bundle / "app.py").write_text("print('changed after the launch')\n")
    with pytest.raises(LaunchError, match="not the one this VM was launched for"):
        check_bundle_binding(guest.evidence(bytes(64)), measure_bundle(bundle))


def test_short_snp_evidence_names_the_field_and_offset(snp: FakeSnp) -> None:
    data = snp.launch().evidence(bytes(64)).data
    with pytest.raises(EvidenceError) as short:
        reported_binding(Evidence("sev-snp", data[:0xB0]))  # cut inside HOST_DATA (0xC0)
    assert short.value.field is not None
    assert short.value.offset is not None
    assert "truncated" in str(short.value)
    with pytest.raises(EvidenceError, match=r"^version \(offset 0\)"):
        reported_binding(Evidence("sev-snp", bytes(1184)))


def test_short_tdx_evidence_names_the_field_and_offset(tdx: FakeTdx) -> None:
    data = tdx.launch().evidence(bytes(64)).data
    with pytest.raises(EvidenceError, match=r"^body \(offset 48\): quote truncated"):
        reported_binding(Evidence("tdx", data[:300]))


def test_an_sgx_quote_is_not_tdx_evidence(sgx: FakeSgx) -> None:
    quote = sgx.launch().evidence(bytes(64)).data
    with pytest.raises(EvidenceError, match=r"^header.tee_type \(offset 4\): an SGX quote"):
        reported_binding(Evidence("tdx", quote))
    with pytest.raises(EvidenceError, match=r"^kind: sgx evidence carries no bundle binding"):
        reported_binding(Evidence("sgx", quote))
