"""Geode's exception tree.

Every error Geode raises on purpose derives from ``GeodeError``; its message is one line a user can
act on, built in the constructor, and it never contains secret material.

    GeodeError
    ├── ManifestError            a manifest is invalid (carries the JSON path)
    │   └── ManifestTooCostly    validating it exceeded its time or memory budget
    ├── EvidenceError            malformed or unverifiable evidence (carries field and offset)
    ├── NoTeeError               no usable TEE on this host (carries every interface probed)
    ├── ClaimsMismatch           claims do not match the expected package (carries the reason)
    ├── PKIError                 a certificate, key or CSR is unusable
    ├── SealError                sealed state cannot be read, unsealed or written
    ├── CoordinatorError         a request the Coordinator refuses
    │   ├── ActivationDenied     an instance may not activate (carries the reason)
    │   │   └── StaleCertificate     a renewal presented a certificate since replaced
    │   ├── ManifestConflict     the manifest is already set (or not yet set)
    │   ├── Unauthenticated      401: no client certificate, or one that is no user's
    │   ├── PermissionDenied     403: the user's roles do not grant the action
    │   ├── UpdateConflict       409: no such pending update, or one is already pending
    │   ├── UpdateChangesNothing 409: an update (or proposal) that would change nothing
    │   ├── SecretRejected       400: a value that does not fit the secret's type
    │   ├── RecoveryRefused      a recovery share that is not accepted
    │   ├── CoordinatorUnavailable   the Coordinator is in recovery
    │   ├── JoinRefused          403: a peer Coordinator's evidence does not earn the cluster key
    │   └── StoreConflict        409: another Coordinator changed the shared state first
    ├── StatementError           a deployment statement does not verify
    ├── ClientError              a Coordinator call failed (carries HTTP status and error code)
    ├── LaunchError              ``geode run`` cannot start the service
    ├── InjectionRefused         the admission webhook refuses a request (carries the JSON path)
    └── DatabaseError            the confidential database cannot start, initialise or open
        └── WrongDatabaseKey     the data was written with another key

This module imports nothing from Geode, so every layer may depend on it.
"""

from __future__ import annotations

__all__ = [
    "ActivationDenied",
    "ClaimsMismatch",
    "ClientError",
    "CoordinatorError",
    "CoordinatorUnavailable",
    "DatabaseError",
    "EvidenceError",
    "GeodeError",
    "InjectionRefused",
    "JoinRefused",
    "LaunchError",
    "ManifestConflict",
    "ManifestError",
    "ManifestTooCostly",
    "NoTeeError",
    "PKIError",
    "PermissionDenied",
    "RecoveryRefused",
    "SealError",
    "SecretRejected",
    "StaleCertificate",
    "StatementError",
    "StoreConflict",
    "Unauthenticated",
    "UpdateChangesNothing",
    "UpdateConflict",
    "WrongDatabaseKey",
]


class GeodeError(Exception):
    """Root of every error Geode raises on purpose."""


class ManifestError(GeodeError):
    """A manifest field is invalid. ``path`` is the dotted JSON path of the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class ManifestTooCostly(ManifestError):
    """Validating a manifest took more time or memory than its budget: whatever it says, it is
    refused without being looked at further."""

    def __init__(self, message: str) -> None:
        super().__init__("manifest", message)


class EvidenceError(GeodeError):
    """Evidence is malformed or fails verification."""

    def __init__(
        self, message: str, *, field: str | None = None, offset: int | None = None
    ) -> None:
        self.field = field
        self.offset = offset
        self.reason = message
        where = ""
        if field is not None:
            where = f"{field}" + (f" (offset {offset})" if offset is not None else "") + ": "
        super().__init__(f"{where}{message}")


class NoTeeError(GeodeError):
    """No TEE this process could use was found. ``probes`` holds, for every interface looked at,
    ``(interface, path, reason it is not usable)``; the message lists them all and says how to
    run without hardware isolation instead."""

    def __init__(self, wanted: str, probes: tuple[tuple[str, str, str], ...]) -> None:
        self.wanted = wanted
        self.probes = probes
        listed = "; ".join(f"{name} ({path}): {reason}" for name, path, reason in probes)
        super().__init__(
            f"no usable TEE ({wanted}) on this machine: {listed or 'nothing probed'}; "
            "start with --tee simulated (or --simulation) to run without hardware isolation"
        )


class ClaimsMismatch(GeodeError):
    """Verified claims do not match the reference values; ``reason`` is a short, stable phrase."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason + (f" ({detail})" if detail else ""))


