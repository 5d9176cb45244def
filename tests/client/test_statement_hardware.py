"""geode.client: deployment statements carrying hardware evidence (SEV-SNP and TDX, forged with
the kits under test roots given as ``TrustAnchors``): the statement's ``tee`` and
``simulation`` must say what its evidence is, and a statement replayed for an old nonce is
refused even with its ``nonce`` field rewritten."""

from __future__ import annotations

import os
from typing import Any

import pytest

from geode.attestation import ReferenceValues
from geode.client import VerificationPolicy, verify_statement
from geode.errors import StatementError
from geode.protocol import DeploymentStatement
from tests.client.test_statement import deployment
from tests.support.hardware_statement import (
    SNP_MEASUREMENT,
    TDX_MRTD,
    FakeCoordinator,
    SnpKit,
    TdxKit,
)

SNP_REF = ReferenceValues(tee="sev-snp", measurement=SNP_MEASUREMENT.hex())
TDX_REF = ReferenceValues(tee="tdx", mrtd=TDX_MRTD.hex(), accepted_tcb_statuses=["Unverified"])


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


@pytest.fixture(scope="module")
def tdx() -> TdxKit:
    return TdxKit()


@pytest.fixture(scope="module")
def snp_coordinator(snp: SnpKit) -> FakeCoordinator:
    return FakeCoordinator(snp.evidence)


@pytest.fixture(scope="module")
def tdx_coordinator(tdx: TdxKit) -> FakeCoordinator:
    return FakeCoordinator(tdx.evidence)


def edited(statement: DeploymentStatement, **changes: Any) -> DeploymentStatement:
    return DeploymentStatement.from_json({**statement.to_json(), **changes})


def test_an_snp_statement_verifies_under_the_kits_roots(
    snp: SnpKit, snp_coordinator: FakeCoordinator
) -> None:
    nonce = os.urandom(32)
    verified = verify_statement(
        snp_coordinator.statement(nonce), reference=SNP_REF, nonce=nonce, trust=snp.trust()
    )
    assert verified.tee == "sev-snp"
    assert verified.simulation is False
    assert verified.claims.tcb_status == "Unverified"  # no CRL given
    assert verified.matched.index == 0


def test_a_tdx_statement_verifies_with_collateral(
    tdx: TdxKit, tdx_coordinator: FakeCoordinator
) -> None:
    nonce = os.urandom(32)
    trust = tdx.trust().with_collateral("tdx", tdx.collateral())
    ref = TDX_REF.model_copy(update={"accepted_tcb_statuses": ["UpToDate"]})
    verified = verify_statement(
        tdx_coordinator.statement(nonce), reference=ref, nonce=nonce, trust=trust
    )
    assert (verified.tee, verified.claims.tcb_status) == ("tdx", "UpToDate")


def test_without_the_test_roots_hardware_evidence_is_refused(
    snp_coordinator: FakeCoordinator,
) -> None:
    nonce = os.urandom(32)
    with pytest.raises(
        StatementError,
        match="coordinator evidence: certs: the SEV-Milan is not signed by ARK-Milan",
    ):
        verify_statement(snp_coordinator.statement(nonce), reference=SNP_REF, nonce=nonce)


@pytest.mark.parametrize("kit", ["snp", "tdx"])
def test_a_statement_replayed_for_an_old_nonce_is_refused(
    kit: str, request: pytest.FixtureRequest
) -> None:
    tee: SnpKit | TdxKit = request.getfixturevalue(kit)
    coordinator: FakeCoordinator = request.getfixturevalue(f"{kit}_coordinator")
    ref = SNP_REF if kit == "snp" else TDX_REF
    old, fresh = os.urandom(32), os.urandom(32)
    recorded = coordinator.statement(old)
    verify_statement(recorded, reference=ref, nonce=old, trust=tee.trust())  # genuine
    with pytest.raises(StatementError, match="answers another nonce"):
        verify_statement(recorded, reference=ref, nonce=fresh, trust=tee.trust())
    # The nonce field rewritten to the caller's: the evidence still binds the old one.
    rewritten = edited(recorded, nonce=fresh.hex())
    with pytest.raises(StatementError, match="not bound to this root certificate"):
        verify_statement(rewritten, reference=ref, nonce=fresh, trust=tee.trust())


def test_a_statement_whose_tee_is_not_its_evidences_is_refused(
    snp: SnpKit, snp_coordinator: FakeCoordinator
) -> None:
    nonce = os.urandom(32)
    statement = snp_coordinator.statement(nonce, tee="tdx")
    with pytest.raises(StatementError, match="says tee 'tdx', its evidence is 'sev-snp'"):
        verify_statement(statement, reference=SNP_REF, nonce=nonce, trust=snp.trust())


def test_hardware_evidence_in_a_statement_claiming_simulation_is_refused(
    snp: SnpKit, snp_coordinator: FakeCoordinator
) -> None:
    nonce = os.urandom(32)
    statement = snp_coordinator.statement(nonce, simulation=True)
    with pytest.raises(StatementError, match="claims simulation"):
        verify_statement(statement, reference=SNP_REF, nonce=nonce, trust=snp.trust())


def test_simulated_evidence_in_a_statement_claiming_hardware_is_refused() -> None:
    d = deployment()
    nonce = os.urandom(32)
    statement = d.coordinator.statement(nonce)
    keys = [d.platform.public_key]
    verify_statement(statement, reference=d.reference, platform_keys=keys, nonce=nonce)
    with pytest.raises(StatementError, match="claims hardware, its evidence is simulated"):
        verify_statement(
            edited(statement, simulation=False),
            reference=d.reference,
            platform_keys=keys,
            nonce=nonce,
        )
    with pytest.raises(StatementError, match="says tee 'sev-snp', its evidence is 'simulated'"):
        verify_statement(
            edited(statement, tee="sev-snp", simulation=False),
            reference=SNP_REF,
            platform_keys=keys,
            nonce=nonce,
        )


def test_the_wrong_measurement_is_refused(snp: SnpKit) -> None:
    nonce = os.urandom(32)
    other = FakeCoordinator(lambda data: snp.evidence(data, measurement=b"\x01" * 48))
    with pytest.raises(StatementError, match="coordinator measurement mismatch"):
        verify_statement(other.statement(nonce), reference=SNP_REF, nonce=nonce, trust=snp.trust())


def test_a_policy_with_one_matching_entry_of_two(
    snp: SnpKit, snp_coordinator: FakeCoordinator
) -> None:
    nonce = os.urandom(32)
    policy = VerificationPolicy(accept=(TDX_REF, SNP_REF))
    verified = verify_statement(
        snp_coordinator.statement(nonce), policy=policy, nonce=nonce, trust=snp.trust()
    )
    assert verified.matched.index == 1
