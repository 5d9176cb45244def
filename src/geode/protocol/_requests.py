"""What clients send the Coordinator: one model per JSON request body, with its limits.

Request models are strict and refuse unknown fields: a body the Coordinator does not fully
understand is refused (400 ``invalid_request`` naming the field), never half-read.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from geode.attestation import Evidence

__all__ = [
    "MAX_JSON_BODY",
    "NONCE_QUERY_PATTERN",
    "ActivateBody",
    "ClusterKeyBody",
    "EvidenceBody",
    "HexDigest",
    "RecoveryUpload",
    "RenewBody",
    "RequestBody",
    "SecretBody",
    "UpdateRef",
]

MAX_JSON_BODY = 64 * 1024
# A caller's nonce in a query (attestation, recovery): 16 to 64 bytes in lowercase hex.
NONCE_QUERY_PATTERN = r"^(?:[0-9a-f]{2}){16,64}$"
_MAX_PEM = 16 * 1024

HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
HexNonce = HexDigest  # the mesh API's nonces are 32 bytes


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EvidenceBody(RequestBody):
    """Evidence on the wire: its kind and its bytes in base64 (``Evidence.to_json``)."""

    kind: Annotated[str, Field(max_length=16)]
    data: Annotated[str, Field(max_length=MAX_JSON_BODY)]

    @classmethod
    def of(cls, evidence: Evidence) -> EvidenceBody:
        return cls.model_validate(evidence.to_json())

    def evidence(self) -> Evidence:
        """The evidence itself; ``EvidenceError`` naming the field when it is malformed."""
        return Evidence.from_json(self.model_dump())


class ActivateBody(RequestBody):
    service: Annotated[str, Field(min_length=1, max_length=64)]
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=_MAX_PEM)]
    evidence: EvidenceBody


class RenewBody(RequestBody):
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=_MAX_PEM)]
    evidence: EvidenceBody
    certificate: Annotated[str, Field(min_length=1, max_length=_MAX_PEM)]
    proof: Annotated[str, Field(min_length=1, max_length=512)]


class ClusterKeyBody(RequestBody):
    nonce: HexNonce
    public_key: Annotated[str, Field(min_length=1, max_length=512)]
    evidence: EvidenceBody


class SecretBody(RequestBody):
    value: Annotated[str, Field(max_length=MAX_JSON_BODY)]  # base64


class UpdateRef(RequestBody):
    sha256: HexDigest


class RecoveryUpload(RequestBody):
    party: Annotated[str, Field(min_length=1, max_length=64)]
    share: Annotated[str, Field(min_length=1, max_length=4096)]
    signature: Annotated[str, Field(min_length=1, max_length=4096)]
