"""Verifying a deployment statement: the one document that proves a whole deployment.

A statement carries the Coordinator's evidence, whose report data binds the root certificate, the
manifest hash and the caller's nonce; the root's signature over the manifest hash; and the root's
signature over (nonce, manifest hash, mesh CA), which ties the *current* mesh CA to this answer.

The statement's ``tee`` and ``simulation`` fields are what a reader sees first; they must say
what the evidence is (its kind, and whether it is simulated), or the statement is refused, so
that simulated evidence never passes for a hardware TEE's, nor the reverse. Hardware evidence is
checked under ``trust`` (``TrustAnchors``: the pinned vendor roots, collateral, the clock).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation import Claims, Evidence, EvidenceVerifier, ReferenceValues, TrustAnchors
from geode.client._policy import PolicyMatch, VerificationPolicy
from geode.errors import ClaimsMismatch, EvidenceError, PKIError, StatementError
from geode.pki import certificate_der, fingerprint, load_certificate
from geode.protocol import (
    DeploymentStatement,
    manifest_signing_payload,
    statement_binding,
    statement_signing_payload,
)

__all__ = ["VerifiedStatement", "statement_manifest", "verify_statement"]


@dataclass(frozen=True)
class VerifiedStatement:
    """What a verified statement proves, and the statement itself (to keep, or to show)."""

    statement: DeploymentStatement
    root: x509.Certificate
    mesh_ca: x509.Certificate
    manifest_sha256: bytes | None
    claims: Claims
    simulation: bool
    state: str
    matched: PolicyMatch

    @property
    def tee(self) -> str:
        return self.claims.tee

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)


@dataclass(frozen=True)
class _Parsed:
    nonce: bytes
    root: x509.Certificate
    mesh: x509.Certificate
    manifest_sha256: bytes | None
    state: str


def _hex(value: str, name: str, size: int | None = None) -> bytes:
    try:
        decoded = bytes.fromhex(value)
    except ValueError:
        raise StatementError(f"statement field {name!r} is not hex") from None
    if size is not None and len(decoded) != size:
        raise StatementError(f"statement field {name!r} is not a SHA-256 digest")
    return decoded


def _b64(value: str | None, name: str) -> bytes:
    if value is None:
        raise StatementError(f"statement field {name!r} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise StatementError(f"statement field {name!r} is not base64") from None


def _parse(statement: DeploymentStatement, nonce: bytes | None) -> _Parsed:
    """Freshness, and the fields decoded (the model checked the shape)."""
    stated_nonce = _hex(statement.nonce, "nonce")
    if nonce is not None and not hmac.compare_digest(stated_nonce, nonce):
        raise StatementError("statement answers another nonce (replayed or stale)")
    try:
        root = load_certificate(statement.root_certificate, "root_certificate")
        mesh = load_certificate(statement.mesh_ca_certificate, "mesh_ca_certificate")
    except PKIError as exc:
        raise StatementError(str(exc)) from None
    manifest_sha = (
        None
        if statement.manifest_sha256 is None
        else _hex(statement.manifest_sha256, "manifest_sha256", 32)
    )
    return _Parsed(stated_nonce, root, mesh, manifest_sha, statement.state)


def _check_root_signatures(statement: DeploymentStatement, parsed: _Parsed) -> None:
    """The mesh CA's issuance, and the root's signatures over the statement and the manifest."""
    key = parsed.root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise StatementError("root key is not an ECDSA key")
    _check_mesh_ca(parsed.root, parsed.mesh)
    payload = statement_signing_payload(
        parsed.nonce,
        parsed.manifest_sha256 or bytes(32),
        certificate_der(parsed.mesh),
        parsed.state,
    )
    try:
        signature = _b64(statement.statement_signature, "statement_signature")
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise StatementError("statement signature does not verify with the root key") from None
    if parsed.manifest_sha256 is not None:
        try:
            key.verify(
                _b64(statement.manifest_signature, "manifest_signature"),
                manifest_signing_payload(parsed.manifest_sha256),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise StatementError("manifest signature does not verify with the root key") from None


def _check_mesh_ca(root: x509.Certificate, mesh: x509.Certificate) -> None:
    try:
        root.verify_directly_issued_by(root)
        mesh.verify_directly_issued_by(root)
        constraints = mesh.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise StatementError("mesh CA certificate is not issued by the root certificate") from None
    if mesh == root or not constraints.ca:
        raise StatementError("mesh CA certificate is not an intermediate CA of the root")


def verify_statement(
    statement: DeploymentStatement,
    *,
    reference: ReferenceValues | None = None,
    policy: VerificationPolicy | None = None,
    platform_keys: Sequence[Ed25519PublicKey] = (),
    nonce: bytes | None = None,
    trust: TrustAnchors | None = None,
) -> VerifiedStatement:
    """Check a deployment statement; raises ``StatementError`` naming what failed.

    The Coordinator must match ``reference``, or one entry of ``policy`` (exactly one of the
    two); ``policy``'s collateral and certificates add to ``trust`` (default: the pinned vendor
    roots and the wall clock). ``nonce`` is the caller's fresh nonce; ``None`` skips the
    freshness check (offline use). A statement read from JSON is
    ``DeploymentStatement.from_json`` first. Simulated evidence verifies only against
    ``platform_keys``.
    """
    if reference is not None and policy is None:
        policy = VerificationPolicy.of(reference)
    elif policy is None or reference is not None:
        raise ValueError("give exactly one of reference and policy")
    parsed = _parse(statement, nonce)
    try:
        evidence = statement.evidence.evidence()
    except EvidenceError as exc:
        raise StatementError(f"coordinator evidence: {exc}") from None
    _check_stated_tee(statement, evidence)
    try:
        claims = EvidenceVerifier(
            simulation=evidence.kind == "simulated",
            platform_keys=platform_keys,
            trust=policy.anchors(trust or TrustAnchors()),
        ).verify(evidence)
    except EvidenceError as exc:
        raise StatementError(f"coordinator evidence: {exc}") from None
    try:
        matched = policy.match(claims)
    except ClaimsMismatch as exc:
        raise StatementError(f"coordinator {exc}") from None
    expected = statement_binding(
        certificate_der(parsed.root), parsed.manifest_sha256 or bytes(32), parsed.nonce
    )
    if not hmac.compare_digest(claims.report_data, expected):
        raise StatementError(
            "coordinator evidence is not bound to this root certificate, manifest and nonce"
        )
    _check_root_signatures(statement, parsed)
    return VerifiedStatement(
        statement=statement,
        root=parsed.root,
        mesh_ca=parsed.mesh,
        manifest_sha256=parsed.manifest_sha256,
        claims=claims,
        simulation=evidence.kind == "simulated",
        state=parsed.state,
        matched=matched,
    )


def _check_stated_tee(statement: DeploymentStatement, evidence: Evidence) -> None:
    """The statement's ``tee`` and ``simulation`` say what its evidence is."""
    if statement.tee != evidence.kind:
        raise StatementError(
            f"the statement says tee {statement.tee!r}, its evidence is {evidence.kind!r}"
        )
    simulated = evidence.kind == "simulated"
    if statement.simulation != simulated:
        if simulated:
            raise StatementError("the statement claims hardware, its evidence is simulated")
        raise StatementError(
            f"the statement claims simulation, its evidence is {evidence.kind!r} hardware evidence"
        )


def statement_manifest(
    statement: DeploymentStatement, *, root: x509.Certificate, nonce: bytes
) -> bytes | None:
    """The manifest hash a statement vouches for, given an already trusted (pinned) root.

    Checks the nonce, that the statement carries exactly ``root``, and the root's signatures;
    the evidence itself was checked when the root was pinned.
    """
    parsed = _parse(statement, nonce)
    if parsed.root != root:
        raise StatementError("statement carries another root certificate than the pinned one")
    _check_root_signatures(statement, parsed)
    return parsed.manifest_sha256
