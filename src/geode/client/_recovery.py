"""A recovery party's side: check that the Coordinator asking for shares is genuine, then hand it
this party's share, encrypted to the key its evidence vouches for and signed with the party's
recovery key."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation import EvidenceVerifier, ReferenceValues, TrustAnchors, match_claims
from geode.errors import ClaimsMismatch, ClientError, EvidenceError, StatementError
from geode.pki import public_key_der
from geode.protocol import (
    RECOVERY_SHARE_LABEL,
    RECOVERY_TRANSPORT_LABEL,
    RecoveryOffer,
    recovery_binding,
    recovery_upload_payload,
)

__all__ = ["ShareUpload", "prepare_share_upload", "verify_recovery_offer"]


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def verify_recovery_offer(
    offer: RecoveryOffer,
    *,
    reference: ReferenceValues,
    platform_keys: Sequence[Ed25519PublicKey] = (),
    nonce: bytes,
    trust: TrustAnchors | None = None,
) -> rsa.RSAPublicKey:
    """The key a recovering Coordinator receives shares under, once its evidence is checked
    (hardware evidence under ``trust``, default: the pinned vendor roots; simulated evidence
    against ``platform_keys``): the expected Coordinator (``reference``), bound to that key and
    this party's ``nonce``."""
    try:
        key = serialization.load_pem_public_key(offer.recovery_key.encode())
        evidence = offer.evidence.evidence()
    except (ValueError, TypeError, EvidenceError) as exc:
        raise StatementError(f"malformed recovery offer: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise StatementError("the recovery key is not an RSA key")
    if offer.simulation != (evidence.kind == "simulated"):
        claimed = "simulation" if offer.simulation else "hardware"
        raise StatementError(f"the offer claims {claimed}, its evidence is {evidence.kind!r}")
    try:
        claims = EvidenceVerifier(
            simulation=evidence.kind == "simulated", platform_keys=platform_keys, trust=trust
        ).verify(evidence)
        match_claims(claims, reference)
    except EvidenceError as exc:
        raise StatementError(f"recovering Coordinator's evidence: {exc}") from None
    except ClaimsMismatch as exc:
        raise StatementError(f"recovering Coordinator: {exc}") from None
    if not hmac.compare_digest(claims.report_data, recovery_binding(public_key_der(key), nonce)):
        raise StatementError("the evidence does not vouch for this recovery key and nonce")
    return key


@dataclass(frozen=True)
class ShareUpload:
    party: str
    sealed_share: bytes
    signature: bytes


def _party_of(offer: RecoveryOffer, key: rsa.RSAPrivateKey) -> str:
    mine = public_key_der(key.public_key())
    for name, party in offer.parties.items():
        try:
            theirs = serialization.load_pem_public_key(party.public_key.encode())
        except (ValueError, TypeError):
            continue
        if public_key_der(theirs) == mine:
            return name
    raise ClientError("this key is not one of the state's recovery keys")


def prepare_share_upload(
    offer: RecoveryOffer,
    party_key: rsa.RSAPrivateKey,
    recovery_key: rsa.RSAPublicKey,
    *,
    encrypted_share: bytes | None = None,
) -> ShareUpload:
    """Decrypt this party's share (from the offer, or one saved when the manifest was set),
    encrypt it to ``recovery_key`` and sign the upload."""
    party = _party_of(offer, party_key)
    if encrypted_share is None:
        try:
            encrypted_share = base64.b64decode(offer.parties[party].share, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError(f"the offer carries no share for {party!r}") from None
    try:
        share = party_key.decrypt(encrypted_share, _oaep(RECOVERY_SHARE_LABEL))
    except ValueError:
        raise ClientError(f"this key does not open the share of {party!r}") from None
    sealed = recovery_key.encrypt(share, _oaep(RECOVERY_TRANSPORT_LABEL))
    signature = party_key.sign(
        recovery_upload_payload(party, public_key_der(recovery_key), sealed),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return ShareUpload(party, sealed, signature)
