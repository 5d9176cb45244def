"""What every part of the Coordinator is built on: its settings and lifecycle states, a change
pending its write, a prepared manifest, the parsed keys, and ``StateHolder``, the one owner of
the state in memory, with the helpers the parts use to read it, change it and audit the change.

The parts (``Activation``, ``Governance``, ``Recovery``, ``ClusterKeys``) each receive the holder
and only what else they need; ``Coordinator`` (``_coordinator``) composes them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geode.coordinator._audit import AuditDetails, make_audit_entry
from geode.coordinator._seal import Sealer
from geode.coordinator._secrets import template_value
from geode.coordinator._state import CLUSTER_KEY_SIZE, AuditHead, CoordinatorState
from geode.coordinator._validation import DEFAULT_MANIFEST_BUDGET, ManifestBudget
from geode.errors import CoordinatorUnavailable, GeodeError, ManifestConflict, SealError
from geode.manifest import CertificateSecret, ManifestDocument, load_manifest
from geode.pki import (
    CertificateAuthority,
    Clock,
    certificate_der,
    certificate_pem,
    load_certificate,
    load_private_key,
)

__all__ = [
    "CoordinatorSettings",
    "KeyRing",
    "Pending",
    "PreparedManifest",
    "Snapshot",
    "State",
    "StateHolder",
    "both",
]

T = TypeVar("T")


class State(StrEnum):
    AWAITING_MANIFEST = "awaiting-manifest"
    ACTIVE = "active"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class CoordinatorSettings:
    simulation: bool = False
    # False when the sealing key does not survive this process (a TEE without one: TDX, SNP
    # without /dev/sev-guest): after a restart only a peer or the recovery parties open the
    # state, so a manifest (or update) without a recovery section is refused.
    durable_sealing: bool = True
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    # On a shared store (etcd): nonces are authenticated with a key derived from the cluster
    # key, so that any Coordinator of the deployment takes a nonce another one issued.
    shared_nonces: bool = False
    # What validating a manifest or update someone sent may cost (``_validation``).
    manifest_budget: ManifestBudget = DEFAULT_MANIFEST_BUDGET


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Pending(Generic[T]):
    """A change made in memory, with the means to undo it if it cannot be saved.

    Only the transaction (``_transaction``) hands ``value`` out, once the change is on disk:
    ``saved`` runs then. ``needs_write`` is false for a change that is not written now (nothing
    that can be saved changed, or the next write carries it); its value may leave at once.
    """

    value: T
    revert: Callable[[], None] = _nothing
    saved: Callable[[], None] = _nothing
    needs_write: bool = True


@dataclass(frozen=True)
class PreparedManifest:
    """A validated manifest with its generated secrets and signature, not yet adopted.

    For an update, also the manifest it replaces (``base``) and the new mesh CA; ``sealer`` is
    the new state's sealer (a fresh data key, shared anew, when the recovery section changed).
    """

    document: ManifestDocument
    state: CoordinatorState
    values: dict[str, bytes | CertificateSecret]
    sealer: Sealer | None = None
    mesh: CertificateAuthority | None = None
    base: bytes | None = None

    def recovery_shares(self, previous: Sealer | None) -> dict[str, str] | None:
        """Each party's encrypted share, when this manifest comes with new ones."""
        if self.sealer is None or self.sealer is previous or self.sealer.recovery is None:
            return None
        return {
            name: base64.b64encode(party.share).decode()
            for name, party in sorted(self.sealer.recovery.parties.items())
        }


@dataclass
class KeyRing:
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


@dataclass(frozen=True)
class Snapshot:
    """What is in force, as ``StateHolder.snapshot`` took it: ``restore`` puts it back."""

    data: CoordinatorState | None
    keys: KeyRing | None
    document: ManifestDocument | None
    sealer: Sealer | None
    state: State
    recovery_reason: str


