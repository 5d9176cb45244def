"""What every HTTP handler of the Coordinator shares: bounded bodies, typed JSON errors, the peer's
client certificate, and the translation of Geode errors into answers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geode.errors import (
    CoordinatorError,
    ManifestError,
    PermissionDenied,
    SealError,
    Unauthenticated,
)
from geode.protocol import ERROR_CODES, MAX_JSON_BODY, Answer, ErrorBody, error_answer

__all__ = [
    "BODY_TIMEOUT",
    "ApiError",
    "Handler",
    "answer",
    "error_response",
    "handled",
    "json_body",
    "peer_certificate_der",
    "read_body",
    "slug",
]

log = logging.getLogger("geode.coordinator.api")

BODY_TIMEOUT = 10.0


class ApiError(Exception):
    """A refusal of the HTTP layer, with a code of ``geode.protocol.ERROR_CODES``."""

    def __init__(self, status: int, code: str, message: str, *, path: str | None = None) -> None:
        assert code in ERROR_CODES, code
        self.status = status
        self.body = ErrorBody(error=code, message=message, path=path)
        super().__init__(message)


def answer(model: Answer, status: int = 200) -> JSONResponse:
    """An answer of the protocol, as its JSON."""
    return JSONResponse(model.to_json(), status_code=status)


def error_response(
    status: int, body: ErrorBody, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_request", "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"request body larger than {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), request.app.state.body_timeout)
    except TimeoutError:
        raise ApiError(408, "request_timeout", "request body not received in time") from None
    return b"".join(chunks)


_Model = TypeVar("_Model", bound=BaseModel)


async def json_body(request: Request, model: type[_Model]) -> _Model:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json")
    raw = await read_body(request, MAX_JSON_BODY)
    request.state.raw_body = raw  # for a request passed on as it came (``_api``'s forward)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        path = ".".join(str(p) for p in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        raise ApiError(400, "invalid_request", f"{path}: {message}", path=path) from None


def peer_certificate_der(request: Request) -> bytes | None:
    """The client certificate the TLS handshake verified, DER (the client API asks for one)."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None


def slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


Handler = Callable[[Request], Awaitable[Response]]


def handled(handler: Handler) -> Handler:
    """Translate Geode errors raised by a handler into typed JSON answers."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.body)
        except (ManifestError, CoordinatorError) as exc:
            if isinstance(exc, Unauthenticated | PermissionDenied):
                # Every refusal of a user (or of a caller who is none) is logged.
                log.warning("client API %s %s refused: %s", request.method, request.url.path, exc)
            return error_response(*error_answer(exc))
        except SealError as exc:
            log.error("state could not be saved: %s", exc)
            body = ErrorBody(
                error="state_unavailable", message="the Coordinator could not save its state"
            )
            return error_response(503, body)

    return wrapped
