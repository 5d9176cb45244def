"""A Coordinator in hardware mode in a fake Gramine enclave on a fake SGX CPU, as a real process
over real TLS: it names its TEE, ``geode verify`` accepts it only with the right MRENCLAVE or
MRSIGNER, services of the same CPU activate with its quotes, a restart unseals with Gramine's
MRENCLAVE key and another enclave cannot; sealed by the signer (``--sgx-sealing mrsigner``), an
updated enclave of the same signer opens the state; replayed and simulated evidence is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from geode.client import CoordinatorClient
from geode.errors import ActivationDenied
from geode.runtime import Activation, activate
from tests.e2e.conftest import MakeTestbed
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

# FakeSgx.launch's defaults: the Coordinator's enclave.
MRENCLAVE = b"\x11" * 32
MRSIGNER = b"\x22" * 32
ACCEPT: dict[str, object] = {"tee": "sgx", "measurement": MRENCLAVE.hex()}
BY_SIGNER: dict[str, object] = {
    "tee": "sgx",
    "signer": MRSIGNER.hex(),
    "product_id": 7,
    "min_svn": 3,
}
SERVICE = b"\x5e" * 32
UPDATED = b"\x12" * 32  # the Coordinator's next version, from the same signer
MANIFEST = hardware_manifest({"tee": "sgx", "measurement": SERVICE.hex()})


@pytest.fixture(scope="module")
def bed(make_testbed: MakeTestbed) -> TeeTestbed:
    return make_testbed("sgx")


def _deploy(coordinator: TeeCoordinatorProcess) -> TeeCoordinatorProcess:
    with CoordinatorClient(coordinator.client_addr, root=coordinator_root(coordinator)) as client:
        client.set_manifest(MANIFEST)
    return coordinator


@pytest.fixture(scope="module")
def deployed(bed: TeeTestbed) -> TeeCoordinatorProcess:
    return _deploy(bed.start())


@pytest.fixture(scope="module")
def first(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> Activation:
    service = bed.guest(mrenclave=SERVICE)
    return activate(deployed.mesh_addr, "web", service.evidence, root=coordinator_root(deployed))


def test_status_names_the_tee(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> None:
    status = deployed.status()
    assert (status["state"], status["tee"], status["simulation"]) == ("active", "sgx", False)
    assert "gramine" in str(status["tee_interface"]).lower()
    assert "_sgx_mrenclave" in str(status["sealing"])
    assert status["measurement"] == MRENCLAVE.hex()
    assert bed.simulation_files() == []


def test_verify_accepts_only_the_right_mrenclave_or_mrsigner(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    wrong: dict[str, dict[str, object]] = {
        "measurement mismatch": {**ACCEPT, "measurement": UPDATED.hex()},
        "signer mismatch": {**BY_SIGNER, "signer": "23" * 32},
        "product id mismatch": {**BY_SIGNER, "product_id": 8},
        "security version too low": {**BY_SIGNER, "min_svn": 4},
    }
    for reason, values in wrong.items():
        refused = verify_cli(bed, deployed, "--policy", str(policy_file(bed.base / "p", values)))
        assert refused.exit_code == 1, refused.output
        assert "REJECTED" in refused.output
        assert reason in refused.output
    for values in (ACCEPT, BY_SIGNER):
        right = policy_file(bed.base / "right.json", values)
        accepted = verify_cli(bed, deployed, "--policy", str(right))
        assert accepted.exit_code == 0, accepted.output
        assert "tee:          sgx" in accepted.output


def test_services_activate_with_quotes_of_the_same_cpu(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, first: Activation
) -> None:
    assert first.spiffe_id == "spiffe://hw.geode.local/service/web"
    intruder = bed.guest(mrenclave=UPDATED)
    with pytest.raises(ActivationDenied, match="measurement mismatch"):
        activate(deployed.mesh_addr, "web", intruder.evidence, root=coordinator_root(deployed))


def test_a_statement_replayed_with_an_old_nonce_is_refused(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_replayed_statement_refused(bed, deployed, ACCEPT)


def test_no_simulated_platform_key_makes_a_hardware_statement(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_simulated_statement_refused(bed, deployed, ACCEPT)


def test_a_restart_unseals_and_another_enclave_cannot(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, first: Activation
) -> None:
    before = deployed.status()
    assert deployed.stop() == 0
    again = bed.start(deployed.data_dir)
    after = again.status()
    assert after["state"] == "active"
    for field in ("root_fingerprint", "manifest_sha256", "activations"):
        assert after[field] == before[field]
    service = bed.guest(mrenclave=SERVICE)
    second = activate(again.mesh_addr, "web", service.evidence, root=coordinator_root(again))
    assert second.env["API_TOKEN"] == first.env["API_TOKEN"]
    assert again.stop() == 0

    updated = bed.start(deployed.data_dir, launch={"mrenclave": UPDATED})
    status = updated.status()
    assert status["state"] == "recovery"
    assert "sealing key does not open" in str(status["reason"])
    assert updated.stop() == 0


def test_sealed_by_the_signer_an_updated_enclave_unseals(bed: TeeTestbed, tmp_path: Path) -> None:
    by_signer = ("--sgx-sealing", "mrsigner")
    old = _deploy(bed.start(tmp_path / "data", *by_signer))
    assert "_sgx_mrsigner" in str(old.status()["sealing"])
    before = old.status()
    assert old.stop() == 0
    new = bed.start(tmp_path / "data", *by_signer, launch={"mrenclave": UPDATED})
    after = new.status()
    assert (after["state"], after["measurement"]) == ("active", UPDATED.hex())
    assert after["root_fingerprint"] == before["root_fingerprint"]
    assert new.stop() == 0
    assert bed.simulation_files() == []
