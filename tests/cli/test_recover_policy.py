"""``geode recover`` against a recovering Coordinator on (forged) SEV-SNP hardware: its offer is
checked under ``CliDeps(trust=...)`` (the kit's roots, the only way a test root reaches the
command) against a policy file with alternatives, as ``geode verify --policy`` takes it; an
offer matching no entry is refused and no share leaves. The Coordinator's answers are the
client's two recovery calls, replaced in-process."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from geode.attestation import TrustAnchors
from geode.cli import cli
from geode.cli._common import CliDeps
from geode.client import CoordinatorClient
from geode.pki import public_key_der
from geode.protocol import (
    RECOVERY_SHARE_LABEL,
    EvidenceBody,
    RecoveryOffer,
    RecoveryParty,
    RecoveryProgress,
    recovery_binding,
)
from tests.support.hardware_statement import SNP_MEASUREMENT, SnpKit

SNP = {"tee": "sev-snp", "measurement": SNP_MEASUREMENT.hex()}
OTHER = {"tee": "sev-snp", "measurement": "11" * 48}


def _pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class Recovering:
    """A recovering Coordinator's two answers: an offer whose SNP evidence binds its recovery
    key to the caller's nonce, and the shares it receives."""

    def __init__(self, snp: SnpKit, party: rsa.RSAPrivateKey) -> None:
        self.snp = snp
        self.key = rsa.generate_private_key(65537, 2048)
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=RECOVERY_SHARE_LABEL
        )
        share = party.public_key().encrypt(b"share of p1", oaep)
        self.party = RecoveryParty(
            share=base64.b64encode(share).decode(), public_key=_pem(party.public_key())
        )
        self.uploads: list[str] = []

    def offer(self, nonce: bytes) -> RecoveryOffer:
        binding = recovery_binding(public_key_der(self.key.public_key()), nonce)
        return RecoveryOffer(
            threshold=2,
            parties={"p1": self.party},
            received=[],
            recovery_key=_pem(self.key.public_key()),
            nonce=nonce.hex(),
            simulation=False,
            tee="sev-snp",
            evidence=EvidenceBody.of(self.snp.evidence(binding)),
        )

    def upload(self, party: str, share: bytes, signature: bytes) -> RecoveryProgress:
        self.uploads.append(party)
        return RecoveryProgress(state="recovery", threshold=2, received=[party])


@pytest.fixture(scope="module")
def snp() -> SnpKit:
    return SnpKit()


@pytest.fixture
def party(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(65537, 2048)
    path = tmp_path / "p1.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def recovering(snp: SnpKit, party: Path, monkeypatch: pytest.MonkeyPatch) -> Recovering:
    key = serialization.load_pem_private_key(party.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    coordinator = Recovering(snp, key)
    monkeypatch.setattr(CoordinatorClient, "recovery_offer", coordinator.offer)
    monkeypatch.setattr(CoordinatorClient, "upload_share", coordinator.upload)
    return coordinator


def recover(tmp_path: Path, party: Path, trust: TrustAnchors, *entries: object) -> Result:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 1, "accept": list(entries)}))
    args = ["recover", "--key", str(party), "--policy", str(policy)]
    return CliRunner().invoke(
        cli, [*args, "--coordinator", "127.0.0.1:1"], obj=CliDeps(trust=trust)
    )


def test_a_hardware_offer_is_checked_under_the_deps_trust_against_any_policy_entry(
    tmp_path: Path, snp: SnpKit, party: Path, recovering: Recovering
) -> None:
    result = recover(tmp_path, party, snp.trust(), OTHER, SNP)
    assert result.exit_code == 0, result.output
    assert "share of p1 accepted: 1 of 2 (p1)" in result.output
    assert recovering.uploads == ["p1"]


def test_an_offer_matching_no_entry_is_refused_and_no_share_leaves(
    tmp_path: Path, snp: SnpKit, party: Path, recovering: Recovering
) -> None:
    result = recover(tmp_path, party, snp.trust(), OTHER)
    assert result.exit_code == 1, result.output
    assert "recovering Coordinator REJECTED" in result.output
    assert "measurement" in result.output
    assert recovering.uploads == []


def test_without_the_test_roots_the_forged_offer_is_refused(
    tmp_path: Path, party: Path, recovering: Recovering
) -> None:
    result = recover(tmp_path, party, TrustAnchors(), SNP)
    assert result.exit_code == 1, result.output
    assert "recovering Coordinator REJECTED" in result.output
    assert recovering.uploads == []
