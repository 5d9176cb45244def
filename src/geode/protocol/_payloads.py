"""The signed payloads and report-data bindings of Geode's protocol: what the root key, an
instance, a recovery party and a recovering or joining Coordinator sign or bind into evidence.

Each payload is domain-separated from everything else the same keys sign. The byte formats are
part of the wire format: a statement signed before must verify after, so none of them ever
changes (a new format gets a new ``v2`` label).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from geode.attestation import REPORT_DATA_SIZE

__all__ = [
    "RECOVERY_SHARE_LABEL",
    "RECOVERY_TRANSPORT_LABEL",
    "audit_entry_hash",
    "audit_signing_payload",
    "join_answer_binding",
    "join_request_binding",
    "key_binding",
    "manifest_signing_payload",
    "recovery_binding",
    "recovery_upload_payload",
    "renewal_payload",
    "statement_binding",
    "statement_signing_payload",
]

# RSA-OAEP labels: a share encrypted to a party's key, and a share on its way to a recovering
# Coordinator. One can never be passed off as the other.
RECOVERY_SHARE_LABEL = b"geode recovery share v1"
RECOVERY_TRANSPORT_LABEL = b"geode recovery transport v1"


def _pad(digest: bytes) -> bytes:
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


def key_binding(public_key_der: bytes, nonce: bytes) -> bytes:
    """Report data that binds an instance's key to the Coordinator's nonce."""
    return _pad(hashlib.sha256(public_key_der + nonce).digest())


def statement_binding(root_der: bytes, manifest_sha256: bytes, nonce: bytes) -> bytes:
    """Report data of a deployment statement: root certificate, manifest and the caller's nonce."""
    return _pad(hashlib.sha256(root_der + manifest_sha256 + nonce).digest())


def statement_signing_payload(
    nonce: bytes, manifest_sha256: bytes, mesh_ca_der: bytes, state: str
) -> bytes:
    """What the root key signs in a deployment statement: it binds the current mesh CA and
    the Coordinator's state to the caller's nonce."""
    return (
        b"geode deployment statement v1\0"
        + hashlib.sha256(nonce).digest()
        + manifest_sha256
        + hashlib.sha256(mesh_ca_der).digest()
        + state.encode()
    )


def renewal_payload(nonce: bytes, new_public_key_der: bytes) -> bytes:
    """What an instance signs with its current key to renew: the nonce and its next key."""
    return b"geode renew v1\0" + hashlib.sha256(nonce + new_public_key_der).digest()


def manifest_signing_payload(manifest_sha256: bytes) -> bytes:
    """What the root key signs for a manifest (domain-separated from everything else it signs)."""
    return b"geode manifest v1\0" + manifest_sha256


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
    return _pad(hashlib.sha256(b"geode recovery v1\0" + recovery_key_der + nonce).digest())


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
    return _pad(hashlib.sha256(b"geode join request v1\0" + newcomer_key_der + nonce).digest())


def join_answer_binding(
    peer_key_der: bytes, newcomer_key_der: bytes, nonce: bytes, sealed_key: bytes
) -> bytes:
    """Report data of the peer's answer: its key, the newcomer's key and nonce, and the sealed
    cluster key it sends."""
    return _pad(
        hashlib.sha256(
            b"geode join answer v1\0"
            + hashlib.sha256(peer_key_der).digest()
            + hashlib.sha256(newcomer_key_der).digest()
            + hashlib.sha256(sealed_key).digest()
            + nonce
        ).digest()
    )
