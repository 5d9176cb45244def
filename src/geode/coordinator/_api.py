"""The Coordinator's HTTP APIs: the client API (operators, relying parties) and the mesh API.

Every error is a JSON object ``{"error": code, "message": ...}`` (plus ``path`` for manifest
errors and ``reason`` for denials) with a 4xx status for bad requests; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geode.attestation import Evidence
from geode.coordinator._activation import ActivationRequest, RenewalRequest
from geode.coordinator._core import Coordinator
from geode.coordinator._persist import GroupCommit
from geode.errors import (
    ActivationDenied,
    CoordinatorError,
    EvidenceError,
    ManifestError,
    SealError,
)
from geode.manifest import MAX_MANIFEST_BYTES
from geode.pki import certificate_pem

__all__ = ["API_PREFIX", "MESH_PREFIX", "build_apps", "openapi_document"]

log = logging.getLogger("geode.coordinator.api")

API_PREFIX = "/api/v1"
MESH_PREFIX = "/api/v1/mesh"
MAX_JSON_BODY = 64 * 1024
BODY_TIMEOUT = 10.0

HexNonce = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EvidenceBody(_Body):
    kind: Annotated[str, Field(max_length=16)]
    data: Annotated[str, Field(max_length=MAX_JSON_BODY)]


class ActivateBody(_Body):
    service: Annotated[str, Field(min_length=1, max_length=64)]
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    evidence: EvidenceBody


class RenewBody(_Body):
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    evidence: EvidenceBody
    certificate: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    proof: Annotated[str, Field(min_length=1, max_length=512)]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        super().__init__(message)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
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


async def _json_body(request: Request, model: type[_Model]) -> _Model:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json")
    raw = await _read_body(request, MAX_JSON_BODY)
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


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.activations = Counter(
            "geode_activations",
            "Activation attempts by service and outcome",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.activation_seconds = Histogram(
            "geode_activation_seconds",
            "Time to answer an activation, persistence included",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.renewals = Counter(
            "geode_renewals", "Certificate renewals by outcome", ["outcome"], registry=self.registry
        )
        self.manifest_sets = Counter(
            "geode_manifest_sets", "Manifests accepted", registry=self.registry
        )


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


Handler = Callable[[Request], Awaitable[Response]]


def _handled(handler: Handler) -> Handler:
    """Translate Geode errors raised by a handler into typed JSON answers."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message, **exc.extra)
        except ManifestError as exc:
            return _error(400, "manifest_invalid", str(exc), path=exc.path)
        except ActivationDenied as exc:
            return _error(exc.status, exc.code, str(exc), reason=exc.reason, detail=exc.detail)
        except CoordinatorError as exc:
            return _error(exc.status, exc.code, str(exc))
        except SealError as exc:
            log.error("state could not be saved: %s", exc)
            return _error(503, "state_unavailable", "the Coordinator could not save its state")

    return wrapped


