"""Verifying a deployment statement: the one document that proves a whole deployment."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation import (
    Claims,
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    match_claims,
    statement_binding,
)
from geode.errors import ClaimsMismatch, EvidenceError, PKIError, StatementError
from geode.pki import certificate_der, fingerprint, load_certificate

__all__ = ["VerifiedStatement", "statement_manifest", "verify_statement"]


@dataclass(frozen=True)
class VerifiedStatement:
    """What a verified statement proves."""

    root: x509.Certificate
    mesh_ca: x509.Certificate
    manifest_sha256: bytes | None
    claims: Claims
    simulation: bool
    state: str

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)


def _field(statement: dict[str, Any], name: str, kind: type) -> Any:
    value = statement.get(name)
    if not isinstance(value, kind):
        raise StatementError(f"statement field {name!r} is missing or not a {kind.__name__}")
    return value


def verify_statement(
    statement: Any,
    *,
    reference: ReferenceValues,
    platform_keys: Sequence[Ed25519PublicKey] = (),
    nonce: bytes | None = None,
) -> VerifiedStatement:
    """Check a deployment statement; raises ``StatementError`` naming what failed.

    ``nonce`` is the caller's fresh nonce; ``None`` skips the freshness check (offline use).
    Simulated evidence verifies only against ``platform_keys``.
    """
    if not isinstance(statement, dict) or statement.get("version") != 1:
        raise StatementError("not a version 1 deployment statement")
    nonce_hex = _field(statement, "nonce", str)
    try:
        stated_nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        raise StatementError("statement nonce is not hex") from None
    if nonce is not None and not hmac.compare_digest(stated_nonce, nonce):
        raise StatementError("statement answers another nonce (replayed or stale)")
    try:
        root = load_certificate(_field(statement, "root_certificate", str), "root_certificate")
        mesh = load_certificate(
            _field(statement, "mesh_ca_certificate", str), "mesh_ca_certificate"
        )
        evidence = Evidence.from_json(statement.get("evidence"))
    except (PKIError, EvidenceError) as exc:
        raise StatementError(str(exc)) from None
    verifier = EvidenceVerifier(
        simulation=evidence.kind == "simulated", platform_keys=platform_keys
    )
    try:
        claims = verifier.verify(evidence)
    except EvidenceError as exc:
        raise StatementError(f"coordinator evidence: {exc}") from None
    try:
        match_claims(claims, reference)
    except ClaimsMismatch as exc:
        raise StatementError(f"coordinator {exc}") from None

    manifest_hex = statement.get("manifest_sha256")
    manifest_sha: bytes | None = None
    if manifest_hex is not None:
        try:
            manifest_sha = bytes.fromhex(manifest_hex)
        except (ValueError, TypeError):
            raise StatementError("manifest_sha256 is not hex") from None
        if len(manifest_sha) != 32:
            raise StatementError("manifest_sha256 is not a SHA-256 digest")
    expected = statement_binding(certificate_der(root), manifest_sha or bytes(32), stated_nonce)
    if not hmac.compare_digest(claims.report_data, expected):
        raise StatementError(
            "coordinator evidence is not bound to this root certificate, manifest and nonce"
        )
    _check_chain(root, mesh)
    if manifest_sha is not None:
        _check_manifest_signature(root, manifest_sha, statement.get("manifest_signature"))
    return VerifiedStatement(
        root=root,
        mesh_ca=mesh,
        manifest_sha256=manifest_sha,
        claims=claims,
        simulation=evidence.kind == "simulated",
        state=str(statement.get("state")),
    )


def _check_chain(root: x509.Certificate, mesh: x509.Certificate) -> None:
    try:
        root.verify_directly_issued_by(root)
        mesh.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise StatementError("mesh CA certificate is not issued by the root certificate") from None


def _check_manifest_signature(root: x509.Certificate, digest: bytes, signature: Any) -> None:
    if not isinstance(signature, str):
        raise StatementError("manifest_signature is missing")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise StatementError("manifest_signature is not base64") from None
    key = root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise StatementError("root key is not an ECDSA key")
    try:
        key.verify(raw, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise StatementError("manifest signature does not verify with the root key") from None


def statement_manifest(statement: Any, *, root: x509.Certificate, nonce: bytes) -> bytes | None:
    """The manifest hash a statement vouches for, given an already trusted (pinned) root.

    Checks the nonce, that the statement carries exactly ``root``, and the root's signature over
    the manifest hash; the evidence itself was checked when the root was pinned.
    """
    if not isinstance(statement, dict) or statement.get("version") != 1:
        raise StatementError("not a version 1 deployment statement")
    if statement.get("nonce") != nonce.hex():
        raise StatementError("statement answers another nonce (replayed or stale)")
    try:
        stated_root = load_certificate(_field(statement, "root_certificate", str))
    except PKIError as exc:
        raise StatementError(str(exc)) from None
    if stated_root != root:
        raise StatementError("statement carries another root certificate than the pinned one")
    manifest_hex = statement.get("manifest_sha256")
    if manifest_hex is None:
        return None
    try:
        digest = bytes.fromhex(manifest_hex)
    except (TypeError, ValueError):
        raise StatementError("manifest_sha256 is not hex") from None
    _check_manifest_signature(root, digest, statement.get("manifest_signature"))
    return digest
