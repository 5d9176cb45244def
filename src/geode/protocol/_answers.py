"""What the Coordinator answers: one model per JSON answer.

The models are the wire format: the field names, their order and which fields may be absent are
what clients have always read. A field declared ``absent()`` is left out of the JSON when it
has no value (``recovery_shares`` when the manifest brought none), unlike a field that is
``null`` on the wire (``manifest_sha256`` before a manifest is set). Answers ignore fields they
do not know, so a newer Coordinator may add some.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from geode.errors import StatementError
from geode.manifest import MeshConfig
from geode.protocol._requests import EvidenceBody

__all__ = [
    "AcknowledgeAnswer",
    "ActivationAnswer",
    "Answer",
    "AuditLogAnswer",
    "AuditLogHead",
    "CancelAnswer",
    "CertificatesAnswer",
    "ClusterKeyAnswer",
    "CoordinatorStatus",
    "DeploymentStatement",
    "ManifestInfo",
    "ManifestLog",
    "ManifestLogEntry",
    "ManifestSetResult",
    "NonceAnswer",
    "PendingUpdate",
    "PendingUpdateAnswer",
    "RecoveryOffer",
    "RecoveryParty",
    "RecoveryProgress",
    "RecoveryStatus",
    "RenewalAnswer",
    "SecretAnswer",
    "SecretMaterial",
    "SecretSetAnswer",
    "UpdateApplied",
    "UpdatePending",
    "first_error",
]


def _none(value: object) -> bool:
    return value is None


def absent() -> Any:
    """A field left out of the JSON when it is ``None``."""
    return Field(default=None, exclude_if=_none)


def first_error(exc: ValidationError, where: str = "") -> tuple[str, str]:
    """Where the first problem of an answer that does not fit its model is (a dotted path, else
    ``where``), and what it is: what a client names when it refuses the answer."""
    error = exc.errors(include_url=False)[0]
    return ".".join(str(p) for p in error["loc"]) or where, error["msg"]


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> dict[str, object]:
        """The JSON object sent on the wire."""
        return self.model_dump(mode="json")


# -- status, statement, certificates -------------------------------------------------------------


class RecoveryStatus(Answer):
    threshold: int
    parties: list[str]
    received: list[str]


class CoordinatorStatus(Answer):
    """``GET /status``. In ``recovery`` it names the ``reason`` (and the recovery parties when
    the state names some); otherwise the root's fingerprint, the manifest's hash (``null``
    before one is set) and the activations per service."""

    state: str
    simulation: bool
    measurement: str
    started_at: str
    # The TEE the Coordinator runs in ("simulated", "sev-snp", "tdx", "sgx"), the interface it
    # reaches it through, and how its sealing key is derived ("none" on TDX).
    tee: str = "simulated"
    tee_interface: str = "simulated platform key"
    sealing: str = "sealing key file"
    reason: str | None = absent()
    recovery: RecoveryStatus | None = absent()
    root_fingerprint: str | None = None
    manifest_sha256: str | None = None
    activations: dict[str, int] | None = None

    @model_serializer(mode="wrap")
    def _shape(self, handler: SerializerFunctionWrapHandler) -> Any:
        # The fields of the other state are not sent (not even as null).
        out: dict[str, Any] = handler(self)
        if self.state == "recovery":
            for name in ("root_fingerprint", "manifest_sha256", "activations"):
                out.pop(name, None)
        return out


class DeploymentStatement(Answer):
    """``GET /attestation``: the Coordinator's evidence bound to its root certificate, the
    manifest hash and the caller's nonce, plus the root's signatures over the manifest and over
    (nonce, manifest hash, mesh CA, state). ``geode.client.verify_statement`` checks it."""

    model_config = ConfigDict(frozen=True, strict=True)

    version: Literal[1]
    state: str
    simulation: bool
    # The TEE the evidence comes from; a verifier refuses a statement whose evidence is of
    # another kind. Absent from statements of Coordinators before it was added: "simulated".
    tee: str = "simulated"
    nonce: str
    evidence: EvidenceBody
    root_certificate: str
    mesh_ca_certificate: str
    manifest_sha256: str | None
    manifest_signature: str | None
    statement_signature: str

    @classmethod
    def from_json(cls, value: object) -> DeploymentStatement:
        """A statement as received (parsed JSON); ``StatementError`` naming the first field
        that is missing or of the wrong type."""
        if not isinstance(value, dict) or type(value.get("version")) is not int:
            raise StatementError("not a version 1 deployment statement")
        if value["version"] != 1:
            raise StatementError("not a version 1 deployment statement")
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            name, message = first_error(exc)
            raise StatementError(
                f"statement field {name!r} is missing or malformed ({message})"
            ) from None


class CertificatesAnswer(Answer):
    root: str
    mesh_ca: str
    chain: str  # mesh CA, then root


# -- manifest ------------------------------------------------------------------------------------


class ManifestInfo(Answer):
    manifest: str
    sha256: str
    signature: str  # base64, the root's over manifest_signing_payload


class ManifestSetResult(Answer):
    sha256: str
    signature: str
    recovery_shares: dict[str, str] | None = absent()  # party -> base64 encrypted share


# -- mesh API ------------------------------------------------------------------------------------


class NonceAnswer(Answer):
    nonce: str
    expires_at: str


class SecretMaterial(Answer):
    """A secret handed to an instance: base64 bytes, or a certificate (and its key, when a
    template of the service reads it) in PEM."""

    value: str
    certificate: str | None = absent()
    private_key: str | None = absent()


class ActivationAnswer(Answer):
    instance_id: str
    spiffe_id: str
    certificate_chain: list[str]  # leaf, mesh CA
    mesh_ca: str
    root_ca: str
    secrets: dict[str, SecretMaterial]
    files: dict[str, str]  # path -> base64
    env: dict[str, str]  # name -> base64
    argv: list[str]  # base64 each
    mesh: MeshConfig | None = None


class RenewalAnswer(Answer):
    certificate_chain: list[str]
    mesh_ca: str
    root_ca: str


class ClusterKeyAnswer(Answer):
    public_key: str  # base64 DER, the peer's exchange key
    sealed_key: str  # base64: nonce || AES-256-GCM of the cluster key
    evidence: EvidenceBody


# -- governance ----------------------------------------------------------------------------------


class SecretAnswer(Answer):
    name: str
    type: str
    set: bool
    value: str  # base64


class SecretSetAnswer(Answer):
    name: str
    set: bool


class UpdateApplied(Answer):
    applied: Literal[True]
    sha256: str
    signature: str
    recovery_shares: dict[str, str] | None = absent()


class UpdatePending(Answer):
    applied: Literal[False]
    sha256: str
    acknowledgements: list[str]
    threshold: int


AcknowledgeAnswer = UpdateApplied | UpdatePending


class PendingUpdate(Answer):
    sha256: str
    manifest: str
    base_sha256: str
    stale: bool
    proposer: str
    proposed_at: str
    acknowledgements: list[str]
    threshold: int
    updaters: list[str]


class PendingUpdateAnswer(Answer):
    pending: PendingUpdate | None


class CancelAnswer(Answer):
    cancelled: str


class ManifestLogEntry(Answer):
    seq: int
    kind: str  # "set", "package" or "manifest"
    sha256: str
    time: str
    users: list[str]
    packages: list[str]


class ManifestLog(Answer):
    updates: list[ManifestLogEntry]


class AuditLogHead(Answer):
    seq: int
    hash: str


class AuditLogAnswer(Answer):
    entries: list[str]  # JSON lines, oldest first
    head: AuditLogHead


# -- recovery ------------------------------------------------------------------------------------


class RecoveryParty(Answer):
    share: str  # base64, encrypted to the party's recovery key
    public_key: str  # the party's recovery key, PEM


class RecoveryOffer(Answer):
    threshold: int
    parties: dict[str, RecoveryParty]
    received: list[str]
    recovery_key: str  # PEM: shares are encrypted to it
    nonce: str
    simulation: bool
    # The TEE the evidence comes from, as in the deployment statement ("simulated" when absent:
    # Coordinators before it was added).
    tee: str = "simulated"
    evidence: EvidenceBody  # binds recovery_key to nonce


class RecoveryProgress(Answer):
    state: str
    threshold: int
    received: list[str]
    root_fingerprint: str | None = absent()  # once recovered
