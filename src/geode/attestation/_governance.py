"""What the root key and the recovery parties sign for governance, what binds a recovering
Coordinator's evidence to its share-receiving key, and what binds two Coordinators' evidence to
the handover of the cluster key between them. Each payload is domain-separated from
everything else these keys sign (``_evidence`` holds the others)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from geode.attestation._evidence import REPORT_DATA_SIZE

__all__ = [
    "RECOVERY_SHARE_LABEL",
    "RECOVERY_TRANSPORT_LABEL",
    "audit_entry_hash",
    "audit_signing_payload",
    "join_answer_binding",
    "join_request_binding",
    "recovery_binding",
    "recovery_upload_payload",
]

# RSA-OAEP labels: a share encrypted to a party's key, and a share on its way to a recovering
# Coordinator. One can never be passed off as the other.
RECOVERY_SHARE_LABEL = b"geode recovery share v1"
RECOVERY_TRANSPORT_LABEL = b"geode recovery transport v1"


def audit_entry_hash(body: Mapping[str, Any]) -> bytes:
    """SHA-256 of an audit entry's body (everything but its signature) in canonical JSON:
    sorted keys, no spaces, ASCII only, so every reader hashes the same bytes."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).digest()


def audit_signing_payload(entry_hash: bytes) -> bytes:
    """What the root key signs for one audit entry."""
    return b"geode audit entry v1\0" + entry_hash


def recovery_binding(recovery_key_der: bytes, nonce: bytes) -> bytes:
    """Report data of a Coordinator in recovery: the key it receives shares under, and the
    party's nonce."""
    digest = hashlib.sha256(b"geode recovery v1\0" + recovery_key_der + nonce).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


def recovery_upload_payload(party: str, recovery_key_der: bytes, sealed_share: bytes) -> bytes:
    """What a recovery party signs: its name, the receiving key and its share sealed to it."""
    return (
        b"geode recovery share v1\0"
        + hashlib.sha256(party.encode()).digest()
        + hashlib.sha256(recovery_key_der).digest()
        + hashlib.sha256(sealed_share).digest()
    )


def join_request_binding(newcomer_key_der: bytes, nonce: bytes) -> bytes:
    """Report data of a Coordinator asking a peer for the cluster key: the key it receives it
    under, and the peer's nonce."""
    digest = hashlib.sha256(b"geode join request v1\0" + newcomer_key_der + nonce).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


def join_answer_binding(
    peer_key_der: bytes, newcomer_key_der: bytes, nonce: bytes, sealed_key: bytes
) -> bytes:
    """Report data of the peer's answer: its key, the newcomer's key and nonce, and the sealed
    cluster key it sends."""
    digest = hashlib.sha256(
        b"geode join answer v1\0"
        + hashlib.sha256(peer_key_der).digest()
        + hashlib.sha256(newcomer_key_der).digest()
        + hashlib.sha256(sealed_key).digest()
        + nonce
    ).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))
