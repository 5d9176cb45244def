"""The Coordinator's HTTP APIs: the client API (operators, relying parties) and the mesh API.

The routes, their models and the statuses they answer are ``geode.protocol.Routes``: the apps
are built from that table (each handler named by its route's operation id), and the OpenAPI
document generated from it is what both apps serve. Every error is an ``ErrorBody``
(``{"error": code, "message": ...}``, plus ``path`` for manifest errors and ``reason`` for
denials) with a 4xx status for bad requests; a 500 means a bug.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geode.coordinator._api_governance import governance_handlers
from geode.coordinator._coordinator import Coordinator
from geode.coordinator._handout import ActivationRequest, RenewalRequest
from geode.coordinator._holder import State
from geode.coordinator._http import (
    BODY_TIMEOUT,
    ApiError,
    Handler,
    answer,
    error_response,
    handled,
    json_body,
    read_body,
    slug,
)
from geode.coordinator._persist import GroupCommit
from geode.coordinator._transaction import Transaction
from geode.errors import ActivationDenied, EvidenceError, JoinRefused, ManifestConflict
from geode.manifest import MAX_MANIFEST_BYTES
from geode.pki import certificate_pem
from geode.protocol import (
    NONCE_QUERY_PATTERN,
    ActivateBody,
    Api,
    CertificatesAnswer,
    ClusterKeyBody,
    ErrorBody,
    NonceAnswer,
    RenewalAnswer,
    RenewBody,
    Routes,
    openapi_document,
)

__all__ = ["Forward", "build_apps"]

log = logging.getLogger("geode.coordinator.api")


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
    coordinator.manifest_worker.start()

    async def get_status(request: Request) -> Response:
        return answer(coordinator.status())

    async def get_manifest(request: Request) -> Response:
        return answer(coordinator.manifest_info())

    async def post_manifest(request: Request) -> Response:
        raw = await read_body(request, MAX_MANIFEST_BYTES)
        if not raw.strip():
            raise ApiError(400, "manifest_invalid", "manifest: empty body", path="manifest")
        if coordinator.state is State.ACTIVE:
            raise ManifestConflict("manifest already set")  # before validating what was sent
        await coordinator.manifest_worker.check(raw)  # bounded, and off the event loop
        result = await transaction.write_then_adopt(
            lambda: coordinator.prepare_manifest(raw), coordinator.adopt_manifest
        )
        metrics.manifest_sets.inc()
        return answer(result, 201)

    async def get_attestation(request: Request) -> Response:
        nonce_hex = request.query_params.get("nonce", "")
        if not re.fullmatch(NONCE_QUERY_PATTERN, nonce_hex):
            raise ApiError(
                400, "invalid_request", "nonce: 16 to 64 bytes in lowercase hex", path="nonce"
            )
        return answer(coordinator.statement(bytes.fromhex(nonce_hex)))

    async def get_certificates(request: Request) -> Response:
        root = certificate_pem(coordinator.root_certificate)
        mesh = certificate_pem(coordinator.mesh_ca_certificate)
        return answer(CertificatesAnswer(root=root, mesh_ca=mesh, chain=mesh + root))

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def get_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def post_nonce(request: Request) -> Response:
        nonce, expiry = activation.issue_nonce()
        return answer(NonceAnswer(nonce=nonce.hex(), expires_at=expiry.isoformat()))

    async def post_activate(request: Request) -> Response:
        started = time.perf_counter()
        body = await json_body(request, ActivateBody)
        if forward is not None and (forwarded := await forward(request, request.state.raw_body)):
            return forwarded
        document = coordinator.document
        known = document is not None and body.service in document.manifest.services
        label = body.service if known else "<unknown>"
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = body.evidence.evidence()
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
        return answer(result.answer())

    async def post_renew(request: Request) -> Response:
        body = await json_body(request, RenewBody)
        if forward is not None and (forwarded := await forward(request, request.state.raw_body)):
            return forwarded
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = body.evidence.evidence()
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
        return answer(
            RenewalAnswer(
                certificate_chain=[certificate_pem(leaf), mesh_pem],
                mesh_ca=mesh_pem,
                root_ca=root_pem,
            )
        )

    async def post_cluster_key(request: Request) -> Response:
        body = await json_body(request, ClusterKeyBody)
        nonce = bytes.fromhex(body.nonce)
        try:
            try:
                evidence = body.evidence.evidence()
                newcomer_key = base64.b64decode(body.public_key, validate=True)
            except (EvidenceError, binascii.Error, ValueError) as exc:
                coordinator.nonces.consume(nonce)  # one nonce buys one attempt
                raise JoinRefused(f"invalid request: {exc}") from None
            handed = coordinator.cluster_keys.hand_over(nonce, newcomer_key, evidence)
        except JoinRefused as exc:
            log.warning("cluster key refused to %s: %s", _peer(request), exc)
            raise
        return answer(handed)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # A 405 keeps the router's ``Allow`` header: it names the methods the path takes.
        return error_response(
            exc.status_code, ErrorBody(error=code, message=str(exc.detail)), exc.headers
        )

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, ErrorBody(error="internal", message="internal error"))

    document = openapi_document()
    handlers: dict[str, Handler] = {
        Routes.status.operation_id: handled(get_status),
        Routes.manifest.operation_id: handled(get_manifest),
        Routes.set_manifest.operation_id: handled(post_manifest),
        Routes.attestation.operation_id: handled(get_attestation),
        Routes.certificates.operation_id: handled(get_certificates),
        Routes.openapi.operation_id: get_openapi,
        Routes.metrics.operation_id: get_metrics,
        Routes.nonce.operation_id: handled(post_nonce),
        Routes.activate.operation_id: handled(post_activate),
        Routes.renew.operation_id: handled(post_renew),
        Routes.cluster_key.operation_id: handled(post_cluster_key),
        **{op: handled(h) for op, h in governance_handlers(coordinator, transaction).items()},
    }
    exception_handlers: dict[Any, Any] = {HTTPException: not_found, Exception: internal}
    client = Starlette(routes=_routes("client", handlers), exception_handlers=exception_handlers)
    mesh = Starlette(routes=_routes("mesh", handlers), exception_handlers=exception_handlers)
    for app in (client, mesh):
        app.state.body_timeout = body_timeout
        # A path the table does not have is a typed 404, never a redirect to the path without
        # its trailing slash (an answer the document does not describe).
        app.router.redirect_slashes = False
    return client, mesh


def _routes(api: Api, handlers: Mapping[str, Handler]) -> list[Route]:
    """The Starlette routes of ``api`` from the protocol's table: a route without its handler
    (or a handler without its route) is a bug found at start. The methods of one path share
    one Starlette route, so that a method the path does not take is a 405 whose ``Allow``
    names all the others."""
    unknown = set(handlers) - {spec.operation_id for spec in Routes.all()}
    assert not unknown, f"handlers of no route: {sorted(unknown)}"
    by_path: dict[str, dict[str, Handler]] = {}
    for spec in Routes.of(api):
        by_path.setdefault(spec.path, {})[spec.method] = handlers[spec.operation_id]
    return [
        Route(path, _by_method(methods), methods=list(methods)) for path, methods in by_path.items()
    ]


def _by_method(handlers: Mapping[str, Handler]) -> Handler:
    if len(handlers) == 1:
        return next(iter(handlers.values()))

    async def endpoint(request: Request) -> Response:
        # HEAD is answered as GET (Starlette adds it to a route that takes GET).
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "an unknown peer"
