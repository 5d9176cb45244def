"""The Coordinator's state machine: manifest, activation and the deployment statement.

Everything here is synchronous and runs on the server's event loop, so each operation is atomic
with respect to the others; only ``prepare_manifest`` (validation and key generation, which can be
slow) runs in a worker thread and touches no mutable state. Persisting a change is the caller's
next step, and nothing is handed out before the change that produced it is on disk: a change
that cannot be saved is reverted.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import (
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    SimulatedPlatform,
    key_binding,
    manifest_signing_payload,
    match_claims,
    renewal_payload,
    statement_binding,
    statement_signing_payload,
)
from geode.coordinator._activation import (
    ActivationRequest,
    ActivationResult,
    RenewalRequest,
    render_activation,
)
from geode.coordinator._latest import LatestCertificates
from geode.coordinator._nonces import NonceStore
from geode.coordinator._seal import Sealer
from geode.coordinator._secrets import generate_secret, template_value
from geode.coordinator._state import CoordinatorState
from geode.errors import (
    ActivationDenied,
    ClaimsMismatch,
    CoordinatorUnavailable,
    EvidenceError,
    GeodeError,
    ManifestConflict,
    PKIError,
    SealError,
)
from geode.manifest import CertificateSecret, ManifestDocument, load_manifest
from geode.pki import (
    CertificateAuthority,
    Clock,
    LeafParams,
    SpiffeId,
    certificate_der,
    certificate_pem,
    fingerprint,
    load_certificate,
    load_csr_public_key,
    load_private_key,
    private_key_pem,
    public_key_der,
    uri_sans,
    utc_now,
)

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "Pending",
    "PreparedManifest",
    "State",
    "reference_values",
]

log = logging.getLogger("geode.coordinator")

T = TypeVar("T")


class State(StrEnum):
    AWAITING_MANIFEST = "awaiting-manifest"
    ACTIVE = "active"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class CoordinatorSettings:
    simulation: bool = False
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)


@dataclass(frozen=True)
class Pending(Generic[T]):
    """A change made in memory, with the means to undo it if it cannot be saved."""

    value: T
    revert: Callable[[], None]


@dataclass(frozen=True)
class PreparedManifest:
    """A validated manifest with its generated secrets and signature, not yet adopted."""

    document: ManifestDocument
    state: CoordinatorState
    values: dict[str, bytes | CertificateSecret]


def reference_values(package: Any) -> ReferenceValues:
    """A manifest package as the reference values its evidence is matched against."""
    return ReferenceValues(**package.model_dump())


@dataclass
class _Keys:
    """Parsed forms of the state's keys, certificates and secrets."""

    root: CertificateAuthority
    mesh: CertificateAuthority
    secrets: dict[str, bytes | CertificateSecret] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root_pem = certificate_pem(self.root.certificate)
        self.mesh_pem = certificate_pem(self.mesh.certificate)

    @property
    def root_key(self) -> ec.EllipticCurvePrivateKey:
        key = self.root.key
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # Geode creates P-256 roots
            raise SealError("the root key is not an ECDSA key")
        return key


