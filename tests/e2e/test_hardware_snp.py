"""A Coordinator in hardware mode on a fake SEV-SNP chip, as a real process over real TLS: it
names its TEE, ``geode verify`` accepts it only with the right reference values, services of the
same chip activate with its evidence, a restart unseals with the chip's derived key and a
Coordinator of another measurement cannot; replayed and simulated evidence is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from geode.attestation import SimulatedPlatform
from geode.cli import cli
from geode.cli._common import CliDeps
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied
from geode.pki import certificate_pem
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.e2e.conftest import MakeTestbed
from tests.support.hardware import FakeSnp
from tests.support.tee_coordinator import (
    TeeCoordinatorProcess,
    TeeTestbed,
    check_replayed_statement_refused,
    check_simulated_statement_refused,
    coordinator_root,
    hardware_manifest,
    policy_file,
    verify_cli,
)

pytestmark = pytest.mark.e2e

COORDINATOR = b"\x42" * 48  # FakeSnp.launch's default measurement: the Coordinator's
SERVICE = b"\x5e" * 48
OTHER = b"\x24" * 48
ACCEPT = {"tee": "sev-snp", "measurement": COORDINATOR.hex(), "host_data": "00" * 32, "vmpl": 0}
MANIFEST = hardware_manifest({"tee": "sev-snp", "measurement": SERVICE.hex()})


@pytest.fixture(scope="module")
def bed(make_testbed: MakeTestbed) -> TeeTestbed:
    return make_testbed("sev-snp")


@pytest.fixture(scope="module")
def deployed(bed: TeeTestbed) -> TeeCoordinatorProcess:
    coordinator = bed.start()
    with CoordinatorClient(coordinator.client_addr, root=coordinator_root(coordinator)) as client:
        client.set_manifest(MANIFEST)
    return coordinator


@pytest.fixture(scope="module")
def first(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> Activation:
    service = bed.guest(measurement=SERVICE)
    return activate(deployed.mesh_addr, "web", service.evidence, root=coordinator_root(deployed))


def test_status_names_the_tee(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> None:
    status = deployed.status()
    assert status["tee"] == "sev-snp"
    assert status["simulation"] is False
    assert status["measurement"] == COORDINATOR.hex()
    assert "derived key" in str(status["sealing"])
    root = bed.base / "root.pem"
    root.write_bytes(certificate_pem(coordinator_root(deployed)).encode())
    shown = CliRunner().invoke(
        cli, ["status", "--coordinator", deployed.client_addr, "--root-ca", str(root)]
    )
    assert shown.exit_code == 0, shown.output
    assert f"tee:          sev-snp ({status['tee_interface']})" in shown.output
    assert "simulation" not in shown.output
    assert bed.simulation_files() == []  # no simulated platform or sealing key was made


def test_verify_accepts_only_the_right_reference_values(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    right = policy_file(bed.base / "right.json", ACCEPT)
    wrong = policy_file(bed.base / "wrong.json", {**ACCEPT, "measurement": OTHER.hex()})
    other_host = policy_file(bed.base / "host.json", {**ACCEPT, "host_data": "11" * 32})

    refused = verify_cli(bed, deployed, "--policy", str(wrong))
    assert refused.exit_code == 1
    assert "REJECTED" in refused.output
    assert "measurement mismatch" in refused.output
    assert "host data mismatch" in verify_cli(bed, deployed, "--policy", str(other_host)).output
    # The production trust (AMD's pinned root) does not accept the test chip.
    production = CliRunner().invoke(
        cli,
        ["verify", "--coordinator", deployed.client_addr, "--policy", str(right)],
        obj=CliDeps(),
        env=bed.env,
    )
    assert production.exit_code == 1
    assert "REJECTED" in production.output
    assert not (Path(bed.env["GEODE_CONFIG_DIR"]) / "root.pem").exists()

    accepted = verify_cli(bed, deployed, "--policy", str(right))
    assert accepted.exit_code == 0, accepted.output
    assert "deployment statement verified" in accepted.output
    assert "tee:          sev-snp" in accepted.output
    assert f"measurement:  {COORDINATOR.hex()}" in accepted.output
    assert "TCB UNVERIFIED" in accepted.output  # no AMD CRL given: said loudly, not refused
    assert "SIMULATION" not in accepted.output
    pinned = Path(bed.env["GEODE_CONFIG_DIR"]) / "root.pem"
    assert x509.load_pem_x509_certificate(pinned.read_bytes()) == coordinator_root(deployed)


def test_verify_checks_amds_crl_from_the_policy_file(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    chip = bed.platform
    assert isinstance(chip, FakeSnp)
    (bed.base / "amd-crl.der").write_bytes(chip.pki.crl())
    (bed.base / "revoked.der").write_bytes(chip.pki.crl(revoked=(chip.vcek,)))
    strict = {"require_collateral": True}
    without = policy_file(bed.base / "without.json", ACCEPT, **strict)
    current = policy_file(
        bed.base / "crl.json", ACCEPT, collateral={"sev-snp": "amd-crl.der"}, **strict
    )
    partial = policy_file(
        bed.base / "partial.json",
        {**ACCEPT, "min_tcb": {"snp": chip.tcb["snp"]}},
        collateral={"sev-snp": "amd-crl.der"},
        **strict,
    )
    minimum = {**ACCEPT, "min_tcb": dict(chip.tcb)}
    up_to_date = policy_file(
        bed.base / "min-tcb.json", minimum, collateral={"sev-snp": "amd-crl.der"}, **strict
    )
    revoked = policy_file(bed.base / "revoked.json", ACCEPT, collateral={"sev-snp": "revoked.der"})

    refused = verify_cli(bed, deployed, "--policy", str(without))
    assert refused.exit_code == 1
    assert "requires collateral" in refused.output
    accepted = verify_cli(bed, deployed, "--policy", str(current))
    assert accepted.exit_code == 0, accepted.output
    # The chain is not revoked, but no min_tcb holds the reported TCB: still Unverified, saying
    # why, without the no-collateral warning.
    assert "tcb:          UNVERIFIED" in accepted.output
    assert "checked:      signature, chain, revocation, reference" in accepted.output
    assert "the package sets no min_tcb" in accepted.output
    assert "TCB UNVERIFIED:" not in accepted.output
    # A min_tcb that sets the SNP component alone held only part of the TCB: still Unverified.
    part = verify_cli(bed, deployed, "--policy", str(partial))
    assert part.exit_code == 0, part.output
    assert "tcb:          UNVERIFIED" in part.output
    assert "does not set bootloader, tee, microcode" in part.output
    met = verify_cli(bed, deployed, "--policy", str(up_to_date))
    assert met.exit_code == 0, met.output
    assert "tcb:          UpToDate" in met.output
    assert "checked:      signature, chain, revocation, tcb, reference" in met.output
    revocation = verify_cli(bed, deployed, "--policy", str(revoked))
    assert revocation.exit_code == 1
    assert "REJECTED" in revocation.output
    assert "revoked" in revocation.output


def test_services_activate_with_evidence_of_the_same_chip(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, first: Activation
) -> None:
    assert first.spiffe_id == "spiffe://hw.geode.local/service/web"
    assert len(first.env["API_TOKEN"]) == 32
    root = coordinator_root(deployed)
    intruder = bed.guest(measurement=OTHER)
    with pytest.raises(ActivationDenied, match="measurement mismatch"):
        activate(deployed.mesh_addr, "web", intruder.evidence, root=root)
    # A simulated platform signs whatever it is told: a hardware Coordinator takes none of it.
    forger = simulated_evidence_provider(SimulatedPlatform.generate(), SERVICE[:32])
    with pytest.raises(ActivationDenied):
        activate(deployed.mesh_addr, "web", forger, root=root)
    assert deployed.status()["activations"] == {"web": 1}


def test_a_statement_replayed_with_an_old_nonce_is_refused(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_replayed_statement_refused(bed, deployed, ACCEPT)


def test_no_simulated_platform_key_makes_a_hardware_statement(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_simulated_statement_refused(bed, deployed, ACCEPT)


def test_a_restart_unseals_and_another_measurement_cannot(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, first: Activation
) -> None:
    before = deployed.status()
    assert deployed.stop() == 0
    state = deployed.data_dir / "state.sealed"
    sealed = state.read_bytes()

    # The same chip and launch, its evidence now through the ioctls of /dev/sev-guest alone
    # (the derived key always comes from there).
    again = bed.start(deployed.data_dir, launch={"interfaces": ("sev-guest",)})
    after = again.status()
    assert after["state"] == "active"
    assert after["tee_interface"] != before["tee_interface"]
    assert "/dev/sev-guest" in str(after["tee_interface"])
    for field in ("root_fingerprint", "manifest_sha256", "activations"):
        assert after[field] == before[field]
    service = bed.guest(measurement=SERVICE)
    second = activate(again.mesh_addr, "web", service.evidence, root=coordinator_root(again))
    assert second.env["API_TOKEN"] == first.env["API_TOKEN"]
    assert second.root_ca == first.root_ca
    assert again.stop() == 0

    # Same chip, same data, another launch measurement: its derived key opens nothing.
    sealed = state.read_bytes()
    other = bed.start(deployed.data_dir, launch={"measurement": OTHER})
    status = other.status()
    assert status["state"] == "recovery"
    assert status["measurement"] == OTHER.hex()
    assert "sealing key does not open" in str(status["reason"])
    assert other.stop() == 0
    assert state.read_bytes() == sealed
    assert bed.simulation_files() == []
