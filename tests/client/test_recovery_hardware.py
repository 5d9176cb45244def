"""geode.client.verify_recovery_offer with hardware evidence (SEV-SNP, forged with the kit under
test roots given as ``TrustAnchors``): accepted when bound to the recovery key and this party's
nonce, refused for another nonce, and refused when its ``simulation`` flag or its ``tee`` is
not its evidence's; checked against a ``VerificationPolicy`` with alternatives as a statement
is."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from geode.attestation import ReferenceValues
from geode.client import VerificationPolicy, verify_recovery_offer
from geode.errors import StatementError
from geode.pki import public_key_der
from geode.protocol import EvidenceBody, RecoveryOffer, recovery_binding
from tests.support.hardware_statement import SNP_MEASUREMENT, SnpKit

REF = ReferenceValues(tee="sev-snp", measurement=SNP_MEASUREMENT.hex())


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def offer(
    snp: SnpKit,
    key: rsa.RSAPrivateKey,
    nonce: bytes,
    simulation: bool = False,
    tee: str = "sev-snp",
) -> RecoveryOffer:
    public = key.public_key()
    evidence = snp.evidence(recovery_binding(public_key_der(public), nonce))
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return RecoveryOffer(
        threshold=1,
        parties={},
        received=[],
        recovery_key=pem,
        nonce=nonce.hex(),
        simulation=simulation,
        tee=tee,
        evidence=EvidenceBody.of(evidence),
    )


def test_a_hardware_offer_verifies_under_the_kits_roots(
    snp: SnpKit, key: rsa.RSAPrivateKey
) -> None:
    nonce = os.urandom(32)
    got = verify_recovery_offer(
        offer(snp, key, nonce), reference=REF, nonce=nonce, trust=snp.trust()
    )
    assert public_key_der(got) == public_key_der(key.public_key())


def test_an_offer_for_another_nonce_is_refused(snp: SnpKit, key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(StatementError, match="recovery key and nonce"):
        verify_recovery_offer(
            offer(snp, key, os.urandom(32)), reference=REF, nonce=os.urandom(32), trust=snp.trust()
        )


def test_hardware_evidence_in_an_offer_claiming_simulation_is_refused(
    snp: SnpKit, key: rsa.RSAPrivateKey
) -> None:
    nonce = os.urandom(32)
    with pytest.raises(StatementError, match="claims simulation"):
        verify_recovery_offer(
            offer(snp, key, nonce, simulation=True), reference=REF, nonce=nonce, trust=snp.trust()
        )


@pytest.mark.parametrize("stated", ["tdx", "sgx", "simulated"])
def test_an_offer_naming_another_tee_than_its_evidence_is_refused(
    snp: SnpKit, key: rsa.RSAPrivateKey, stated: str
) -> None:
    nonce = os.urandom(32)
    with pytest.raises(StatementError, match=f"says tee '{stated}', its evidence is 'sev-snp'"):
        verify_recovery_offer(
            offer(snp, key, nonce, tee=stated), reference=REF, nonce=nonce, trust=snp.trust()
        )


def test_an_offer_matches_any_entry_of_a_policy(snp: SnpKit, key: rsa.RSAPrivateKey) -> None:
    nonce = os.urandom(32)
    other = ReferenceValues(tee="sev-snp", measurement="11" * 48)
    policy = VerificationPolicy.of(other, REF)
    got = verify_recovery_offer(
        offer(snp, key, nonce), policy=policy, nonce=nonce, trust=snp.trust()
    )
    assert public_key_der(got) == public_key_der(key.public_key())
    with pytest.raises(StatementError, match=r"no accepted reference values match.*accept\[0\]"):
        verify_recovery_offer(
            offer(snp, key, nonce),
            policy=VerificationPolicy.of(other, other),
            nonce=nonce,
            trust=snp.trust(),
        )
