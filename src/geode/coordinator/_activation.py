"""The activation core: the checks every identity hand-out makes, and the hand-outs themselves
(an activation's certificate and configuration, a renewal's fresh certificate).

This is the hot path: each call works on the state in force as it is (no copies) and returns a
``Pending`` that the transaction saves before its value leaves (``_transaction``).
"""

from __future__ import annotations

import datetime
import hmac
import logging
import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import Evidence, EvidenceVerifier, Verdict, match_claims
from geode.coordinator._handout import (
    ActivationRequest,
    ActivationResult,
    RenewalRequest,
    render_activation,
)
from geode.coordinator._holder import CoordinatorSettings, Pending, StateHolder
from geode.coordinator._nonces import NonceStore
from geode.coordinator._state import CoordinatorState
from geode.errors import ActivationDenied, ClaimsMismatch, EvidenceError, PKIError
from geode.manifest import ManifestDocument
from geode.pki import (
    Clock,
    LeafParams,
    SpiffeId,
    load_certificate,
    load_csr_public_key,
    public_key_der,
    uri_sans,
)
from geode.protocol import key_binding, renewal_payload

__all__ = ["Activation"]

log = logging.getLogger("geode.coordinator")


class Activation:
    """Nonces, activation and renewal: what an instance gets once its evidence is checked."""

    def __init__(
        self,
        held: StateHolder,
        settings: CoordinatorSettings,
        verifier: EvidenceVerifier,
        nonces: NonceStore,
        clock: Clock,
    ) -> None:
        self._held = held
        self._settings = settings
        self._verifier = verifier
        self._nonces = nonces
        self._clock = clock

    def issue_nonce(self) -> tuple[bytes, datetime.datetime]:
        self._held.require_keys()
        return self._nonces.issue()

    def _verify_instance(
        self,
        service_name: str,
        nonce: bytes,
        csr: str,
        evidence: Evidence,
        *,
        nonce_spent: bool = False,
    ) -> tuple[ManifestDocument, CoordinatorState, ec.EllipticCurvePublicKey, Verdict]:
        """The checks every identity hand-out makes: nonce, service, CSR, evidence, binding of
        the evidence to the CSR's key and the nonce, and the service's package; with the
        verdict of the match (what the hand-out rests on, logged with it)."""
        document = self._held.document
        data = self._held.data
        if document is None or data is None:
            raise ActivationDenied("manifest not set")
        # The nonce is spent whatever happens next, so one nonce buys one attempt.
        if not nonce_spent and not self._nonces.consume(nonce):
            raise ActivationDenied("nonce expired or reused")
        manifest = document.manifest
        service = manifest.services.get(service_name)
        if service is None:
            raise ActivationDenied("unknown service", repr(service_name))
        try:
            public_key = load_csr_public_key(csr)
        except PKIError as exc:
            raise ActivationDenied("invalid csr", str(exc)) from None
        if evidence.kind == "nvidia":  # binds a requester nonce, not this key: see the manifest
            raise ActivationDenied(
                "evidence verification failed", "GPU evidence attests no service"
            )
        try:
            # Whatever the evidence holds, the verifier answers claims or an EvidenceError.
            claims = self._verifier.verify(evidence)
        except EvidenceError as exc:
            raise ActivationDenied("evidence verification failed", str(exc)) from None
        expected = key_binding(public_key_der(public_key), nonce)
        if not hmac.compare_digest(claims.report_data, expected):
            raise ActivationDenied("evidence not bound to this key and nonce")
        try:
            verdict = match_claims(claims, manifest.packages[service.package])
        except ClaimsMismatch as exc:
            raise ActivationDenied(exc.reason, exc.detail) from None
        log.debug(
            "verified %s evidence for %s (measurement %s…)",
            claims.tee,
            service_name,
            claims.measurement.hex()[:16],
        )
        return document, data, public_key, verdict

    def activate(
        self, request: ActivationRequest, *, nonce_spent: bool = False
    ) -> Pending[ActivationResult]:
        """Verify an instance and hand out its identity; raises ``ActivationDenied``.
        ``nonce_spent``: the same request again, after its first attempt was undone (a lost
        compare-and-swap on a shared store); its nonce was consumed by that attempt."""
        keys = self._held.require_keys()
        document, data, public_key, verdict = self._verify_instance(
            request.service, request.nonce, request.csr, request.evidence, nonce_spent=nonce_spent
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
                lifetime=self._settings.leaf_lifetime,
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
        log.info("activated %s instance %s (%s)", request.service, instance_id, verdict.summary())

        def revert() -> None:
            forget()
            data.activations[request.service] -= 1
            if not data.activations[request.service]:
                del data.activations[request.service]

        return Pending(result, revert)

    def renew(
        self, request: RenewalRequest, *, nonce_spent: bool = False
    ) -> Pending[x509.Certificate]:
        """A fresh leaf for a running instance: the same checks as an activation, plus its
        current certificate (valid, from the current mesh CA, for this service, and the latest
        issued to the instance) and a proof that it holds that certificate's key. Keeps the
        instance id; counts no activation; the new leaf becomes the instance's latest, so the
        presented one can never renew again. ``nonce_spent`` as for ``activate``."""
        keys = self._held.require_keys()
        # First: one nonce buys one attempt.
        if not nonce_spent and not self._nonces.consume(request.nonce):
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
        document, data, public_key, verdict = self._verify_instance(
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
                lifetime=self._settings.leaf_lifetime,
            ),
            clock=self._clock,
        )
        # An instance pinned on first use keeps its entry as long as an untracked sibling of
        # its certificate could be valid: leaves never outlive the mesh CA.
        keep_until = keys.mesh.certificate.not_valid_after_utc if first_use else None
        revert = latest.record(instance_id, leaf, now, keep_until=keep_until)
        log.info(
            "renewed the certificate of %s instance %s (%s)",
            service_name,
            instance_id,
            verdict.summary(),
        )
        return Pending(leaf, revert)
