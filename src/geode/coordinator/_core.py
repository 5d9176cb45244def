"""The Coordinator's state machine: manifest, activation and the deployment statement.

Everything here is synchronous and runs on the server's event loop, so each operation is atomic
with respect to the others. Persisting a change is the caller's next step (``Coordinator.persist``),
and nothing is handed out before the change that produced it is on disk.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from geode.attestation import (
    Claims,
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    SimulatedPlatform,
    key_binding,
    match_claims,
    statement_binding,
    statement_signing_payload,
)
from geode.coordinator._seal import Sealer
from geode.coordinator._secrets import generate_secret, template_value
from geode.coordinator._state import CoordinatorState, StoredSecret
from geode.errors import (
    ActivationDenied,
    ClaimsMismatch,
    CoordinatorUnavailable,
    EvidenceError,
    ManifestConflict,
    ManifestError,
    PKIError,
    SealError,
)
from geode.manifest import (
    CertificateSecret,
    ManifestDocument,
    TemplateContext,
    load_manifest,
    render_template,
)
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
    utc_now,
)

__all__ = [
    "ActivationRequest",
    "ActivationResult",
    "Coordinator",
    "CoordinatorSettings",
    "NonceStore",
    "State",
]

log = logging.getLogger("geode.coordinator")

NONCE_SIZE = 32


class State(StrEnum):
    AWAITING_MANIFEST = "awaiting-manifest"
    ACTIVE = "active"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class CoordinatorSettings:
    simulation: bool = False
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    max_outstanding_nonces: int = 100_000


class NonceStore:
    """Single-use nonces that expire; the oldest are dropped beyond ``limit``."""

    def __init__(self, ttl: datetime.timedelta, limit: int, clock: Clock) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._nonces: OrderedDict[bytes, datetime.datetime] = OrderedDict()

    def issue(self) -> tuple[bytes, datetime.datetime]:
        now = self._clock()
        while self._nonces:
            oldest, expiry = next(iter(self._nonces.items()))
            if expiry > now and len(self._nonces) < self._limit:
                break
            del self._nonces[oldest]
        nonce = os.urandom(NONCE_SIZE)
        expiry = now + self._ttl
        self._nonces[nonce] = expiry
        return nonce, expiry

    def consume(self, nonce: bytes) -> bool:
        """True once for a nonce that was issued and has not expired."""
        expiry = self._nonces.pop(nonce, None)
        return expiry is not None and expiry > self._clock()


@dataclass(frozen=True)
class ActivationRequest:
    service: str
    nonce: bytes
    csr: str
    evidence: Evidence


@dataclass(frozen=True)
class ActivationResult:
    instance_id: str
    spiffe_id: str
    certificate: x509.Certificate
    mesh_ca_pem: str
    root_ca_pem: str
    secrets: dict[str, StoredSecret]
    files: dict[str, bytes]
    env: dict[str, bytes]
    argv: list[bytes]

    def to_json(self) -> dict[str, Any]:
        def b64(value: bytes) -> str:
            return base64.b64encode(value).decode()

        return {
            "instance_id": self.instance_id,
            "spiffe_id": self.spiffe_id,
            "certificate_chain": [certificate_pem(self.certificate), self.mesh_ca_pem],
            "mesh_ca": self.mesh_ca_pem,
            "root_ca": self.root_ca_pem,
            "secrets": {name: s.to_json() for name, s in self.secrets.items()},
            "files": {path: b64(v) for path, v in self.files.items()},
            "env": {key: b64(v) for key, v in self.env.items()},
            "argv": [b64(v) for v in self.argv],
        }


@dataclass
class _Keys:
    """Parsed forms of the state's keys, certificates and secrets."""

    root: CertificateAuthority
    mesh: CertificateAuthority
    secrets: dict[str, bytes | CertificateSecret] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root_pem = certificate_pem(self.root.certificate)
        self.mesh_pem = certificate_pem(self.mesh.certificate)


