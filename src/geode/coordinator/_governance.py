"""Governance: who may do what (users and roles), user-set secrets, package and manifest
updates with acknowledgements, the manifest log and the head of the audit log.

Each change is made in memory and returned as a ``Pending`` with the means to undo it; the
transaction (``_transaction``) saves it before anything is answered, and undoes it when the
write fails.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from geode.coordinator._holder import (
    CoordinatorSettings,
    KeyRing,
    Pending,
    PreparedManifest,
    StateHolder,
    both,
)
from geode.coordinator._recovery import require_recovery, sealer_for
from geode.coordinator._secrets import secret_from_user, template_value
from geode.coordinator._state import CoordinatorState, PendingUpdate, StoredSecret, UpdateRecord
from geode.coordinator._updates import carry_secrets
from geode.errors import PermissionDenied, UpdateChangesNothing, UpdateConflict
from geode.manifest import ManifestDocument, SecretSpec, load_manifest
from geode.pki import Clock, certificate_pem, fingerprint, private_key_pem
from geode.protocol import (
    AuditLogHead,
    ManifestLogEntry,
    UpdateApplied,
    manifest_signing_payload,
)
from geode.protocol import (
    PendingUpdate as PendingUpdateInfo,
)

__all__ = ["Governance"]

log = logging.getLogger("geode.coordinator")


def _refuse_unchanged(current: ManifestDocument, new: ManifestDocument) -> None:
    """``UpdateChangesNothing`` when ``new`` means what ``current`` means.

    Equal means equal as parsed (every field, defaults filled in): bytes that differ only in
    layout (whitespace, comments, key order, quoting, YAML or JSON) change nothing the
    Coordinator enforces, and applying them would still rotate the mesh CA, cutting every
    running instance off, and log an update of nothing.
    """
    if new.manifest != current.manifest:
        return
    if new.raw == current.raw:
        how = "it is the manifest in force"
    else:
        how = (
            "it differs from the manifest in force only in layout (whitespace, comments, key "
            "order or format)"
        )
    raise UpdateChangesNothing(f"the update changes nothing: {how} (sha256 {current.sha256.hex()})")


class Governance:
    """The governance operations, on the state ``held`` has in force."""

    def __init__(
        self, held: StateHolder, clock: Clock, settings: CoordinatorSettings | None = None
    ) -> None:
        self._held = held
        self._clock = clock
        self._settings = settings or CoordinatorSettings()

    # -- users, audit ------------------------------------------------------------------------

    def require_manifest(self) -> ManifestDocument:
        """The manifest in force; 503 in recovery, 409 before one is set."""
        return self._held.require_manifest()[2]

    def user_for(self, certificate_der: bytes) -> str | None:
        """The manifest user whose certificate this is (exactly), if any."""
        return self._held.user_for(certificate_der)

    def user_certificates(self) -> list[str]:
        """The users' certificates (PEM) of the manifest in force."""
        document = self._held.document
        return [u.certificate for u in document.manifest.users.values()] if document else []

    def require_grant(self, user: str, resource: str, action: str, name: str = "") -> None:
        """Raise ``PermissionDenied`` unless ``user``'s roles grant the action."""
        document = self.require_manifest()
        if not document.manifest.grants(user, resource, action, name):
            what = resource if resource == "manifest" else f"{resource[:-1]} {name!r}"
            raise PermissionDenied(f"user {user!r} may not {action} {what}")

    def audit_head(self) -> AuditLogHead:
        _, data, _ = self._held.require_manifest()
        return AuditLogHead(seq=data.audit.seq, hash=data.audit.hash.hex())

    # -- secrets -------------------------------------------------------------------------------

    def read_secret(self, name: str) -> tuple[SecretSpec, StoredSecret]:
        """A shared or user-defined secret, for a user whose role grants reading it."""
        _, data, document = self._held.require_manifest()
        spec = document.manifest.secrets.get(name)
        if spec is None or not (spec.shared or spec.is_user_defined):
            raise PermissionDenied(f"secret {name!r} is never handed to users")
        return spec, data.secrets.get(name, StoredSecret())

    def write_secret(self, user: str, name: str, value: bytes) -> Pending[None]:
        """Set a user-defined secret; services get it on their next activation."""
        keys, data, document = self._held.require_manifest()
        spec = document.manifest.secrets.get(name)
        if spec is None or not spec.is_user_defined:
            raise PermissionDenied(f"secret {name!r} is not user-defined")
        stored = secret_from_user(name, spec, value)
        before = data.secrets.get(name), keys.secrets.get(name)
        data.secrets[name] = stored
        keys.secrets[name] = template_value(stored)
        forget = self._held.recorded("secret.write", user, {"secret": name})
        log.info("user %s set secret %s", user, name)

        def revert() -> None:
            forget()
            for mapping, old in ((data.secrets, before[0]), (keys.secrets, before[1])):
                if old is None:
                    mapping.pop(name, None)
                else:
                    mapping[name] = old  # type: ignore[assignment]

        return Pending(None, revert)

    # -- updates -------------------------------------------------------------------------------

    def prepare_update(self, raw: bytes) -> PreparedManifest:
        """Validate ``raw`` as the next manifest (``UpdateChangesNothing`` when it means what the
        manifest in force means): carry or generate its secrets, create the next mesh CA, sign.
        Changes no state (safe in a worker thread; it only reads)."""
        keys, data, document = self._held.require_manifest()
        assert self._held.sealer is not None  # a state with keys has a sealer
        new = load_manifest(raw)
        _refuse_unchanged(document, new)
        secrets = carry_secrets(
            document.manifest, data.secrets, new.manifest, keys.root, clock=self._clock
        )
        mesh = keys.root.create_intermediate("Geode Mesh CA", clock=self._clock)
        state = CoordinatorState(
            root_key=data.root_key,
            root_certificate=data.root_certificate,
            mesh_key=private_key_pem(mesh.key),
            mesh_certificate=certificate_pem(mesh.certificate).encode(),
            created_at=data.created_at,
            manifest=raw,
            manifest_signature=keys.root_key.sign(
                manifest_signing_payload(new.sha256), ec.ECDSA(hashes.SHA256())
            ),
            secrets=secrets,
        )
        values = {name: template_value(s) for name, s in secrets.items()}
        require_recovery(self._settings, new.manifest.recovery)
        sealer = sealer_for(self._held.sealer, new.manifest.recovery)
        return PreparedManifest(new, state, values, sealer, mesh, document.sha256)

    def adopt_update(
        self,
        prepared: PreparedManifest,
        *,
        kind: str,
        users: Sequence[str],
        packages: Sequence[str] = (),
    ) -> Pending[UpdateApplied]:
        """Put a prepared update in force: new manifest, new mesh CA (every instance activated
        before can no longer reach those activated after). Activation counts are the history
        of each service, not of a manifest: a service the update keeps keeps its count (so no
        update, least of all one of another package, restores a spent ``max_activations``);
        only a service it removes loses its count."""
        keys, data, document = self._held.require_manifest()
        if prepared.mesh is None or prepared.base != document.sha256:
            raise UpdateConflict("the manifest changed while this update was prepared")
        state = prepared.state
        now = self._clock()
        sha = prepared.document.sha256.hex()
        state.updates = [
            *data.updates,
            UpdateRecord(
                len(data.updates) + 1, kind, sha, now.isoformat(), tuple(users), tuple(packages)
            ),
        ]
        # A package update leaves a pending manifest update pending (it can no longer be
        # acknowledged, since its base changed, only cancelled).
        state.pending_update = data.pending_update if kind == "package" else None
        # Read now, not when prepared: activations went on while the update was prepared.
        services = prepared.document.manifest.services
        state.activations = {s: n for s, n in data.activations.items() if s in services}
        state.audit = data.audit
        details: dict[str, str | int | list[str]] = {
            "sha256": sha,
            "previous": document.sha256.hex(),
            "mesh_ca": fingerprint(prepared.mesh.certificate),
        }
        if kind == "package":
            details["packages"] = list(packages)
            self._held.record(state, "package.update", users[0], details)
        else:
            details["acknowledgements"] = list(users)
            self._held.record(state, "manifest.update.applied", None, details)
        held = self._held
        before = held.snapshot()
        held.data = state
        held.keys = KeyRing(keys.root, prepared.mesh, prepared.values)
        held.set_document(prepared.document)
        previous_sealer, held.sealer = held.sealer, prepared.sealer or held.sealer
        log.info("manifest updated (%s): sha256 %s, mesh CA rotated", kind, sha)

        def revert() -> None:
            held.restore(before)

        result = UpdateApplied(
            applied=True,
            sha256=sha,
            signature=base64.b64encode(state.manifest_signature or b"").decode(),
            recovery_shares=prepared.recovery_shares(previous_sealer),
        )
        return Pending(result, revert)

    def pending_update(self) -> PendingUpdateInfo | None:
        _, data, document = self._held.require_manifest()
        pending = data.pending_update
        if pending is None:
            return None
        return PendingUpdateInfo(
            sha256=pending.sha256.hex(),
            manifest=pending.manifest.decode(),
            base_sha256=pending.base_sha256.hex(),
            stale=pending.base_sha256 != document.sha256,
            proposer=pending.proposer,
            proposed_at=pending.proposed_at,
            acknowledgements=list(pending.acknowledgements),
            threshold=document.manifest.update_threshold,
            updaters=list(document.manifest.manifest_updaters),
        )

    def _set_pending(self, pending: PendingUpdate | None) -> Callable[[], None]:
        _, data, _ = self._held.require_manifest()
        before = data.pending_update
        data.pending_update = pending

        def revert() -> None:
            data.pending_update = before

        return revert

    def _pending_named(self, sha256: bytes) -> PendingUpdate:
        _, data, _ = self._held.require_manifest()
        pending = data.pending_update
        if pending is None:
            raise UpdateConflict("no manifest update is pending")
        if pending.sha256 != sha256:
            raise UpdateConflict(
                f"the pending manifest update is {pending.sha256.hex()}, not {sha256.hex()}"
            )
        return pending

    def manifest_threshold(self) -> int:
        """Acknowledgements a manifest update needs under the manifest in force."""
        _, _, document = self._held.require_manifest()
        return document.manifest.update_threshold

    def acknowledgements_after(self, user: str) -> int:
        """How many acknowledgements the pending update has once ``user``'s is counted."""
        _, data, _ = self._held.require_manifest()
        pending = data.pending_update
        if pending is None:
            return 0
        return len({*pending.acknowledgements, user})

    def propose_update(self, user: str, proposed: ManifestDocument) -> Pending[None]:
        """A manifest update, acknowledged by its proposer; applied once enough users agree.
        One that changes nothing, or that drops the recovery section a Coordinator without a
        lasting sealing key needs, is refused now, not when the last acknowledgement comes."""
        _, data, document = self._held.require_manifest()
        _refuse_unchanged(document, proposed)
        require_recovery(self._settings, proposed.manifest.recovery)
        if data.pending_update is not None:
            raise UpdateConflict(
                f"manifest update {data.pending_update.sha256.hex()} is pending: "
                "acknowledge or cancel it first"
            )
        pending = PendingUpdate(
            manifest=proposed.raw,
            base_sha256=document.sha256,
            proposer=user,
            proposed_at=self._clock().isoformat(),
            acknowledgements=(user,),
        )
        undo = self._set_pending(pending)
        forget = self._held.recorded(
            "manifest.update.proposed",
            user,
            {"sha256": proposed.sha256.hex(), "threshold": document.manifest.update_threshold},
        )
        log.info("user %s proposed manifest update %s", user, proposed.sha256.hex())
        return Pending(None, both(undo, forget))

    def acknowledge_update(self, user: str, sha256: bytes) -> Pending[None]:
        _, _, document = self._held.require_manifest()
        pending = self._pending_named(sha256)
        if pending.base_sha256 != document.sha256:
            raise UpdateConflict(
                "the manifest changed since this update was proposed: cancel it and propose "
                "it again"
            )
        if user in pending.acknowledgements:
            return Pending(None)
        undo = self._set_pending(
            replace(pending, acknowledgements=(*pending.acknowledgements, user))
        )
        forget = self._held.recorded(
            "manifest.update.acknowledged",
            user,
            {"sha256": sha256.hex(), "acknowledgements": len(pending.acknowledgements) + 1},
        )
        log.info("user %s acknowledged manifest update %s", user, sha256.hex())
        return Pending(None, both(undo, forget))

    def cancel_update(self, user: str, sha256: bytes) -> Pending[None]:
        self._pending_named(sha256)
        undo = self._set_pending(None)
        forget = self._held.recorded("manifest.update.cancelled", user, {"sha256": sha256.hex()})
        log.info("user %s cancelled manifest update %s", user, sha256.hex())
        return Pending(None, both(undo, forget))

    def pending_manifest(self) -> bytes:
        _, data, _ = self._held.require_manifest()
        if data.pending_update is None:
            raise UpdateConflict("no manifest update is pending")
        return data.pending_update.manifest

    def manifest_log(self) -> list[ManifestLogEntry]:
        _, data, _ = self._held.require_manifest()
        return [ManifestLogEntry.model_validate(u.to_json()) for u in data.updates]