def build_apps(
    coordinator: Coordinator, persist: GroupCommit, *, body_timeout: float = BODY_TIMEOUT
) -> tuple[Starlette, Starlette]:
    """The client API app and the mesh API app, sharing one Coordinator.

    A request body must arrive within ``body_timeout`` seconds, so a slow or stalled client
    holds nothing for long.
    """
    metrics = _Metrics()

    async def get_status(request: Request) -> Response:
        return JSONResponse(coordinator.status())

    async def get_manifest(request: Request) -> Response:
        return JSONResponse(coordinator.manifest_info())

    manifest_lock = asyncio.Lock()

    async def post_manifest(request: Request) -> Response:
        raw = await _read_body(request, MAX_MANIFEST_BYTES)
        if not raw.strip():
            raise ApiError(400, "manifest_invalid", "manifest: empty body", path="manifest")
        async with manifest_lock:
            # Validation and key generation can take a while: off the event loop. The new state
            # is on disk before it is adopted, so a failed write changes nothing.
            prepared = await asyncio.to_thread(coordinator.prepare_manifest, raw)
            await persist.write(coordinator.seal(prepared))
            result = coordinator.adopt_manifest(prepared)
        metrics.manifest_sets.inc()
        return JSONResponse(result, status_code=201)

    async def get_attestation(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce", "")
        if not re.fullmatch(r"(?:[0-9a-f]{2}){16,64}", nonce_hex):
            raise ApiError(
                400, "invalid_request", "nonce: 16 to 64 bytes in lowercase hex", path="nonce"
            )
        return JSONResponse(coordinator.statement(bytes.fromhex(nonce_hex)))

    async def get_certificates(request: Request) -> Response:
        root = certificate_pem(coordinator.root_certificate)
        mesh = certificate_pem(coordinator.mesh_ca_certificate)
        return JSONResponse({"root": root, "mesh_ca": mesh, "chain": mesh + root})

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def get_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def post_nonce(request: Request) -> Response:
        nonce, expiry = coordinator.issue_nonce()
        return JSONResponse({"nonce": nonce.hex(), "expires_at": expiry.isoformat()})

    async def post_activate(request: Request) -> Response:
        started = time.perf_counter()
        body = await _json_body(request, ActivateBody)
        document = coordinator.document
        known = document is not None and body.service in document.manifest.services
        label = body.service if known else "<unknown>"
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = Evidence.from_json(body.evidence.model_dump())
            except EvidenceError as exc:
                coordinator.nonces.consume(nonce)  # one nonce buys one attempt
                raise ActivationDenied("invalid evidence", str(exc)) from None
            pending = coordinator.activate(
                ActivationRequest(body.service, nonce, body.csr, evidence)
            )
            try:
                await persist.commit()
            except Exception:
                # The write failed: nothing of this activation is on disk. (A cancelled
                # request keeps its count: its write may still land, and over-counting is
                # the safe side of max_activations.)
                pending.revert()
                raise
            result = pending.value
        except ActivationDenied as exc:
            metrics.activations.labels(label, _slug(exc.reason)).inc()
            log.warning("activation of %s denied: %s", label, exc)
            raise
        metrics.activations.labels(label, "ok").inc()
        metrics.activation_seconds.observe(time.perf_counter() - started)
        return JSONResponse(result.to_json())

    async def post_renew(request: Request) -> Response:
        body = await _json_body(request, RenewBody)
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = Evidence.from_json(body.evidence.model_dump())
                proof = base64.b64decode(body.proof, validate=True)
            except (EvidenceError, binascii.Error, ValueError) as exc:
                coordinator.nonces.consume(nonce)  # one nonce buys one attempt
                raise ActivationDenied("invalid renewal request", str(exc)) from None
            pending = coordinator.renew(
                RenewalRequest(nonce, body.csr, evidence, body.certificate, proof)
            )
            try:
                await persist.commit()
            except Exception:
                # Not on disk: the presented certificate stays the instance's latest. (A
                # cancelled request keeps the new one: its write may still land, and refusing
                # the old certificate is the safe side.)
                pending.revert()
                raise
            leaf = pending.value
        except ActivationDenied as exc:
            metrics.renewals.labels(_slug(exc.reason)).inc()
            log.warning("renewal denied: %s", exc)
            raise
        metrics.renewals.labels("ok").inc()
        root_pem, mesh_pem = coordinator.ca_pems
        return JSONResponse(
            {
                "certificate_chain": [certificate_pem(leaf), mesh_pem],
                "mesh_ca": mesh_pem,
                "root_ca": root_pem,
            }
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error")

    handlers: dict[Any, Any] = {HTTPException: not_found, Exception: internal}
    client = Starlette(
        routes=[
            Route(f"{API_PREFIX}/status", _handled(get_status), methods=["GET"]),
            Route(f"{API_PREFIX}/manifest", _handled(get_manifest), methods=["GET"]),
            Route(f"{API_PREFIX}/manifest", _handled(post_manifest), methods=["POST"]),
            Route(f"{API_PREFIX}/attestation", _handled(get_attestation), methods=["GET"]),
            Route(f"{API_PREFIX}/certificates", _handled(get_certificates), methods=["GET"]),
            Route(f"{API_PREFIX}/openapi.json", get_openapi, methods=["GET"]),
            Route("/metrics", get_metrics, methods=["GET"]),
        ],
        exception_handlers=handlers,
    )
    mesh = Starlette(
        routes=[
            Route(f"{MESH_PREFIX}/nonce", _handled(post_nonce), methods=["POST"]),
            Route(f"{MESH_PREFIX}/activate", _handled(post_activate), methods=["POST"]),
            Route(f"{MESH_PREFIX}/renew", _handled(post_renew), methods=["POST"]),
            Route(f"{API_PREFIX}/openapi.json", get_openapi, methods=["GET"]),
        ],
        exception_handlers=handlers,
    )
    for app in (client, mesh):
        app.state.body_timeout = body_timeout
    return client, mesh


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "path": {"type": "string"},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of both APIs."""
    error = {"$ref": "#/components/schemas/Error"}

    def responses(ok: str, *codes: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            ok: {"description": "success", "content": {"application/json": {"schema": {}}}}
        }
        for code in codes:
            out[str(code)] = {
                "description": "error",
                "content": {"application/json": {"schema": error}},
            }
        return out

    activate_schema = ActivateBody.model_json_schema(ref_template="#/components/schemas/{model}")
    renew_schema = RenewBody.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = {**activate_schema.pop("$defs", {}), **renew_schema.pop("$defs", {})}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Geode Coordinator", "version": "1"},
        "paths": {
            f"{API_PREFIX}/status": {
                "get": {"summary": "Coordinator state", "responses": responses("200")}
            },
            f"{API_PREFIX}/manifest": {
                "get": {
                    "summary": "The manifest in force",
                    "responses": responses("200", 409, 503),
                },
                "post": {
                    "summary": "Set the manifest (once)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/yaml": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"type": "object"}},
                        },
                    },
                    "responses": responses("201", 400, 409, 413, 503),
                },
            },
            f"{API_PREFIX}/attestation": {
                "get": {
                    "summary": "The deployment statement for a nonce",
                    "parameters": [
                        {
                            "name": "nonce",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^([0-9a-f]{2}){16,64}$"},
                        }
                    ],
                    "responses": responses("200", 400, 503),
                }
            },
            f"{API_PREFIX}/certificates": {
                "get": {
                    "summary": "Root and mesh CA certificates",
                    "responses": responses("200", 503),
                }
            },
            f"{MESH_PREFIX}/nonce": {
                "post": {
                    "summary": "A single-use activation nonce",
                    "responses": responses("200", 503),
                }
            },
            f"{MESH_PREFIX}/renew": {
                "post": {
                    "summary": "Renew a running instance's certificate (evidence, CSR, proof)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RenewBody"}
                            }
                        },
                    },
                    "responses": responses("200", 400, 403, 408, 413, 415, 503),
                }
            },
            f"{MESH_PREFIX}/activate": {
                "post": {
                    "summary": "Activate an instance with evidence and a CSR",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ActivateBody"}
                            }
                        },
                    },
                    "responses": responses("200", 400, 403, 408, 413, 415, 503),
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _error_schema(),
                "ActivateBody": activate_schema,
                "RenewBody": renew_schema,
                **defs,
            }
        },
    }
