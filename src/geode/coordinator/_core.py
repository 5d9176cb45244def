"""The Coordinator's state machine: lifecycle (recovery included), manifest, activation and the
deployment statement; the governance operations are in ``_governance``, what both share in
``_base``.

Everything here is synchronous and runs on the server's event loop, so each operation is atomic
with respect to the others. Only ``prepare_manifest`` and ``prepare_update`` (validation and key
generation, which can be slow) run in a worker thread, and they change no state; so does
``prepare_recovery``, which only creates the recovery key. Persisting a change is the caller's
next step, and nothing is handed out before the change that produced it is on disk: a change
that cannot be saved is reverted.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import logging
import os
import uuid
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import Evidence, ReferenceValues, match_claims
from geode.coordinator._activation import (
    ActivationRequest,
    ActivationResult,
    RenewalRequest,
    render_activation,
)
from geode.coordinator._base import CoordinatorSettings, Pending, PreparedManifest, State
from geode.coordinator._cluster import CLUSTER_KEY_SIZE, JoinParty, hand_over_cluster_key
from geode.coordinator._governance import GovernanceMixin
from geode.coordinator._latest import LatestCertificates
from geode.coordinator._recovery import RecoverySession, recovery_matches
from geode.coordinator._seal import Sealer
from geode.coordinator._secrets import generate_secret, template_value
from geode.coordinator._state import CoordinatorState, UpdateRecord
from geode.errors import (
    ActivationDenied,
    ClaimsMismatch,
    CoordinatorUnavailable,
    EvidenceError,
    JoinRefused,
    ManifestConflict,
    PKIError,
    RecoveryRefused,
    SealError,
)
from geode.manifest import ManifestDocument, load_manifest
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_der,
    certificate_pem,
    fingerprint,
    load_certificate,
    load_csr_public_key,
    private_key_pem,
    public_key_der,
    uri_sans,
)
from geode.protocol import (
    ClusterKeyAnswer,
    CoordinatorStatus,
    DeploymentStatement,
    EvidenceBody,
    ManifestInfo,
    ManifestSetResult,
    RecoveryOffer,
    RecoveryParty,
    RecoveryProgress,
    RecoveryStatus,
    key_binding,
    manifest_signing_payload,
    recovery_binding,
    renewal_payload,
    statement_binding,
    statement_signing_payload,
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

NONCE_KEY_LABEL = b"geode shared nonce key v1"


def reference_values(package: Any) -> ReferenceValues:
    """A manifest package as the reference values its evidence is matched against."""
    return ReferenceValues(**package.model_dump())


class Coordinator(GovernanceMixin):
    """The control plane's core: lifecycle (including recovery), manifest, activation and the
    deployment statement; governance in ``GovernanceMixin``."""

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, blob: bytes | None, cluster_key: bytes | None = None) -> None:
        """Unseal ``blob`` (with the sealing key, else the cluster key) or, when there is none,
        create a fresh root of trust in memory.

        A fresh root is saved only together with the first manifest, so the state on disk can
        never be rolled back to "root, but no manifest yet" and handed a different manifest. A
        blob that cannot be opened puts the Coordinator in ``recovery``; it never starts empty
        over it.
        """
        if blob is None:
            self._create()
            return
        try:
            sealer, raw = Sealer.unseal(blob, self._sealing_key, cluster_key)
            self._adopt(CoordinatorState.from_bytes(raw, now=self._clock()))
            self._sealer = self._with_cluster_key(sealer)
        except SealError as exc:
            self._data = self._keys = self._sealer = None
            self._set_document(None)
            self.state = State.RECOVERY
            self.recovery_reason = str(exc)
            self._blob = blob
            try:
                self._recovery_header = Sealer.recovery_header(blob)
            except SealError:
                self._recovery_header = None
            log.error("sealed state cannot be opened; entering recovery: %s", exc)

    def reload(self, blob: bytes | None, offered_key: bytes | None = None) -> None:
        """Adopt the state another Coordinator saved to the shared store (after this one lost a
        compare-and-swap, or found it newer). Only a state that this Coordinator's sealing key
        or cluster key opens (else ``offered_key``, a peer's cluster key) is adopted; a
        ``SealError`` leaves the current state as it is."""
        if blob is None or self.state is State.RECOVERY:
            return
        try:
            sealer, raw = Sealer.unseal(blob, self._sealing_key, self.cluster_key)
        except SealError:
            if offered_key is None:
                raise
            sealer, raw = Sealer.unseal(blob, self._sealing_key, offered_key)
        data = CoordinatorState.from_bytes(raw, now=self._clock())
        self._adopt(data)
        self._sealer = self._with_cluster_key(sealer)

    def _create(self) -> None:
        root = CertificateAuthority.create_root(clock=self._clock)
        mesh = root.create_intermediate("Geode Mesh CA", clock=self._clock)
        cluster_key = os.urandom(CLUSTER_KEY_SIZE)
        self._sealer = Sealer(self._sealing_key, cluster_key=cluster_key)
        self._share_nonces(cluster_key)
        self._adopt(
            CoordinatorState(
                root_key=private_key_pem(root.key),
                root_certificate=certificate_pem(root.certificate).encode(),
                mesh_key=private_key_pem(mesh.key),
                mesh_certificate=certificate_pem(mesh.certificate).encode(),
                created_at=self._clock().isoformat(),
                cluster_key=cluster_key,
            )
        )

    def _with_cluster_key(self, sealer: Sealer) -> Sealer:
        """``sealer`` wrapping the data key under the adopted state's cluster key; a state from
        before cluster keys gets one now (saved with its next write)."""
        assert self._data is not None
        if self._data.cluster_key is None:  # a state of 32 bytes or none (``_state``)
            self._data.cluster_key = os.urandom(CLUSTER_KEY_SIZE)
        self._share_nonces(self._data.cluster_key)
        return sealer.with_cluster_key(self._data.cluster_key)

    def _share_nonces(self, cluster_key: bytes) -> None:
        if self.settings.shared_nonces:
            self.nonces.use_key(hmac.new(cluster_key, NONCE_KEY_LABEL, hashlib.sha256).digest())

    @property
    def cluster_key(self) -> bytes | None:
        """The key every Coordinator sharing this state holds (``_cluster``); ``None`` in
        recovery."""
        return None if self._data is None else self._data.cluster_key

    def sealed_state(self) -> bytes:
        """The current state, sealed, ready for the store."""
        if self._data is None or self._sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return self._sealer.seal(self._data.to_bytes())

    def seal(self, prepared: PreparedManifest) -> bytes:
        sealer = prepared.sealer or self._sealer
        if sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return sealer.seal(prepared.state.to_bytes())

    def manifest_info(self) -> ManifestInfo:
        self._require_keys()
        if self._document is None or self._data is None:
            raise ManifestConflict("manifest not set")
        return ManifestInfo(
            manifest=self._document.raw.decode(),
            sha256=self._document.sha256.hex(),
            signature=base64.b64encode(self._data.manifest_signature or b"").decode(),
        )

    def status(self) -> CoordinatorStatus:
        common = CoordinatorStatus(
            state=self.state.value,
            simulation=self.settings.simulation,
            measurement=self.measurement.hex(),
            started_at=self.started_at.isoformat(),
        )
        if self.state is State.RECOVERY:
            header = self._recovery_header
            recovery = None
            if header is not None:
                recovery = RecoveryStatus(
                    threshold=header.threshold,
                    parties=sorted(header.parties),
                    received=self._recovery.received if self._recovery else [],
                )
            return common.model_copy(update={"reason": self.recovery_reason, "recovery": recovery})
        assert self._data is not None
        return common.model_copy(
            update={
                "root_fingerprint": fingerprint(self.root_certificate),
                "manifest_sha256": self._document.sha256.hex() if self._document else None,
                "activations": dict(self._data.activations),
            }
        )

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
        now = self._clock()
        state.updates = [UpdateRecord(1, "set", document.sha256.hex(), now.isoformat())]
        self._record(state, "manifest.set", None, {"sha256": document.sha256.hex()})
        values = {name: template_value(s) for name, s in secrets.items()}
        assert self._sealer is not None  # a state with keys has a sealer
        sealer = self._sealer_for(self._sealer, document.manifest.recovery)
        return PreparedManifest(document, state, values, sealer)

    def adopt_manifest(self, prepared: PreparedManifest) -> ManifestSetResult:
        """Make a prepared (and saved) manifest the one in force."""
        keys = self._require_keys()
        if self.state is not State.AWAITING_MANIFEST:
            raise ManifestConflict("manifest already set")
        previous = self._sealer
        self._data = prepared.state
        keys.secrets = prepared.values
        self._set_document(prepared.document)
        self._sealer = prepared.sealer or self._sealer
        self.state = State.ACTIVE
        log.info("manifest set: sha256 %s", prepared.document.sha256.hex())
        return ManifestSetResult(
            sha256=prepared.document.sha256.hex(),
            signature=base64.b64encode(prepared.state.manifest_signature or b"").decode(),
            recovery_shares=prepared.recovery_shares(previous),
        )

    def set_manifest(self, raw: bytes) -> ManifestSetResult:
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
        if evidence.kind == "nvidia":  # binds a requester nonce, not this key: see the manifest
            raise ActivationDenied(
                "evidence verification failed", "GPU evidence attests no service"
            )
        try:
            claims = self.verifier.verify(evidence)
        except EvidenceError as exc:
            raise ActivationDenied("evidence verification failed", str(exc)) from None
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            # A verifier that lets a parsing error through still refuses, without a 500.
            log.warning("evidence verification raised %s: refused", type(exc).__name__)
            raise ActivationDenied("evidence verification failed", "malformed evidence") from None
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

    def activate(
        self, request: ActivationRequest, *, nonce_spent: bool = False
    ) -> Pending[ActivationResult]:
        """Verify an instance and hand out its identity; raises ``ActivationDenied``.
        ``nonce_spent``: the same request again, after its first attempt was undone (a lost
        compare-and-swap on a shared store); its nonce was consumed by that attempt."""
        keys = self._require_keys()
        document, data, public_key = self._verify_instance(
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

    def renew(
        self, request: RenewalRequest, *, nonce_spent: bool = False
    ) -> Pending[x509.Certificate]:
        """A fresh leaf for a running instance: the same checks as an activation, plus its
        current certificate (valid, from the current mesh CA, for this service, and the latest
        issued to the instance) and a proof that it holds that certificate's key. Keeps the
        instance id; counts no activation; the new leaf becomes the instance's latest, so the
        presented one can never renew again. ``nonce_spent`` as for ``activate``."""
        keys = self._require_keys()
        # First: one nonce buys one attempt.
        if not nonce_spent and not self.nonces.consume(request.nonce):
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

    def statement(self, nonce: bytes) -> DeploymentStatement:
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
        return DeploymentStatement(
            version=1,
            state=self.state.value,
            simulation=self.settings.simulation,
            nonce=nonce.hex(),
            evidence=EvidenceBody.of(evidence),
            root_certificate=keys.root_pem,
            mesh_ca_certificate=keys.mesh_pem,
            manifest_sha256=self._document.sha256.hex() if self._document else None,
            manifest_signature=base64.b64encode(signature).decode() if signature else None,
            statement_signature=base64.b64encode(statement_signature).decode(),
        )

    # -- cluster key ---------------------------------------------------------------------------

    def join_party(self) -> JoinParty:
        """This Coordinator as either end of a cluster-key handover (``_cluster``)."""
        if self.platform is None:
            raise CoordinatorUnavailable("no quote provider: this Coordinator cannot attest")
        tee = "simulated" if self.settings.simulation else "unknown"
        return JoinParty(self.platform, self.measurement, self.verifier, tee)

    def hand_over_cluster_key(
        self, nonce: bytes, newcomer_key_der: bytes, evidence: Evidence
    ) -> ClusterKeyAnswer:
        """The cluster key, sealed to a peer Coordinator that attested to running this same
        Coordinator package (``_cluster``); ``JoinRefused`` otherwise."""
        self._require_keys()
        if not self.nonces.consume(nonce):
            raise JoinRefused("nonce expired or reused")
        cluster_key = self.cluster_key
        assert cluster_key is not None  # an opened state has one
        answer = hand_over_cluster_key(
            self.join_party(), cluster_key, nonce, newcomer_key_der, evidence
        )
        log.warning("cluster key handed over to a peer Coordinator with the same measurement")
        return answer

    # -- recovery ------------------------------------------------------------------------------

    def _require_recovery(self) -> RecoverySession:
        if self.state is not State.RECOVERY or self._blob is None:
            raise RecoveryRefused("the Coordinator is not in recovery", status=409)
        if self._recovery_header is None:
            raise RecoveryRefused(
                "this state names no recovery keys: only its sealing key opens it", status=409
            )
        if self._recovery is None:
            self._recovery = RecoverySession(self._recovery_header)
        return self._recovery

    def prepare_recovery(self) -> None:
        """Create the recovery session (an RSA key: slow, so callers run it in a thread)."""
        self._require_recovery()

    def recovery_offer(self, nonce: bytes) -> RecoveryOffer:
        """What a party needs to recover: its encrypted share, and this Coordinator's key for
        shares with evidence binding it to the party's nonce."""
        session = self._require_recovery()
        if self.platform is None:
            raise CoordinatorUnavailable("no quote provider: this Coordinator cannot attest")
        evidence = self.platform.quote(self.measurement, recovery_binding(session.key_der, nonce))
        return RecoveryOffer(
            threshold=session.header.threshold,
            parties={
                name: RecoveryParty(
                    share=base64.b64encode(p.share).decode(), public_key=p.public_key
                )
                for name, p in sorted(session.header.parties.items())
            },
            received=session.received,
            recovery_key=session.public_key_pem(),
            nonce=nonce.hex(),
            simulation=self.settings.simulation,
            evidence=EvidenceBody.of(evidence),
        )

    def recover(
        self, party: str, sealed_share: bytes, signature: bytes
    ) -> Pending[RecoveryProgress]:
        """Accept one party's share; at the threshold, open the state with the recovered data
        key and adopt it (to be saved, under this Coordinator's sealing key, by the caller)."""
        session = self._require_recovery()
        reason = self.recovery_reason
        session.accept(party, sealed_share, signature)
        log.warning(
            "recovery share of %s accepted (%d of %d)",
            party,
            len(session.received),
            session.header.threshold,
        )
        progress = RecoveryProgress(
            state=self.state.value, threshold=session.header.threshold, received=session.received
        )
        if not session.complete:
            return Pending(progress, lambda: None)
        assert self._blob is not None

        def revert() -> None:
            self._data = self._keys = self._sealer = None
            self._set_document(None)
            self.state = State.RECOVERY
            self.recovery_reason = reason

        try:
            sealer, raw = Sealer.unseal_with_data_key(
                self._blob, session.data_key(), self._sealing_key
            )
            data = CoordinatorState.from_bytes(raw, now=self._clock())
            self._adopt(data)
            self._sealer = self._with_cluster_key(sealer)
            # The parties came from the blob's header, which only the state itself vouches
            # for: a state whoever holds its data key built (naming its own party) must not
            # be adopted. Its manifest, now opened and authenticated, must name these parties.
            document = self._document
            if document is None or not recovery_matches(session.header, document.manifest.recovery):
                raise SealError("its recovery parties are not the ones its manifest names")
        except SealError as exc:
            revert()
            raise RecoveryRefused(f"the shares do not open this state: {exc}", status=409) from None
        self._record(data, "coordinator.recovered", party, {"parties": session.received})
        log.warning("recovered with the shares of %s", ", ".join(session.received))
        recovered = progress.model_copy(
            update={
                "state": self.state.value,
                "root_fingerprint": fingerprint(self.root_certificate),
            }
        )
        return Pending(recovered, revert)

    def recovery_saved(self) -> None:
        """The recovered state is on disk: drop the unopened blob and the shares received."""
        self._blob = None
        self._recovery_header = None
        self._recovery = None
