"""What every part of the Coordinator shares: its settings and states, a change pending its
write, a prepared manifest, the parsed keys, and the state with the helpers that read and change
it. ``Coordinator`` (``_core``) is built on it, with the governance operations (``_governance``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator._audit import AuditDetails, AuditSink, MemoryAuditLog, make_audit_entry
from geode.coordinator._nonces import NonceStore
from geode.coordinator._recovery import RecoverySession, recovery_matches, split_data_key
from geode.coordinator._seal import RecoveryHeader, Sealer
from geode.coordinator._secrets import template_value
from geode.coordinator._state import AuditHead, CoordinatorState
from geode.errors import CoordinatorUnavailable, GeodeError, ManifestConflict, SealError
from geode.manifest import CertificateSecret, ManifestDocument, Recovery, load_manifest
from geode.pki import (
    CertificateAuthority,
    Clock,
    certificate_der,
    certificate_pem,
    load_certificate,
    load_private_key,
    utc_now,
)

__all__ = [
    "CoordinatorBase",
    "CoordinatorSettings",
    "KeyRing",
    "Pending",
    "PreparedManifest",
    "State",
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
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    # On a shared store (etcd): nonces are authenticated with a key derived from the cluster
    # key, so that any Coordinator of the deployment takes a nonce another one issued.
    shared_nonces: bool = False


@dataclass(frozen=True)
class Pending(Generic[T]):
    """A change made in memory, with the means to undo it if it cannot be saved."""

    value: T
    revert: Callable[[], None]


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


class CoordinatorBase:
    """The Coordinator's state and the helpers every part of it uses (see ``Coordinator``)."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        verifier: EvidenceVerifier,
        platform: SimulatedPlatform | None,
        measurement: bytes,
        sealing_key: bytes,
        *,
        clock: Clock = utc_now,
        audit: AuditSink | None = None,
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
        self._keys: KeyRing | None = None
        self._document: ManifestDocument | None = None
        self._sealer: Sealer | None = None
        self._users: dict[bytes, str] = {}
        self.audit_sink: AuditSink = audit or MemoryAuditLog()
        # In recovery: the blob that could not be opened, its recovery header, and the session
        # that collects the parties' shares (created on first use: it generates a key).
        self._blob: bytes | None = None
        self._recovery_header: RecoveryHeader | None = None
        self._recovery: RecoverySession | None = None
        self.started_at = clock()

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
        self._keys = KeyRing(root, mesh, values)
        self._set_document(document)
        self.state = State.ACTIVE if document is not None else State.AWAITING_MANIFEST
        self.recovery_reason = ""

    def _set_document(self, document: ManifestDocument | None) -> None:
        self._document = document
        users: dict[bytes, str] = {}
        for name, user in (document.manifest.users if document else {}).items():
            der = certificate_der(load_certificate(user.certificate))
            users[hashlib.sha256(der).digest()] = name
        self._users = users

    # -- accessors ---------------------------------------------------------------------------

    def _require_keys(self) -> KeyRing:
        if self._keys is None:
            raise CoordinatorUnavailable(f"coordinator is in recovery: {self.recovery_reason}")
        return self._keys

    def _require_manifest(self) -> tuple[KeyRing, CoordinatorState, ManifestDocument]:
        keys = self._require_keys()
        if self._document is None or self._data is None:
            raise ManifestConflict("manifest not set")
        return keys, self._data, self._document

    def require_manifest(self) -> ManifestDocument:
        """The manifest in force; 503 in recovery, 409 before one is set."""
        return self._require_manifest()[2]

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

    @staticmethod
    def _sealer_for(sealer: Sealer, recovery: Recovery | None) -> Sealer:
        """``sealer`` when its recovery shares fit ``recovery``; else one with a fresh data key
        shared anew, so parties no longer named cannot recover what is sealed from now on."""
        if recovery_matches(sealer.recovery, recovery):
            return sealer
        fresh = sealer.rekeyed()
        if recovery is None:
            return fresh
        return fresh.with_recovery(split_data_key(fresh.data_key, recovery))

    def _record(
        self, data: CoordinatorState, event: str, user: str | None, details: AuditDetails
    ) -> None:
        """Append an audit entry to ``data`` (it reaches the log file once ``data`` is saved)."""
        keys = self._require_keys()
        entry = make_audit_entry(
            data.audit,
            event=event,
            user=user,
            details=details,
            time=self._clock(),
            root_key=keys.root_key,
        )
        data.audit = AuditHead(entry.seq, entry.hash, (*data.audit.unflushed, entry.line))

    def _recorded(self, event: str, user: str | None, details: AuditDetails) -> Callable[[], None]:
        """Record an entry on the state in force; returns what undoes it."""
        _, data, _ = self._require_manifest()
        before = data.audit
        self._record(data, event, user, details)

        def revert() -> None:
            data.audit = before

        return revert


def both(*reverts: Callable[[], None]) -> Callable[[], None]:
    """One undo for several changes, given in the order they were made (undone last first)."""

    def revert() -> None:
        for undo in reversed(reverts):
            undo()

    return revert
