"""The Coordinator's HTTP APIs: the client API (operators, relying parties) and the mesh API.

Every error is a JSON object ``{"error": code, "message": ...}`` (plus ``path`` for manifest
errors and ``reason`` for denials) with a 4xx status for bad requests; a 500 means a bug.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field, StringConstraints
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geode.attestation import Evidence
from geode.coordinator._activation import ActivationRequest, RenewalRequest
from geode.coordinator._api_governance import governance_routes, governance_schemas
from geode.coordinator._coordinator import Coordinator
from geode.coordinator._http import (
    BODY_TIMEOUT,
    MAX_JSON_BODY,
    ApiError,
    Body,
    error_response,
    handled,
    json_body,
    read_body,
    slug,
)
from geode.coordinator._persist import GroupCommit
from geode.coordinator._transaction import Transaction
from geode.errors import ActivationDenied, EvidenceError, JoinRefused
from geode.manifest import MAX_MANIFEST_BYTES
from geode.pki import certificate_pem

__all__ = ["API_PREFIX", "MESH_PREFIX", "Forward", "build_apps", "openapi_document"]

log = logging.getLogger("geode.coordinator.api")

API_PREFIX = "/api/v1"
MESH_PREFIX = "/api/v1/mesh"

HexNonce = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class EvidenceBody(Body):
    kind: Annotated[str, Field(max_length=16)]
    data: Annotated[str, Field(max_length=MAX_JSON_BODY)]


class ActivateBody(Body):
    service: Annotated[str, Field(min_length=1, max_length=64)]
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    evidence: EvidenceBody


class RenewBody(Body):
    nonce: HexNonce
    csr: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    evidence: EvidenceBody
    certificate: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    proof: Annotated[str, Field(min_length=1, max_length=512)]


class ClusterKeyBody(Body):
    nonce: HexNonce
    public_key: Annotated[str, Field(min_length=1, max_length=512)]
    evidence: EvidenceBody


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
        self.store_retries = Counter(
            "geode_store_retries",
            "Activations and renewals decided again after losing a compare-and-swap",
            registry=self.registry,
        )
        self.manifest_sets = Counter(
            "geode_manifest_sets", "Manifests accepted", registry=self.registry
        )


# Passes a validated activation or renewal (the request, its raw body) on to the Coordinator
# that writes them; its answer, or ``None`` to handle the request here.
Forward = Callable[[Request, bytes], Awaitable[Response | None]]


def build_apps(
    coordinator: Coordinator,
    persist: GroupCommit,
    *,
    body_timeout: float = BODY_TIMEOUT,
    on_change: Callable[[], None] | None = None,
    forward: Forward | None = None,
) -> tuple[Starlette, Starlette]:
    """The client API app and the mesh API app, sharing one Coordinator.

    A request body must arrive within ``body_timeout`` seconds, so a slow or stalled client
    holds nothing for long. ``on_change`` runs after a change of manifest or a recovery (the
    server reloads its TLS certificate and the users it trusts). ``forward``: several
    Coordinators on one store, where one of them writes activations and renewals.
    """
    metrics = _Metrics()
    # Every change goes through it: saved before it is answered, undone when it is not.
    transaction = Transaction(
        coordinator.held,
        persist,
        coordinator.audit_sink,
        on_change=on_change,
        on_retry=metrics.store_retries.inc,
    )
    activation = coordinator.activation

    async def get_status(request: Request) -> Response:
        return JSONResponse(coordinator.status())

    async def get_manifest(request: Request) -> Response:
        return JSONResponse(coordinator.manifest_info())

    async def post_manifest(request: Request) -> Response:
        raw = await read_body(request, MAX_MANIFEST_BYTES)
        if not raw.strip():
            raise ApiError(400, "manifest_invalid", "manifest: empty body", path="manifest")
        result = await transaction.write_then_adopt(
            lambda: coordinator.prepare_manifest(raw), coordinator.adopt_manifest
        )
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
        nonce, expiry = activation.issue_nonce()
        return JSONResponse({"nonce": nonce.hex(), "expires_at": expiry.isoformat()})

    async def post_activate(request: Request) -> Response:
        started = time.perf_counter()
        body = await json_body(request, ActivateBody)
        if forward is not None and (answer := await forward(request, request.state.raw_body)):
            return answer
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
            wanted = ActivationRequest(body.service, nonce, body.csr, evidence)
            # If the write fails, nothing of this activation is on disk: the writer undoes it.
            # (A cancelled request keeps its count: its write may still land, and
            # over-counting is the safe side of max_activations.) Decided again after a lost
            # compare-and-swap, its nonce spent by the first attempt.
            result = await transaction.decide(
                lambda again: activation.activate(wanted, nonce_spent=again)
            )
        except ActivationDenied as exc:
            metrics.activations.labels(label, slug(exc.reason)).inc()
            log.warning("activation of %s denied: %s", label, exc)
            raise
        metrics.activations.labels(label, "ok").inc()
        metrics.activation_seconds.observe(time.perf_counter() - started)
        return JSONResponse(result.to_json())

    async def post_renew(request: Request) -> Response:
        body = await json_body(request, RenewBody)
        if forward is not None and (answer := await forward(request, request.state.raw_body)):
            return answer
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = Evidence.from_json(body.evidence.model_dump())
                proof = base64.b64decode(body.proof, validate=True)
            except (EvidenceError, binascii.Error, ValueError) as exc:
                coordinator.nonces.consume(nonce)  # one nonce buys one attempt
                raise ActivationDenied("invalid renewal request", str(exc)) from None
            renewal = RenewalRequest(nonce, body.csr, evidence, body.certificate, proof)
            # If the write fails, the writer undoes the renewal: the presented certificate
            # stays the instance's latest. (A cancelled request keeps the new one: its write
            # may still land, and refusing the old certificate is the safe side.)
            leaf = await transaction.decide(
                lambda again: activation.renew(renewal, nonce_spent=again)
            )
        except ActivationDenied as exc:
            metrics.renewals.labels(slug(exc.reason)).inc()
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

    async def post_cluster_key(request: Request) -> Response:
        body = await json_body(request, ClusterKeyBody)
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = Evidence.from_json(body.evidence.model_dump())
                newcomer_key = base64.b64decode(body.public_key, validate=True)
            except (EvidenceError, binascii.Error, ValueError) as exc:
                coordinator.nonces.consume(nonce)  # one nonce buys one attempt
                raise JoinRefused(f"invalid request: {exc}") from None
            answer = coordinator.cluster_keys.hand_over(nonce, newcomer_key, evidence)
        except JoinRefused as exc:
            log.warning("cluster key refused to %s: %s", _peer(request), exc)
            raise
        return JSONResponse(answer)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error")

    handlers: dict[Any, Any] = {HTTPException: not_found, Exception: internal}
    client = Starlette(
        routes=[
            Route(f"{API_PREFIX}/status", handled(get_status), methods=["GET"]),
            Route(f"{API_PREFIX}/manifest", handled(get_manifest), methods=["GET"]),
            Route(f"{API_PREFIX}/manifest", handled(post_manifest), methods=["POST"]),
            Route(f"{API_PREFIX}/attestation", handled(get_attestation), methods=["GET"]),
            Route(f"{API_PREFIX}/certificates", handled(get_certificates), methods=["GET"]),
            Route(f"{API_PREFIX}/openapi.json", get_openapi, methods=["GET"]),
            Route("/metrics", get_metrics, methods=["GET"]),
            *governance_routes(coordinator, transaction, API_PREFIX),
        ],
        exception_handlers=handlers,
    )
    mesh = Starlette(
        routes=[
            Route(f"{MESH_PREFIX}/nonce", handled(post_nonce), methods=["POST"]),
            Route(f"{MESH_PREFIX}/activate", handled(post_activate), methods=["POST"]),
            Route(f"{MESH_PREFIX}/renew", handled(post_renew), methods=["POST"]),
            Route(f"{MESH_PREFIX}/cluster-key", handled(post_cluster_key), methods=["POST"]),
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

    def json_request(schema: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        return {"required": True, "content": {"application/json": {"schema": ref}}}

    # Users authenticate with the client certificate the manifest names for each.
    user: list[dict[str, list[str]]] = [{"clientCertificate": []}]
    manifest_body = {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
    governance: dict[str, Any] = {
        f"{API_PREFIX}/secrets/{{name}}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "Read a shared or user-defined secret (role: read)",
                "security": user,
                "responses": responses("200", 401, 403, 404, 409, 503),
            },
            "put": {
                "summary": "Set a user-defined secret (role: write); base64 value",
                "security": user,
                "requestBody": json_request("SecretBody"),
                "responses": responses("200", 400, 401, 403, 409, 413, 415, 503),
            },
        },
        f"{API_PREFIX}/update": {
            "get": {
                "summary": "The pending manifest update, if any",
                "security": user,
                "responses": responses("200", 401, 409, 503),
            },
            "post": {
                "summary": "A package update ({packages: ...}, applied at once; role: update on "
                "each package) or a manifest update (applied once acknowledged by the "
                "threshold; role: update on the manifest)",
                "security": user,
                "requestBody": manifest_body,
                "responses": {
                    **responses("201", 400, 401, 403, 409, 413, 503),
                    "202": {"description": "manifest update pending acknowledgements"},
                },
            },
        },
        f"{API_PREFIX}/update/acknowledge": {
            "post": {
                "summary": "Acknowledge the pending manifest update (applied at the threshold)",
                "security": user,
                "requestBody": json_request("UpdateRef"),
                "responses": responses("200", 400, 401, 403, 409, 503),
            }
        },
        f"{API_PREFIX}/update/cancel": {
            "post": {
                "summary": "Discard the pending manifest update",
                "security": user,
                "requestBody": json_request("UpdateRef"),
                "responses": responses("200", 400, 401, 403, 409, 503),
            }
        },
        f"{API_PREFIX}/manifest/log": {
            "get": {
                "summary": "Every manifest set and update",
                "security": user,
                "responses": responses("200", 401, 409, 503),
            }
        },
        f"{API_PREFIX}/audit": {
            "get": {
                "summary": "The audit log (JSON lines, hash-chained, signed by the root) and head",
                "security": user,
                "responses": responses("200", 401, 409, 503),
            }
        },
        f"{API_PREFIX}/recovery": {
            "get": {
                "summary": "In recovery: the encrypted shares, and the key to send them to with "
                "evidence bound to a nonce",
                "parameters": [
                    {
                        "name": "nonce",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^([0-9a-f]{2}){16,64}$"},
                    }
                ],
                "responses": responses("200", 400, 409, 503),
            },
            "post": {
                "summary": "In recovery: upload one party's share, signed with its recovery key",
                "requestBody": json_request("RecoveryUpload"),
                "responses": responses("200", 400, 403, 409, 503),
            },
        },
    }
    activate_schema = ActivateBody.model_json_schema(ref_template="#/components/schemas/{model}")
    renew_schema = RenewBody.model_json_schema(ref_template="#/components/schemas/{model}")
    cluster_key_schema = ClusterKeyBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    defs = {
        **activate_schema.pop("$defs", {}),
        **renew_schema.pop("$defs", {}),
        **cluster_key_schema.pop("$defs", {}),
    }
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
            f"{MESH_PREFIX}/cluster-key": {
                "post": {
                    "summary": "The cluster key, sealed to a peer Coordinator that attests to "
                    "the same Coordinator package (evidence over its key and a nonce)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ClusterKeyBody"}
                            }
                        },
                    },
                    "responses": responses("200", 400, 403, 408, 413, 415, 503),
                }
            },
            **governance,
        },
        "components": {
            "schemas": {
                "Error": _error_schema(),
                "ActivateBody": activate_schema,
                "RenewBody": renew_schema,
                "ClusterKeyBody": cluster_key_schema,
                **governance_schemas(),
                **defs,
            },
            "securitySchemes": {
                "clientCertificate": {
                    "type": "mutualTLS",
                    "description": "TLS client certificate of a user named in the manifest",
                }
            },
        },
    }


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "an unknown peer"
