"""``check_hardware_binding``: what ``geode run`` checks before activating, per evidence source.
SEV-SNP and TDX compare their launch-time field with the staged bundle's measurement; SGX
(MRENCLAVE covers the bundle through the Gramine manifest) and simulation check nothing here."""

from __future__ import annotations

import hashlib

import pytest

from geode.attestation import Evidence, SimulatedPlatform, bundle_binding
from geode.errors import LaunchError
from geode.runtime import simulated_evidence_provider
from geode.runtime.launcher import EvidenceSource, check_hardware_binding
from tests.support.hardware import FakeSgx, FakeSnp, FakeTdx

BUNDLE = hashlib.sha256(b"bundle").digest()
OTHER = hashlib.sha256(b"other").digest()


def test_snp_and_tdx_check_their_field(snp: FakeSnp, tdx: FakeTdx) -> None:
    snp_vm = snp.launch(host_data=bundle_binding(BUNDLE, "sev-snp")).quote_provider()
    tdx_vm = tdx.launch(mrconfigid=bundle_binding(BUNDLE, "tdx")).quote_provider()
    for provider, field in ((snp_vm, "host_data"), (tdx_vm, "mrconfigid")):
        source = EvidenceSource(provider, provider.name, simulated=False)
        assert check_hardware_binding(source, BUNDLE) == field
        with pytest.raises(LaunchError, match="not the one this VM was launched for"):
            check_hardware_binding(source, OTHER)


def test_the_report_read_carries_a_fixed_label(snp: FakeSnp) -> None:
    provider = snp.launch(host_data=BUNDLE).quote_provider()
    seen: list[bytes] = []

    def recording(report_data: bytes) -> Evidence:
        seen.append(report_data)
        return provider(report_data)

    check_hardware_binding(EvidenceSource(recording, "sev-guest", simulated=False), BUNDLE)
    assert seen == [b"geode bundle binding check".ljust(64, b"\0")]


def test_sgx_and_simulation_have_no_launch_binding(sgx: FakeSgx) -> None:
    enclave = sgx.launch().quote_provider()
    assert (
        check_hardware_binding(EvidenceSource(enclave, "gramine", simulated=False), OTHER) is None
    )

    def never(_report_data: bytes) -> Evidence:
        raise AssertionError("simulation takes no report for the binding")

    assert check_hardware_binding(EvidenceSource(never, "simulated", simulated=True), OTHER) is None
    simulated = simulated_evidence_provider(SimulatedPlatform.generate(), BUNDLE)
    assert check_hardware_binding(EvidenceSource(simulated, "simulated", True), OTHER) is None