class StateHolder:
    """The state in memory and everything derived from it: the plaintext state (``data``), its
    parsed keys, the manifest document with its users, the sealer it is written with, and the
    lifecycle state. Every part reads and changes the state through one holder, so what is in
    force is always one consistent set.

    Everything here runs on the server's event loop (or before it starts): a part's change and
    the write that follows it are not interleaved with another change (``GroupCommit``).
    """

    def __init__(
        self,
        sealing_key: bytes,
        clock: Clock,
        on_cluster_key: Callable[[bytes], None] | None = None,
    ) -> None:
        self.sealing_key = sealing_key
        self.clock = clock
        # Told the cluster key of every state adopted (the shared nonce key derives from it).
        self._on_cluster_key = on_cluster_key
        self.state = State.RECOVERY
        self.recovery_reason = "not started"
        self.data: CoordinatorState | None = None
        self.keys: KeyRing | None = None
        self.document: ManifestDocument | None = None
        self.sealer: Sealer | None = None
        self._users: dict[bytes, str] = {}

    # -- adopting a state --------------------------------------------------------------------

    def adopt(self, data: CoordinatorState) -> None:
        """Put ``data`` in force; ``SealError`` (and nothing changed) when it is inconsistent."""
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
        self.data = data
        self.keys = KeyRing(root, mesh, values)
        self.set_document(document)
        self.state = State.ACTIVE if document is not None else State.AWAITING_MANIFEST
        self.recovery_reason = ""

    def open(self, sealer: Sealer, data: CoordinatorState) -> None:
        """Adopt an unsealed state, sealed from now on by ``sealer`` wrapping the data key
        under the state's cluster key too; a state from before cluster keys gets one now
        (saved with its next write)."""
        self.adopt(data)
        if data.cluster_key is None:  # a state of 32 bytes or none (``_state``)
            data.cluster_key = os.urandom(CLUSTER_KEY_SIZE)
        self.sealer = sealer.with_cluster_key(data.cluster_key)
        self.cluster_key_known(data.cluster_key)

    def cluster_key_known(self, cluster_key: bytes) -> None:
        if self._on_cluster_key is not None:
            self._on_cluster_key(cluster_key)

    def set_document(self, document: ManifestDocument | None) -> None:
        self.document = document
        users: dict[bytes, str] = {}
        for name, user in (document.manifest.users if document else {}).items():
            der = certificate_der(load_certificate(user.certificate))
            users[hashlib.sha256(der).digest()] = name
        self._users = users

    def enter_recovery(self, reason: str) -> None:
        """Hold no state: it cannot be opened (``reason``)."""
        self.data = self.keys = self.sealer = None
        self.set_document(None)
        self.state = State.RECOVERY
        self.recovery_reason = reason

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.data, self.keys, self.document, self.sealer, self.state, self.recovery_reason
        )

    def restore(self, snapshot: Snapshot) -> None:
        self.data, self.keys, self.sealer = snapshot.data, snapshot.keys, snapshot.sealer
        self.set_document(snapshot.document)
        self.state, self.recovery_reason = snapshot.state, snapshot.recovery_reason

    # -- reading -----------------------------------------------------------------------------

    def require_keys(self) -> KeyRing:
        if self.keys is None:
            raise CoordinatorUnavailable(f"coordinator is in recovery: {self.recovery_reason}")
        return self.keys

    def require_manifest(self) -> tuple[KeyRing, CoordinatorState, ManifestDocument]:
        """The keys, state and manifest in force; 503 in recovery, 409 before a manifest."""
        keys = self.require_keys()
        if self.document is None or self.data is None:
            raise ManifestConflict("manifest not set")
        return keys, self.data, self.document

    def user_for(self, certificate_der: bytes) -> str | None:
        """The manifest user whose certificate this is (exactly), if any."""
        return self._users.get(hashlib.sha256(certificate_der).digest())

    @property
    def cluster_key(self) -> bytes | None:
        """The key every Coordinator sharing this state holds (``_cluster``); ``None`` in
        recovery."""
        return None if self.data is None else self.data.cluster_key

    @property
    def root_certificate(self) -> x509.Certificate:
        return self.require_keys().root.certificate

    @property
    def ca_pems(self) -> tuple[str, str]:
        """The root and mesh CA certificates, PEM."""
        keys = self.require_keys()
        return keys.root_pem, keys.mesh_pem

    # -- sealing -----------------------------------------------------------------------------

    def sealed_state(self) -> bytes:
        """The current state, sealed, ready for the store."""
        if self.data is None or self.sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return self.sealer.seal(self.data.to_bytes())

    def seal(self, prepared: PreparedManifest) -> bytes:
        """A prepared state, sealed as it will be once adopted."""
        sealer = prepared.sealer or self.sealer
        if sealer is None:
            raise CoordinatorUnavailable("no state to save")
        return sealer.seal(prepared.state.to_bytes())

    # -- audit -------------------------------------------------------------------------------

    def record(
        self, data: CoordinatorState, event: str, user: str | None, details: AuditDetails
    ) -> None:
        """Append an audit entry to ``data`` (it reaches the log file once ``data`` is saved)."""
        keys = self.require_keys()
        entry = make_audit_entry(
            data.audit,
            event=event,
            user=user,
            details=details,
            time=self.clock(),
            root_key=keys.root_key,
        )
        data.audit = AuditHead(entry.seq, entry.hash, (*data.audit.unflushed, entry.line))

    def recorded(self, event: str, user: str | None, details: AuditDetails) -> Callable[[], None]:
        """Record an entry on the state in force; returns what undoes it."""
        _, data, _ = self.require_manifest()
        before = data.audit
        self.record(data, event, user, details)

        def revert() -> None:
            data.audit = before

        return revert

    def unflushed_audit(self) -> tuple[str, ...]:
        """The saved entries the log file may not hold yet."""
        return self.data.audit.unflushed if self.data else ()

    def audit_flushed(self, lines: Sequence[str]) -> None:
        """``lines`` are in the log file: the state no longer needs to carry them."""
        data = self.data
        if data is not None and data.audit.unflushed[: len(lines)] == tuple(lines):
            data.audit = replace(data.audit, unflushed=data.audit.unflushed[len(lines) :])


def both(*reverts: Callable[[], None]) -> Callable[[], None]:
    """One undo for several changes, given in the order they were made (undone last first)."""

    def revert() -> None:
        for undo in reversed(reverts):
            undo()

    return revert
