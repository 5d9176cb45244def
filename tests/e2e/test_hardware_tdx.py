"""A Coordinator in hardware mode on a fake TDX host, as a real process over real TLS: it names
its TEE, ``geode verify`` accepts it only with the right MRTD and RTMRs, services of the same
host activate with its quotes; TDX has no sealing key, so a restart goes to recovery (which the
manifest must provide for) and the recovery parties bring it back; a second TD of the same code
on the same etcd obtains the state key from the first, a TD of other code does not."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from geode.cli import cli
from geode.cli._common import CliDeps
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied, ClientError
from geode.runtime import Activation, activate
from tests.e2e.conftest import MakeTestbed
from tests.support.etcd import EtcdServer
from tests.support.governance import Party, make_party
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

# FakeTdx.launch's defaults: the Coordinator's TD.
MRTD = b"\x33" * 48
RTMRS = (b"\x40" * 48, b"\x41" * 48, b"\x42" * 48)
ACCEPT = {
    "tee": "tdx",
    "mrtd": MRTD.hex(),
    **{f"rtmr{i}": value.hex() for i, value in enumerate(RTMRS)},
    "mrconfigid": "00" * 48,
}
SERVICE = b"\x5e" * 48
OTHER_RTMR2 = (*RTMRS[:2], b"\x99" * 48, b"\x43" * 48)


def _manifest(party: Party) -> bytes:
    recovery = {"keys": {party.name: party.public_pem}, "threshold": 1}
    return hardware_manifest({"tee": "tdx", "mrtd": SERVICE.hex()}, recovery=recovery)


@pytest.fixture(scope="module")
def bed(make_testbed: MakeTestbed) -> TeeTestbed:
    return make_testbed("tdx")


@pytest.fixture(scope="module")
def party(bed: TeeTestbed) -> Party:
    return make_party(bed.base / "parties", "ops", 0)


@pytest.fixture(scope="module")
def deployed(bed: TeeTestbed, party: Party) -> TeeCoordinatorProcess:
    coordinator = bed.start()
    with CoordinatorClient(coordinator.client_addr, root=coordinator_root(coordinator)) as client:
        # No sealing key survives a restart: a manifest without recovery would be lost.
        without = hardware_manifest({"tee": "tdx", "mrtd": SERVICE.hex()})
        with pytest.raises(ClientError, match="no sealing key that survives a restart"):
            client.set_manifest(without)
        client.set_manifest(_manifest(party))
    return coordinator


@pytest.fixture(scope="module")
def first(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> Activation:
    service = bed.guest(mrtd=SERVICE)
    return activate(deployed.mesh_addr, "web", service.evidence, root=coordinator_root(deployed))


def test_status_names_the_tee(deployed: TeeCoordinatorProcess, bed: TeeTestbed) -> None:
    status = deployed.status()
    assert (status["state"], status["tee"], status["simulation"]) == ("active", "tdx", False)
    assert str(status["tee_interface"]).startswith("tdx via ")
    assert status["sealing"] == "none"
    assert status["measurement"] == MRTD.hex()
    assert bed.simulation_files() == []


def test_verify_accepts_only_the_right_mrtd_and_rtmrs(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    wrong = {
        "mrtd mismatch": {**ACCEPT, "mrtd": "34" * 48},
        "rtmr1 mismatch": {**ACCEPT, "rtmr1": "77" * 48},
        "mrconfigid mismatch": {**ACCEPT, "mrconfigid": "01" * 48},
    }
    for reason, values in wrong.items():
        refused = verify_cli(bed, deployed, "--policy", str(policy_file(bed.base / "p", values)))
        assert refused.exit_code == 1, refused.output
        assert "REJECTED" in refused.output
        assert reason in refused.output
    right = policy_file(bed.base / "right.json", ACCEPT)
    accepted = verify_cli(bed, deployed, "--policy", str(right))
    assert accepted.exit_code == 0, accepted.output
    assert "tee:          tdx" in accepted.output
    assert "Unverified" not in accepted.output  # the platform's collateral came with the trust


def test_services_activate_with_quotes_of_the_same_host(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, first: Activation
) -> None:
    assert first.spiffe_id == "spiffe://hw.geode.local/service/web"
    with pytest.raises(ActivationDenied, match="mrtd mismatch"):
        activate(deployed.mesh_addr, "web", bed.guest().evidence, root=coordinator_root(deployed))


def test_a_statement_replayed_with_an_old_nonce_is_refused(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_replayed_statement_refused(bed, deployed, ACCEPT)


def test_no_simulated_platform_key_makes_a_hardware_statement(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed
) -> None:
    check_simulated_statement_refused(bed, deployed, ACCEPT)


def test_a_restart_goes_to_recovery_and_the_party_brings_it_back(
    deployed: TeeCoordinatorProcess, bed: TeeTestbed, party: Party, first: Activation
) -> None:
    before = deployed.status()
    assert deployed.stop() == 0
    again = bed.start(deployed.data_dir)
    recovering = again.status()
    assert recovering["state"] == "recovery"
    assert recovering["recovery"] == {"threshold": 1, "parties": ["ops"], "received": []}

    # The party checks the TD's evidence (its recovery key is bound in it) under the platform's
    # roots with ``geode recover --policy``, then sends its share; a policy naming another MRTD
    # sends nothing.
    def recover(accept: Mapping[str, object]) -> Result:
        policy = policy_file(bed.base / "recover.json", accept)
        args = ["recover", "--key", str(party.key), "--policy", str(policy)]
        return CliRunner().invoke(
            cli,
            [*args, "--coordinator", again.client_addr],
            obj=CliDeps(trust=bed.trust()),
            env=bed.env,
        )

    refused = recover({**ACCEPT, "mrtd": "34" * 48})
    assert refused.exit_code == 1, refused.output
    assert "REJECTED" in refused.output
    assert "mrtd mismatch" in refused.output
    assert again.status()["recovery"]["received"] == []
    accepted = recover(ACCEPT)
    assert accepted.exit_code == 0, accepted.output
    assert "share of ops accepted" in accepted.output
    assert again.status()["state"] == "active"
    after = again.status()
    for field in ("root_fingerprint", "manifest_sha256", "activations"):
        assert after[field] == before[field]
    service = bed.guest(mrtd=SERVICE)
    second = activate(again.mesh_addr, "web", service.evidence, root=coordinator_root(again))
    assert second.env["API_TOKEN"] == first.env["API_TOKEN"]
    assert again.stop() == 0


def test_a_second_td_on_etcd_obtains_the_state_key_from_the_first(
    bed: TeeTestbed, party: Party, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = ("--store", etcd.url)
    a = bed.start(tmp_path / "a", *store)
    try:
        with CoordinatorClient(a.client_addr, root=coordinator_root(a)) as client:
            client.set_manifest(_manifest(party))
        b = bed.spawn(tmp_path / "b", *store)
        # A TD of other code (another RTMR2: another kernel command line) gets nothing.
        other = bed.spawn(tmp_path / "other", *store, launch={"rtmrs": OTHER_RTMR2})
        assert b.ready().status()["state"] == "active"
        assert coordinator_root(b) == coordinator_root(a)
        assert f"obtained the cluster key from {a.mesh_addr}" in b.log()
        service = bed.guest(mrtd=SERVICE)
        activate(b.mesh_addr, "web", service.evidence, root=coordinator_root(b))

        assert other.ready().status()["state"] == "recovery"
        assert "rtmr2 mismatch" in a.log() + b.log()
        for process in (other, b):
            assert process.stop() == 0
    finally:
        a.stop()
