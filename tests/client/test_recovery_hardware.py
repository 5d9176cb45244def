"""geode.client.verify_recovery_offer with hardware evidence (SEV-SNP, forged with the kit under
test roots given as ``TrustAnchors``): accepted when bound to the recovery key and this party's
nonce, refused for another nonce, and refused when its ``simulation`` flag is not its
evidence's."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from geode.attestation import ReferenceValues
from geode.client import verify_recovery_offer
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
    snp: SnpKit, key: rsa.RSAPrivateKey, nonce: bytes, simulation: bool = False
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