class Coordinator:
    """The control plane's core."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        verifier: EvidenceVerifier,
        platform: SimulatedPlatform | None,
        measurement: bytes,
        sealing_key: bytes,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.platform = platform
        self.measurement = measurement
        self._sealing_key = sealing_key
        self._clock = clock
        self.nonces = NonceStore(settings.nonce_ttl, clock)
        self.state = State.RECOVERY
        self.recovery_reason = "not started"
        self._data: CoordinatorState | None = None
        self._keys: _Keys | None = None
        self._document: ManifestDocument | None = None
        self._sealer: Sealer | None = None
        self.started_at = clock()

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, blob: bytes | None) -> None:
        """Unseal ``blob`` or, when there is none, create a fresh root of trust in memory.

        A fresh root is saved only together with the first manifest, so the state on disk can
        never be rolled back to "root, but no manifest yet" and handed a different manifest. A
        blob that cannot be opened puts the Coordinator in ``recovery``; it never starts empty
        over it.
        """
        if blob is None:
            self._create()
            return
        try:
            self._sealer, raw = Sealer.unseal(blob, self._sealing_key)
            self._adopt(CoordinatorState.from_bytes(raw, now=self._clock()))
        except SealError as exc:
            self.state = State.RECOVERY
            self.recovery_reason = str(exc)
            log.error("sealed state cannot be opened; entering recovery: %s", exc)

    def _create(self) -> None:
        root = CertificateAuthority.create_root(clock=self._clock)
        mesh = root.create_intermediate("Geode Mesh CA", clock=self._clock)
        self._sealer = Sealer(self._sealing_key)
        self._adopt(
            CoordinatorState(
                root_key=private_key_pem(root.key),
                root_certificate=certificate_pem(root.certificate).encode(),
                mesh_key=private_key_pem(mesh.key),
                mesh_certificate=certificate_pem(mesh.certificate).encode(),
                created_at=self._clock().isoformat(),
            )
        )

    def _adopt(self, data: CoordinatorState) -> None:
        try:
            root = CertificateAuthority(
                load_private_key(data.root_key), load_certificate(data.root_certificate)
            )
            mesh_cert = load_certificate(data.mesh_certificate)
            mesh = CertificateAuthority(load_private_key(data.mesh_key), mesh_cert, (mesh_cert,))
            values = {n: template_value(s) for n, s in data.secrets.items()}
            document = None if data.manifest is None else load_manifest(data.manifest)
        except (GeodeError, ValueError, TypeError) as exc:
            raise SealError(f"sealed state is inconsistent: {exc}") from None
        self._data = data
        self._keys = _Keys(root, mesh, values)
        self._document = document
        self.state = State.ACTIVE if document is not None else State.AWAITING_MANIFEST
        self.recovery_reason = ""

    def sealed_state(self) -> bytes:
        """The current state, sealed, ready for the store."""
        if self._data is None or self._sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return self._sealer.seal(self._data.to_bytes())

    def seal(self, prepared: PreparedManifest) -> bytes:
        if self._sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return self._sealer.seal(prepared.state.to_bytes())

    # -- accessors ---------------------------------------------------------------------------

    def _require_keys(self) -> _Keys:
        if self._keys is None:
            raise CoordinatorUnavailable(f"coordinator is in recovery: {self.recovery_reason}")
        return self._keys

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._require_keys().root.certificate

    @property
    def root_authority(self) -> CertificateAuthority:
        return self._require_keys().root

    @property
    def mesh_ca_certificate(self) -> x509.Certificate:
        return self._require_keys().mesh.certificate

    @property
    def document(self) -> ManifestDocument | None:
        return self._document

    def manifest_info(self) -> dict[str, Any]:
        self._require_keys()
        if self._document is None or self._data is None:
            raise ManifestConflict("manifest not set")
        return {
            "manifest": self._document.raw.decode(),
            "sha256": self._document.sha256.hex(),
            "signature": base64.b64encode(self._data.manifest_signature or b"").decode(),
        }

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "state": self.state.value,
            "simulation": self.settings.simulation,
            "measurement": self.measurement.hex(),
            "started_at": self.started_at.isoformat(),
        }
        if self.state is State.RECOVERY:
            info["reason"] = self.recovery_reason
            return info
        assert self._data is not None
        info["root_fingerprint"] = fingerprint(self.root_certificate)
        info["manifest_sha256"] = self._document.sha256.hex() if self._document else None
        info["activations"] = dict(self._data.activations)
        return info

    # -- manifest ------------------------------------------------------------------------------

    def prepare_manifest(self, raw: bytes) -> PreparedManifest:
        """Validate ``raw``, generate its secrets and sign it, without changing any state.

        Safe to run in a worker thread: it only reads the root key.
        """
        keys = self._require_keys()
        if self.state is not State.AWAITING_MANIFEST or self._data is None:
            raise ManifestConflict("manifest already set")
        document = load_manifest(raw)
        secrets = {
            name: generate_secret(name, spec, keys.root, clock=self._clock)
            for name, spec in document.manifest.secrets.items()
            if not spec.per_instance
        }
        state = copy.copy(self._data)
        state.manifest = raw
        state.manifest_signature = keys.root_key.sign(
            manifest_signing_payload(document.sha256), ec.ECDSA(hashes.SHA256())
        )
        state.secrets = secrets
        state.activations = {}
        state.latest_certificates = LatestCertificates()  # no instance has a certificate yet
        values = {name: template_value(s) for name, s in secrets.items()}
        return PreparedManifest(document, state, values)

    def adopt_manifest(self, prepared: PreparedManifest) -> dict[str, str]:
        """Make a prepared (and saved) manifest the one in force."""
        keys = self._require_keys()
        if self.state is not State.AWAITING_MANIFEST:
            raise ManifestConflict("manifest already set")
        self._data = prepared.state
        keys.secrets = prepared.values
        self._document = prepared.document
        self.state = State.ACTIVE
        log.info("manifest set: sha256 %s", prepared.document.sha256.hex())
        return {
            "sha256": prepared.document.sha256.hex(),
            "signature": base64.b64encode(prepared.state.manifest_signature or b"").decode(),
        }

    def set_manifest(self, raw: bytes) -> dict[str, str]:
        """Prepare and adopt in one step, in memory only (for embedding and tests; the server
        saves the prepared state between the two)."""
        return self.adopt_manifest(self.prepare_manifest(raw))

    # -- activation ----------------------------------------------------------------------------

    def issue_nonce(self) -> tuple[bytes, datetime.datetime]:
        self._require_keys()
        return self.nonces.issue()

    def _verify_instance(
        self,
        service_name: str,
        nonce: bytes,
        csr: str,
        evidence: Evidence,
        *,
        nonce_spent: bool = False,
    ) -> tuple[ManifestDocument, CoordinatorState, ec.EllipticCurvePublicKey]:
        """The checks every identity hand-out makes: nonce, service, CSR, evidence, binding of
        the evidence to the CSR's key and the nonce, and the service's package."""
        document = self._document
        data = self._data
        if document is None or data is None:
            raise ActivationDenied("manifest not set")
        # The nonce is spent whatever happens next, so one nonce buys one attempt.
        if not nonce_spent and not self.nonces.consume(nonce):
            raise ActivationDenied("nonce expired or reused")
        manifest = document.manifest
        service = manifest.services.get(service_name)
        if service is None:
            raise ActivationDenied("unknown service", repr(service_name))
        try:
            public_key = load_csr_public_key(csr)
        except PKIError as exc:
            raise ActivationDenied("invalid csr", str(exc)) from None
        try:
            claims = self.verifier.verify(evidence)
        except EvidenceError as exc:
            raise ActivationDenied("evidence verification failed", str(exc)) from None
        expected = key_binding(public_key_der(public_key), nonce)
        if not hmac.compare_digest(claims.report_data, expected):
            raise ActivationDenied("evidence not bound to this key and nonce")
        try:
            match_claims(claims, reference_values(manifest.packages[service.package]))
        except ClaimsMismatch as exc:
            raise ActivationDenied(exc.reason, exc.detail) from None
        log.debug(
            "verified %s evidence for %s (measurement %s…)",
            claims.tee,
            service_name,
            claims.measurement.hex()[:16],
        )
        return document, data, public_key

    def activate(self, request: ActivationRequest) -> Pending[ActivationResult]:
        """Verify an instance and hand out its identity; raises ``ActivationDenied``."""
        keys = self._require_keys()
        document, data, public_key = self._verify_instance(
            request.service, request.nonce, request.csr, request.evidence
        )
        manifest = document.manifest
        service = manifest.services[request.service]
        count = data.activations.get(request.service, 0)
        if service.max_activations and count >= service.max_activations:
            raise ActivationDenied("max_activations reached", f"limit {service.max_activations}")

        instance_id = str(uuid.uuid4())
        spiffe_id = SpiffeId.for_service(manifest.trust_domain, request.service)
        leaf = keys.mesh.issue(
            LeafParams(
                public_key=public_key,
                common_name=instance_id,
                spiffe_id=spiffe_id,
                dns_names=service.dns_names,
                lifetime=self.settings.leaf_lifetime,
            ),
            clock=self._clock,
        )
        result = render_activation(
            document,
            request.service,
            instance_id=instance_id,
            spiffe_id=str(spiffe_id),
            leaf=leaf,
            root=keys.root,
            mesh=keys.mesh,
            ca_pems=(keys.root_pem, keys.mesh_pem),
            stored=data.secrets,
            values=keys.secrets,
            clock=self._clock,
        )
        data.activations[request.service] = count + 1
        forget = data.latest_certificates.record(instance_id, leaf, self._clock())
        log.info("activated %s instance %s", request.service, instance_id)

        def revert() -> None:
            forget()
            data.activations[request.service] -= 1
            if not data.activations[request.service]:
                del data.activations[request.service]

        return Pending(result, revert)

    def renew(self, request: RenewalRequest) -> Pending[x509.Certificate]:
        """A fresh leaf for a running instance: the same checks as an activation, plus its
        current certificate (valid, from the current mesh CA, for this service, and the latest
        issued to the instance) and a proof that it holds that certificate's key. Keeps the
        instance id; counts no activation; the new leaf becomes the instance's latest, so the
        presented one can never renew again."""
        keys = self._require_keys()
        if not self.nonces.consume(request.nonce):  # first: one nonce buys one attempt
            raise ActivationDenied("nonce expired or reused")
        try:
            current = load_certificate(request.certificate, "certificate")
            current.verify_directly_issued_by(keys.mesh.certificate)
        except (PKIError, ValueError, TypeError, InvalidSignature):
            raise ActivationDenied(
                "renewal refused", "certificate not from the current mesh CA"
            ) from None
        now = self._clock()
        if not current.not_valid_before_utc <= now < current.not_valid_after_utc:
            raise ActivationDenied("renewal refused", "certificate expired")
        spiffe = [u for u in uri_sans(current) if u.startswith("spiffe://")]
        service_name = SpiffeId.parse(spiffe[0]).service if len(spiffe) == 1 else None
        if service_name is None:
            raise ActivationDenied("renewal refused", "certificate has no service identity")
        document, data, public_key = self._verify_instance(
            service_name, request.nonce, request.csr, request.evidence, nonce_spent=True
        )
        old_key = current.public_key()
        try:
            if not isinstance(old_key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            old_key.verify(
                request.proof,
                renewal_payload(request.nonce, public_key_der(public_key)),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise ActivationDenied("renewal refused", "no proof of the current key") from None
        instance_id = str(current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
        # Nothing between this check and the record below yields to the event loop, so of two
        # renewals presenting the same certificate exactly one gets past it.
        latest = data.latest_certificates
        first_use = latest.check(instance_id, current)
        service = document.manifest.services[service_name]
        leaf = keys.mesh.issue(
            LeafParams(
                public_key=public_key,
                common_name=instance_id,
                spiffe_id=SpiffeId.for_service(document.manifest.trust_domain, service_name),
                dns_names=service.dns_names,
                lifetime=self.settings.leaf_lifetime,
            ),
            clock=self._clock,
        )
        # An instance pinned on first use keeps its entry as long as an untracked sibling of
        # its certificate could be valid: leaves never outlive the mesh CA.
        keep_until = keys.mesh.certificate.not_valid_after_utc if first_use else None
        revert = latest.record(instance_id, leaf, now, keep_until=keep_until)
        log.info("renewed the certificate of %s instance %s", service_name, instance_id)
        return Pending(leaf, revert)

    @property
    def ca_pems(self) -> tuple[str, str]:
        """The root and mesh CA certificates, PEM."""
        keys = self._require_keys()
        return keys.root_pem, keys.mesh_pem

    # -- deployment statement ------------------------------------------------------------------

    def statement(self, nonce: bytes) -> dict[str, Any]:
        """The signed deployment statement for a caller's nonce."""
        keys = self._require_keys()
        if self.platform is None:
            raise CoordinatorUnavailable("no quote provider: this Coordinator cannot attest")
        manifest_sha = self._document.sha256 if self._document else bytes(32)
        evidence = self.platform.quote(
            self.measurement,
            statement_binding(certificate_der(keys.root.certificate), manifest_sha, nonce),
        )
        signature = self._data.manifest_signature if self._data else None
        statement_signature = keys.root_key.sign(
            statement_signing_payload(
                nonce, manifest_sha, certificate_der(keys.mesh.certificate), self.state.value
            ),
            ec.ECDSA(hashes.SHA256()),
        )
        return {
            "version": 1,
            "state": self.state.value,
            "simulation": self.settings.simulation,
            "nonce": nonce.hex(),
            "evidence": evidence.to_json(),
            "root_certificate": keys.root_pem,
            "mesh_ca_certificate": keys.mesh_pem,
            "manifest_sha256": self._document.sha256.hex() if self._document else None,
            "manifest_signature": base64.b64encode(signature).decode() if signature else None,
            "statement_signature": base64.b64encode(statement_signature).decode(),
        }
