"""The Coordinator: its parts, composed around one ``StateHolder``, and what is its own: the
lifecycle (create, load, reload), the manifest set, the status and the deployment statement.

The parts are used directly: ``activation`` (nonces, activate, renew), ``governance`` (users
and grants, secrets, updates, the manifest log, the audit head), ``recovery`` (offer, shares,
recover) and ``cluster_keys`` (the cluster-key handover). Everything is synchronous and runs on
the server's event loop, so each operation is atomic with respect to the others; only the
preparations (``prepare_manifest``, ``Governance.prepare_update``, ``Recovery.prepare``) run in
a worker thread, and they change no state. Saving a change before it is answered, or undoing
it, is the transaction's (``_transaction``).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import EvidenceVerifier
from geode.coordinator._activation import Activation
from geode.coordinator._audit import AuditSink, MemoryAuditLog
from geode.coordinator._cluster import ClusterKeys, coordinator_peer_verifier
from geode.coordinator._governance import Governance
from geode.coordinator._holder import (
    CoordinatorSettings,
    Pending,
    PreparedManifest,
    State,
    StateHolder,
)
from geode.coordinator._latest import LatestCertificates
from geode.coordinator._nonces import NonceStore
from geode.coordinator._recovery import Recovery, require_recovery, sealer_for
from geode.coordinator._seal import Sealer
from geode.coordinator._secrets import generate_secret, template_value
from geode.coordinator._state import CLUSTER_KEY_SIZE, CoordinatorState, UpdateRecord
from geode.coordinator._tee import CoordinatorTee
from geode.coordinator._validation import ManifestWorker
from geode.errors import ManifestConflict, SealError
from geode.manifest import ManifestDocument, load_manifest
from geode.pki import (
    CertificateAuthority,
    Clock,
    certificate_der,
    certificate_pem,
    fingerprint,
    private_key_pem,
    utc_now,
)
from geode.protocol import (
    CoordinatorStatus,
    DeploymentStatement,
    EvidenceBody,
    ManifestInfo,
    ManifestSetResult,
    manifest_signing_payload,
    statement_binding,
    statement_signing_payload,
)

__all__ = ["Coordinator"]

log = logging.getLogger("geode.coordinator")

NONCE_KEY_LABEL = b"geode shared nonce key v1"


class Coordinator:
    """The control plane's core, composed of parts around the state they share (``held``)."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        verifier: EvidenceVerifier,
        tee: CoordinatorTee,
        sealing_key: bytes,
        *,
        clock: Clock = utc_now,
        audit: AuditSink | None = None,
        peer_verifier: EvidenceVerifier | None = None,
    ) -> None:
        """``verifier`` checks services' evidence; ``peer_verifier`` checks the evidence of
        another Coordinator asking for (or handing over) the cluster key. They are separate on
        purpose: a key trusted for services (``--trust-platform-key``) can sign evidence of any
        measurement, the Coordinator's included, so it must never earn the cluster key. Without
        ``peer_verifier``, peers are trusted on this Coordinator's own platform only
        (``coordinator_peer_verifier``). ``tee`` is what it attests with (``_tee``: simulated,
        or the host's TEE) and says who it is."""
        self.settings = settings
        self.verifier = verifier
        self.tee = tee
        self._clock = clock
        self.nonces = NonceStore(settings.nonce_ttl, clock)
        self.audit_sink: AuditSink = audit or MemoryAuditLog()
        self.held = StateHolder(
            sealing_key, clock, self._share_nonces if settings.shared_nonces else None
        )
        self.activation = Activation(self.held, settings, verifier, self.nonces, clock)
        self.governance = Governance(self.held, clock, settings)
        self.recovery = Recovery(self.held, tee)
        if peer_verifier is None:
            peer_verifier = coordinator_peer_verifier(tee)
        self.cluster_keys = ClusterKeys(self.held, self.nonces, settings, peer_verifier, tee)
        self.started_at = clock()
        # Manifests and updates sent to it are validated in a worker first (``_validation``).
        self.manifest_worker = ManifestWorker(settings.manifest_budget)

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
        held = self.held
        try:
            sealer, raw = Sealer.unseal(blob, held.sealing_key, cluster_key)
            held.open(sealer, CoordinatorState.from_bytes(raw, now=self._clock()))
        except SealError as exc:
            held.enter_recovery(str(exc))
            self.recovery.enter(blob)
            log.error("sealed state cannot be opened; entering recovery: %s", exc)

    def reload(self, blob: bytes | None, offered_key: bytes | None = None) -> None:
        """Adopt the state another Coordinator saved to the shared store (after this one lost a
        compare-and-swap, or found it newer). Only a state that this Coordinator's sealing key
        or cluster key opens (else ``offered_key``, a peer's cluster key) is adopted; a
        ``SealError`` leaves the current state as it is."""
        held = self.held
        if blob is None or held.state is State.RECOVERY:
            return
        try:
            sealer, raw = Sealer.unseal(blob, held.sealing_key, held.cluster_key)
        except SealError:
            if offered_key is None:
                raise
            sealer, raw = Sealer.unseal(blob, held.sealing_key, offered_key)
        held.open(sealer, CoordinatorState.from_bytes(raw, now=self._clock()))

    def _create(self) -> None:
        root = CertificateAuthority.create_root(clock=self._clock)
        mesh = root.create_intermediate("Geode Mesh CA", clock=self._clock)
        cluster_key = os.urandom(CLUSTER_KEY_SIZE)
        held = self.held
        held.sealer = Sealer(held.sealing_key, cluster_key=cluster_key)
        held.cluster_key_known(cluster_key)
        held.adopt(
            CoordinatorState(
                root_key=private_key_pem(root.key),
                root_certificate=certificate_pem(root.certificate).encode(),
                mesh_key=private_key_pem(mesh.key),
                mesh_certificate=certificate_pem(mesh.certificate).encode(),
                created_at=self._clock().isoformat(),
                cluster_key=cluster_key,
            )
        )

    def _share_nonces(self, cluster_key: bytes) -> None:
        self.nonces.use_key(hmac.new(cluster_key, NONCE_KEY_LABEL, hashlib.sha256).digest())

    def sealed_state(self) -> bytes:
        """The current state, sealed, ready for the store."""
        return self.held.sealed_state()

    def record_start(self) -> Pending[None]:
        """The audit entry of a start: written at once when there is a saved state (active),
        else carried by the first manifest's write."""
        held = self.held
        data = held.data
        if data is None:
            return Pending(None, needs_write=False)
        before = data.audit
        held.record(
            data,
            "coordinator.start",
            None,
            {
                "state": held.state.value,
                "tee": self.tee.tee,
                "interface": self.tee.interface,
                "measurement": self.tee.measurement,
            },
        )

        def revert() -> None:
            data.audit = before

        return Pending(None, revert, needs_write=held.state is State.ACTIVE)

    # -- what is in force --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.held.state

    @property
    def recovery_reason(self) -> str:
        return self.held.recovery_reason

    @property
    def document(self) -> ManifestDocument | None:
        return self.held.document

    @property
    def cluster_key(self) -> bytes | None:
        """The key every Coordinator sharing this state holds (``_cluster``); ``None`` in
        recovery."""
        return self.held.cluster_key

    @property
    def root_certificate(self) -> x509.Certificate:
        return self.held.root_certificate

    @property
    def root_authority(self) -> CertificateAuthority:
        return self.held.require_keys().root

    @property
    def mesh_ca_certificate(self) -> x509.Certificate:
        return self.held.require_keys().mesh.certificate

    @property
    def ca_pems(self) -> tuple[str, str]:
        """The root and mesh CA certificates, PEM."""
        return self.held.ca_pems

    def manifest_info(self) -> ManifestInfo:
        _, data, document = self.held.require_manifest()
        return ManifestInfo(
            manifest=document.raw.decode(),
            sha256=document.sha256.hex(),
            signature=base64.b64encode(data.manifest_signature or b"").decode(),
        )

    def status(self) -> CoordinatorStatus:
        held = self.held
        common = CoordinatorStatus(
            state=held.state.value,
            simulation=self.tee.simulated,
            measurement=self.tee.measurement,
            started_at=self.started_at.isoformat(),
            tee=self.tee.tee,
            tee_interface=self.tee.interface,
            sealing=self.tee.sealing,
        )
        if held.state is State.RECOVERY:
            return common.model_copy(
                update={"reason": held.recovery_reason, "recovery": self.recovery.progress()}
            )
        assert held.data is not None
        return common.model_copy(
            update={
                "root_fingerprint": fingerprint(held.root_certificate),
                "manifest_sha256": held.document.sha256.hex() if held.document else None,
                "activations": dict(held.data.activations),
            }
        )

    # -- manifest ------------------------------------------------------------------------------

    def prepare_manifest(self, raw: bytes) -> PreparedManifest:
        """Validate ``raw``, generate its secrets and sign it, without changing any state.

        Safe to run in a worker thread: it only reads the root key.
        """
        held = self.held
        keys = held.require_keys()
        if held.state is not State.AWAITING_MANIFEST or held.data is None:
            raise ManifestConflict("manifest already set")
        document = load_manifest(raw)
        require_recovery(self.settings, document.manifest.recovery)
        secrets = {
            name: generate_secret(name, spec, keys.root, clock=self._clock)
            for name, spec in document.manifest.secrets.items()
            if not spec.per_instance
        }
        state = copy.copy(held.data)
        state.manifest = raw
        state.manifest_signature = keys.root_key.sign(
            manifest_signing_payload(document.sha256), ec.ECDSA(hashes.SHA256())
        )
        state.secrets = secrets
        state.activations = {}
        state.latest_certificates = LatestCertificates()  # no instance has a certificate yet
        now = self._clock()
        state.updates = [UpdateRecord(1, "set", document.sha256.hex(), now.isoformat())]
        held.record(state, "manifest.set", None, {"sha256": document.sha256.hex()})
        values = {name: template_value(s) for name, s in secrets.items()}
        assert held.sealer is not None  # a state with keys has a sealer
        sealer = sealer_for(held.sealer, document.manifest.recovery)
        return PreparedManifest(document, state, values, sealer)

    def adopt_manifest(self, prepared: PreparedManifest) -> ManifestSetResult:
        """Make a prepared (and saved) manifest the one in force."""
        held = self.held
        keys = held.require_keys()
        if held.state is not State.AWAITING_MANIFEST:
            raise ManifestConflict("manifest already set")
        previous = held.sealer
        held.data = prepared.state
        keys.secrets = prepared.values
        held.set_document(prepared.document)
        held.sealer = prepared.sealer or held.sealer
        held.state = State.ACTIVE
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

    # -- deployment statement ------------------------------------------------------------------

    def statement(self, nonce: bytes) -> DeploymentStatement:
        """The signed deployment statement for a caller's nonce."""
        held = self.held
        keys = held.require_keys()
        document = held.document
        manifest_sha = document.sha256 if document else bytes(32)
        evidence = self.tee.evidence(
            statement_binding(certificate_der(keys.root.certificate), manifest_sha, nonce)
        )
        signature = held.data.manifest_signature if held.data else None
        statement_signature = keys.root_key.sign(
            statement_signing_payload(
                nonce, manifest_sha, certificate_der(keys.mesh.certificate), held.state.value
            ),
            ec.ECDSA(hashes.SHA256()),
        )
        return DeploymentStatement(
            version=1,
            state=held.state.value,
            simulation=self.tee.simulated,
            tee=self.tee.tee,
            nonce=nonce.hex(),
            evidence=EvidenceBody.of(evidence),
            root_certificate=keys.root_pem,
            mesh_ca_certificate=keys.mesh_pem,
            manifest_sha256=document.sha256.hex() if document else None,
            manifest_signature=base64.b64encode(signature).decode() if signature else None,
            statement_signature=base64.b64encode(statement_signature).decode(),
        )