class PKIError(GeodeError):
    """A certificate, key or certificate signing request is unusable."""


class SealError(GeodeError):
    """Sealed state cannot be read, unsealed or written."""


class CoordinatorError(GeodeError):
    """A request the Coordinator refuses. ``code`` is the error code sent to clients."""

    code = "coordinator_error"
    status = 400


class ActivationDenied(CoordinatorError):
    """An instance may not activate; ``reason`` is a short, stable phrase."""

    code = "activation_denied"
    status = 403

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"activation denied: {reason}" + (f" ({detail})" if detail else ""))


class StaleCertificate(ActivationDenied):
    """A renewal presented a certificate that is not the latest one issued to its instance.

    Only the latest certificate renews, so a leaked older key cannot keep an identity alive, and
    an instance cannot fork into two lines of certificates.
    """

    code = "stale_certificate"

    def __init__(self, detail: str = "") -> None:
        super().__init__("stale certificate", detail)


class ManifestConflict(CoordinatorError):
    """The manifest is already set, or an operation needs a manifest that is not set."""

    code = "manifest_conflict"
    status = 409


class Unauthenticated(CoordinatorError):
    """A client API call that needs a user came without a client certificate
    (``authentication_required``) or with one that is no user's (``unknown_user``)."""

    status = 401

    def __init__(self, message: str, *, code: str = "authentication_required") -> None:
        self.code = code
        super().__init__(message)


class PermissionDenied(CoordinatorError):
    """An authenticated user's roles do not grant the action."""

    code = "permission_denied"
    status = 403


class UpdateConflict(CoordinatorError):
    """An update operation that does not fit the pending update (none, another, or stale)."""

    code = "update_conflict"
    status = 409


class UpdateChangesNothing(CoordinatorError):
    """An update that restates what is in force: applying it would still rotate the mesh CA
    (cutting every instance off) and log an update, for no change, so it is refused."""

    code = "update_changes_nothing"
    status = 409


class SecretRejected(CoordinatorError):
    """A value a user tried to set does not fit the secret's type (never quotes the value)."""

    code = "secret_invalid"
    status = 400


class RecoveryRefused(CoordinatorError):
    """A recovery share was not accepted (unknown party, bad signature, wrong share)."""

    code = "recovery_refused"
    status = 400

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class CoordinatorUnavailable(CoordinatorError):
    """The Coordinator cannot serve the request in its current state (recovery)."""

    code = "coordinator_unavailable"
    status = 503


class JoinRefused(CoordinatorError):
    """A Coordinator asking for the cluster key was refused: its evidence does not show the
    same Coordinator package on a trusted platform, bound to its request."""

    code = "join_refused"
    status = 403


class StoreConflict(CoordinatorError):
    """A save lost a compare-and-swap: the shared store (etcd) changed since this Coordinator
    read it, so the change was not written (and was undone); the state is read again."""

    code = "store_conflict"
    status = 409


class StatementError(GeodeError):
    """A deployment statement does not verify."""


class ClientError(GeodeError):
    """A Coordinator call failed; ``status`` and ``code`` come from the server when it answered."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class LaunchError(GeodeError):
    """``geode run`` cannot start the service."""


class InjectionRefused(GeodeError):
    """The admission webhook (``geode inject``) cannot turn a pod into an instance, or cannot read
    the AdmissionReview at all. ``path`` is the dotted JSON path of the offending field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class DatabaseError(GeodeError):
    """The confidential database (``geode db``) cannot start, initialise or open."""


class WrongDatabaseKey(DatabaseError):
    """A database was written with another key; nothing was changed."""
