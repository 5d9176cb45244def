"""The error codes of the Coordinator's APIs: one table from code to status and exception.

The server answers every refusal with an ``ErrorBody`` (``error_answer``); a client turns one
back into the exception it stands for (``raise_for_error``). A code belongs to exactly one
row, so the OpenAPI document's enum, the server and the clients cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geode.errors import (
    ActivationDenied,
    ClientError,
    CoordinatorError,
    CoordinatorUnavailable,
    GeodeError,
    JoinRefused,
    ManifestConflict,
    ManifestError,
    ManifestTooCostly,
    PermissionDenied,
    RecoveryRefused,
    SecretRejected,
    StaleCertificate,
    StoreConflict,
    Unauthenticated,
    UpdateChangesNothing,
    UpdateConflict,
)

__all__ = [
    "ERROR_CODES",
    "ErrorBody",
    "ErrorCode",
    "error_answer",
    "raise_for_error",
]


@dataclass(frozen=True)
class ErrorCode:
    """One row: the code, its usual HTTP status, and the exception that carries it (``None``:
    the HTTP layer's own refusals, which a client sees as a ``ClientError``)."""

    code: str
    status: int
    exception: type[GeodeError] | None
    meaning: str


_ROWS = (
    # The request itself (the HTTP layer).
    ErrorCode("invalid_request", 400, None, "a field, parameter or header is invalid"),
    ErrorCode("invalid_json", 400, None, "the body is not JSON"),
    ErrorCode("payload_too_large", 413, None, "the body is larger than the route accepts"),
    ErrorCode("request_timeout", 408, None, "the body did not arrive in time"),
    ErrorCode("unsupported_media_type", 415, None, "the body is not application/json"),
    ErrorCode("not_found", 404, None, "no such route"),
    ErrorCode("method_not_allowed", 405, None, "the route does not take this method"),
    ErrorCode("http_error", 400, None, "another refusal of the HTTP layer"),
    ErrorCode("internal", 500, None, "a bug: the Coordinator logged it"),
    ErrorCode("state_unavailable", 503, None, "the Coordinator could not save its state"),
    ErrorCode("secret_not_set", 404, None, "the secret has no value yet"),
    # What the Coordinator refuses (``geode.errors``).
    ErrorCode("manifest_invalid", 400, ManifestError, "the manifest (or update) is invalid"),
    ErrorCode(
        "manifest_too_costly",
        422,
        ManifestTooCostly,
        "validating the manifest (or update) exceeded its time or memory budget",
    ),
    ErrorCode("coordinator_error", 400, CoordinatorError, "another refusal"),
    ErrorCode("activation_denied", 403, ActivationDenied, "an instance may not activate"),
    ErrorCode("stale_certificate", 403, StaleCertificate, "a renewal with a replaced certificate"),
    ErrorCode("manifest_conflict", 409, ManifestConflict, "the manifest is (not yet) set"),
    ErrorCode("authentication_required", 401, Unauthenticated, "no client certificate"),
    ErrorCode("unknown_user", 401, Unauthenticated, "a client certificate that is no user's"),
    ErrorCode("permission_denied", 403, PermissionDenied, "the user's roles do not allow it"),
    ErrorCode("update_conflict", 409, UpdateConflict, "no such pending update, or one pends"),
    ErrorCode(
        "update_changes_nothing", 409, UpdateChangesNothing, "the update restates what is in force"
    ),
    ErrorCode("secret_invalid", 400, SecretRejected, "a value that does not fit the secret"),
    ErrorCode("recovery_refused", 400, RecoveryRefused, "a recovery share is not accepted"),
    ErrorCode("coordinator_unavailable", 503, CoordinatorUnavailable, "in recovery"),
    ErrorCode("join_refused", 403, JoinRefused, "a peer's evidence does not earn the cluster key"),
    ErrorCode("store_conflict", 409, StoreConflict, "another Coordinator saved first; try again"),
)
ERROR_CODES: Mapping[str, ErrorCode] = {row.code: row for row in _ROWS}


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": code, "message": ...}``, plus ``path`` for a field (manifest
    errors, invalid requests) and ``reason``/``detail`` for denied activations."""

    model_config = ConfigDict(frozen=True)

    error: Annotated[str, Field(json_schema_extra={"enum": sorted(ERROR_CODES)})]
    message: str
    path: str | None = Field(default=None, exclude_if=lambda v: v is None)
    reason: str | None = Field(default=None, exclude_if=lambda v: v is None)
    detail: str | None = Field(default=None, exclude_if=lambda v: v is None)


def error_answer(exc: GeodeError) -> tuple[int, ErrorBody]:
    """The status and body that answer ``exc`` (a ``CoordinatorError`` or ``ManifestError``)."""
    if isinstance(exc, ManifestTooCostly):
        return 422, ErrorBody(error="manifest_too_costly", message=str(exc), path=exc.path)
    if isinstance(exc, ManifestError):
        return 400, ErrorBody(error="manifest_invalid", message=str(exc), path=exc.path)
    if isinstance(exc, ActivationDenied):
        body = ErrorBody(error=exc.code, message=str(exc), reason=exc.reason, detail=exc.detail)
        return exc.status, body
    if isinstance(exc, CoordinatorError):
        return exc.status, ErrorBody(error=exc.code, message=str(exc))
    raise TypeError(f"no error code for {type(exc).__name__}")


def raise_for_error(status: int, body: Any, fallback: str) -> None:
    """Raise what a refusal (``status`` >= 400, the parsed JSON ``body``) stands for: a denied
    activation or renewal as ``ActivationDenied``/``StaleCertificate`` (what an instance acts
    on), everything else as ``ClientError`` with the status and code. ``fallback`` is the
    message when the body is no ``ErrorBody``."""
    try:
        # What matters is the code: a refusal without a message still stands for its code.
        error = ErrorBody.model_validate(
            {"message": "", **body} if isinstance(body, dict) else body
        )
    except ValidationError:
        raise ClientError(fallback, status=status) from None
    row = ERROR_CODES.get(error.error)
    exception = row.exception if row is not None else None
    if exception is StaleCertificate:
        raise StaleCertificate(error.detail or error.message)
    if exception is ActivationDenied:
        raise ActivationDenied(error.reason or "", error.detail or "")
    raise ClientError(error.message, status=status, code=error.error)