class Coordinator:
    """The control plane's core. Build it with ``Coordinator.open``."""

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
        self.nonces = NonceStore(settings.nonce_ttl, settings.max_outstanding_nonces, clock)
        self.state = State.RECOVERY
        self.recovery_reason = "not started"
        self._data: CoordinatorState | None = None
        self._keys: _Keys | None = None
        self._document: ManifestDocument | None = None
        self._sealer: Sealer | None = None
        self.started_at = clock()

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, blob: bytes | None) -> bool:
        """Unseal ``blob`` or, when there is none, create a fresh root of trust.

        Returns True when a new state was created and must be saved. A blob that cannot be
        unsealed puts the Coordinator in ``recovery``; it never starts empty over it.
        """
        if blob is None:
            self._create()
            return True
        try:
            self._sealer, raw = Sealer.unseal(blob, self._sealing_key)
            data = CoordinatorState.from_bytes(raw)
            self._adopt(data)
        except SealError as exc:
            self.state = State.RECOVERY
            self.recovery_reason = str(exc)
            log.error("sealed state cannot be opened; entering recovery: %s", exc)
        return False

    def _create(self) -> None:
        root = CertificateAuthority.create_root(clock=self._clock)
        mesh = root.create_intermediate("Geode Mesh CA", clock=self._clock)
        data = CoordinatorState(
            root_key=private_key_pem(root.key),
            root_certificate=certificate_pem(root.certificate).encode(),
            mesh_key=private_key_pem(mesh.key),
            mesh_certificate=certificate_pem(mesh.certificate).encode(),
            created_at=self._clock().isoformat(),
        )
        self._sealer = Sealer(self._sealing_key)
        self._adopt(data)

    def _adopt(self, data: CoordinatorState) -> None:
        root_cert = load_certificate(data.root_certificate)
        root = CertificateAuthority(load_private_key(data.root_key), root_cert)
        mesh_cert = load_certificate(data.mesh_certificate)
        mesh = CertificateAuthority(
            load_private_key(data.mesh_key),
            mesh_cert,
            (mesh_cert,),
        )
        document = None
        if data.manifest is not None:
            try:
                document = load_manifest(data.manifest)
            except ManifestError as exc:
                raise SealError(f"stored manifest no longer validates: {exc}") from None
        self._data = data
        self._keys = _Keys(root, mesh, {n: template_value(s) for n, s in data.secrets.items()})
        self._document = document
        self.state = State.ACTIVE if document is not None else State.AWAITING_MANIFEST
        self.recovery_reason = ""

    def sealed_state(self) -> bytes:
        """The current state, sealed, ready for the store."""
        if self._data is None or self._sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return self._sealer.seal(self._data.to_bytes())

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

    def set_manifest(self, raw: bytes) -> dict[str, str]:
        """Validate and adopt the manifest; generates its secrets. Once only."""
        keys = self._require_keys()
        if self.state is not State.AWAITING_MANIFEST:
            raise ManifestConflict("manifest already set")
        document = load_manifest(raw)
        assert self._data is not None
        secrets = {
            name: generate_secret(name, spec, keys.root, clock=self._clock)
            for name, spec in document.manifest.secrets.items()
            if not spec.per_instance
        }
        root_key = keys.root.key
        assert isinstance(root_key, ec.EllipticCurvePrivateKey)  # created by Geode as P-256
        signature = root_key.sign(document.sha256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        self._data.manifest = raw
        self._data.manifest_signature = signature
        self._data.secrets = secrets
        self._data.activations = {}
        keys.secrets = {name: template_value(s) for name, s in secrets.items()}
        self._document = document
        self.state = State.ACTIVE
        log.info("manifest set: sha256 %s", document.sha256.hex())
        return {
            "sha256": document.sha256.hex(),
            "signature": base64.b64encode(signature).decode(),
        }

    # -- activation ----------------------------------------------------------------------------

    def issue_nonce(self) -> tuple[bytes, datetime.datetime]:
        self._require_keys()
        return self.nonces.issue()

    def activate(self, request: ActivationRequest) -> ActivationResult:
        """Verify an instance and hand out its identity; raises ``ActivationDenied``."""
        keys = self._require_keys()
        document = self._document
        if document is None or self._data is None:
            raise ActivationDenied("manifest not set")
        # The nonce is spent whatever happens next, so one nonce buys one attempt.
        if not self.nonces.consume(request.nonce):
            raise ActivationDenied("nonce expired or reused")
        manifest = document.manifest
        service = manifest.services.get(request.service)
        if service is None:
            raise ActivationDenied("unknown service", repr(request.service))
        try:
            public_key = load_csr_public_key(request.csr)
        except PKIError as exc:
            raise ActivationDenied("invalid csr", str(exc)) from None
        try:
            claims = self.verifier.verify(request.evidence)
        except EvidenceError as exc:
            raise ActivationDenied("evidence verification failed", str(exc)) from None
        expected = key_binding(public_key_der(public_key), request.nonce)
        if not hmac.compare_digest(claims.report_data, expected):
            raise ActivationDenied("evidence not bound to this key and nonce")
        package = manifest.packages[service.package]
        try:
            match_claims(claims, ReferenceValues(**package.model_dump()))
        except ClaimsMismatch as exc:
            raise ActivationDenied(exc.reason, exc.detail) from None
        count = self._data.activations.get(request.service, 0)
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
        result = self._render(request.service, instance_id, str(spiffe_id), leaf, keys)
        self._data.activations[request.service] = count + 1
        log.info(
            "activated %s instance %s (%s)", request.service, instance_id, _claims_summary(claims)
        )
        return result

    def _render(
        self,
        service_name: str,
        instance_id: str,
        spiffe_id: str,
        leaf: x509.Certificate,
        keys: _Keys,
    ) -> ActivationResult:
        assert self._document is not None
        assert self._data is not None
        manifest = self._document.manifest
        service = manifest.services[service_name]
        used = self._document.service_secrets.get(service_name, frozenset())
        values: dict[str, bytes | CertificateSecret] = {}
        handed: dict[str, StoredSecret] = {}
        for name in sorted(used):
            spec = manifest.secrets[name]
            if spec.per_instance:
                stored = generate_secret(name, spec, keys.root, clock=self._clock)
                values[name] = template_value(stored)
            else:
                stored = self._data.secrets[name]
                values[name] = keys.secrets[name]
            handed[name] = stored
        context = TemplateContext(
            secrets=values,
            root_ca=keys.root.certificate,
            mesh_ca=keys.mesh.certificate,
            service_cert=leaf,
        )
        try:
            files = {
                path: render_template(src, context, f"services.{service_name}.files.{path}")
                for path, src in service.files.items()
            }
            env = {
                key: render_template(src, context, f"services.{service_name}.env.{key}")
                for key, src in service.env.items()
            }
            argv = [
                render_template(src, context, f"services.{service_name}.argv[{i}]")
                for i, src in enumerate(service.argv)
            ]
        except ManifestError as exc:
            raise ActivationDenied("template rendering failed", str(exc)) from None
        for key, value in [*env.items(), *((str(i), v) for i, v in enumerate(argv))]:
            if b"\0" in value:
                raise ActivationDenied("template rendering failed", f"{key} contains a NUL byte")
        return ActivationResult(
            instance_id=instance_id,
            spiffe_id=spiffe_id,
            certificate=leaf,
            mesh_ca_pem=keys.mesh_pem,
            root_ca_pem=keys.root_pem,
            secrets=handed,
            files=files,
            env=env,
            argv=argv,
        )

    # -- deployment statement ------------------------------------------------------------------

    def statement(self, nonce: bytes) -> dict[str, Any]:
        """The signed deployment statement for a caller's nonce."""
        keys = self._require_keys()
        if self.platform is None:
            raise CoordinatorUnavailable("no quote provider: this Coordinator cannot attest")
        root_der = certificate_der(keys.root.certificate)
        manifest_sha = self._document.sha256 if self._document else bytes(32)
        evidence = self.platform.quote(
            self.measurement, statement_binding(root_der, manifest_sha, nonce)
        )
        signature = self._data.manifest_signature if self._data else None
        root_key = keys.root.key
        assert isinstance(root_key, ec.EllipticCurvePrivateKey)
        statement_signature = root_key.sign(
            statement_signing_payload(nonce, manifest_sha, certificate_der(keys.mesh.certificate)),
            ec.ECDSA(hashes.SHA256()),
        )
        return {
            "version": 1,
            "state": self.state.value,
            "simulation": self.settings.simulation,
            "nonce": nonce.hex(),
            "evidence": evidence.to_json(),
            "root_certificate": certificate_pem(keys.root.certificate),
            "mesh_ca_certificate": certificate_pem(keys.mesh.certificate),
            "manifest_sha256": self._document.sha256.hex() if self._document else None,
            "manifest_signature": base64.b64encode(signature).decode() if signature else None,
            "statement_signature": base64.b64encode(statement_signature).decode(),
        }


def _claims_summary(claims: Claims) -> str:
    return f"tee={claims.tee} measurement={claims.measurement.hex()[:16]}… debug={claims.debug}"
