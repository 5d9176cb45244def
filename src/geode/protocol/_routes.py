"""The routes of the Coordinator's two APIs, in one table.

The server builds its Starlette routes from this table (``geode.coordinator``), clients take
their paths from it, and the OpenAPI document is generated from it (``openapi_document``), so a
route, its description and its callers cannot drift apart. Each route lists every status it can
answer: its successes with their models, its refusals (each an ``ErrorBody``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from geode.protocol import _answers as a
from geode.protocol import _requests as r

__all__ = ["API_PREFIX", "MESH_PREFIX", "Api", "QueryParam", "RawContent", "RouteSpec", "Routes"]

API_PREFIX = "/api/v1"
MESH_PREFIX = f"{API_PREFIX}/mesh"

Api = Literal["client", "mesh"]


@dataclass(frozen=True)
class QueryParam:
    name: str
    pattern: str


@dataclass(frozen=True)
class RawContent:
    media_type: str
    schema: Mapping[str, object]


@dataclass(frozen=True)
class RouteSpec:
    """One route: where it is, what it takes, and every status it answers.

    ``ok``: each success status with its content: an answer model (or a union of them), or
    ``RawContent`` for the two routes that answer no model (this document, the metrics).
    ``body``: the JSON request model; ``"manifest"`` for a manifest (YAML or JSON, read raw).
    ``errors``: the refusals it can answer. ``user``: it needs a user's client certificate.
    """

    apis: tuple[Api, ...]
    method: str
    path: str
    operation_id: str
    summary: str
    ok: Mapping[int, object]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | Literal["manifest"] | None = None
    query: tuple[QueryParam, ...] = ()
    user: bool = False

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))

    def url(self, **params: str) -> str:
        """The path with its ``{name}`` parameters filled in."""
        return self.path.format(**params)


_NONCE = (QueryParam("nonce", r.NONCE_QUERY_PATTERN),)
# A body can be malformed (400), too large (413) or too slow (408); a JSON body can also be not
# JSON (415), a raw manifest (or update) too costly to validate (422).
_BODY = (400, 408, 413)
_RAW = (*_BODY, 422)
_JSON = (*_BODY, 415)
# A user's call: no (known) certificate (401), before a manifest (409), in recovery (503).
_USER = (401, 409, 503)
# A path parameter: a value that is no path segment ("a/b", "a/") routes nowhere (404).
_PATH = (404,)


class Routes:
    """Every route of both APIs, by name."""

    status = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/status", "getStatus", "Coordinator state",
        {200: a.CoordinatorStatus},
    )  # fmt: skip
    manifest = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/manifest", "getManifest", "The manifest in force",
        {200: a.ManifestInfo}, (409, 503),
    )  # fmt: skip
    set_manifest = RouteSpec(
        ("client",), "POST", f"{API_PREFIX}/manifest", "setManifest", "Set the manifest (once)",
        {201: a.ManifestSetResult}, (*_RAW, 409, 503), body="manifest",
    )  # fmt: skip
    attestation = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/attestation", "getAttestation",
        "The deployment statement for a nonce",
        {200: a.DeploymentStatement}, (400, 503), query=_NONCE,
    )  # fmt: skip
    certificates = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/certificates", "getCertificates",
        "Root and mesh CA certificates", {200: a.CertificatesAnswer}, (503,),
    )  # fmt: skip
    openapi = RouteSpec(
        ("client", "mesh"), "GET", f"{API_PREFIX}/openapi.json", "getOpenApi",
        "This document", {200: RawContent("application/json", {"type": "object"})},
    )  # fmt: skip
    metrics = RouteSpec(
        ("client",), "GET", "/metrics", "getMetrics", "Prometheus metrics",
        {200: RawContent("text/plain", {"type": "string"})},
    )  # fmt: skip
    secret = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/secrets/{{name}}", "getSecret",
        "Read a shared or user-defined secret (role: read)",
        {200: a.SecretAnswer}, (*_USER, 403, 404), user=True,
    )  # fmt: skip
    set_secret = RouteSpec(
        ("client",), "PUT", f"{API_PREFIX}/secrets/{{name}}", "setSecret",
        "Set a user-defined secret (role: write); base64 value",
        {200: a.SecretSetAnswer}, (*_JSON, *_USER, *_PATH, 403), body=r.SecretBody, user=True,
    )  # fmt: skip
    pending_update = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/update", "getPendingUpdate",
        "The pending manifest update, if any", {200: a.PendingUpdateAnswer}, _USER, user=True,
    )  # fmt: skip
    update = RouteSpec(
        ("client",), "POST", f"{API_PREFIX}/update", "update",
        "A package update ({packages: ...}, applied at once; role: update on each package) or "
        "a manifest update (applied once acknowledged by the threshold; role: update on the "
        "manifest)",
        {201: a.UpdateApplied, 202: a.UpdatePending}, (*_RAW, *_USER, 403), body="manifest",
        user=True,
    )  # fmt: skip
    acknowledge_update = RouteSpec(
        ("client",), "POST", f"{API_PREFIX}/update/acknowledge", "acknowledgeUpdate",
        "Acknowledge the pending manifest update (applied at the threshold)",
        {200: a.AcknowledgeAnswer}, (*_JSON, *_USER, 403), body=r.UpdateRef, user=True,
    )  # fmt: skip
    cancel_update = RouteSpec(
        ("client",), "POST", f"{API_PREFIX}/update/cancel", "cancelUpdate",
        "Discard the pending manifest update",
        {200: a.CancelAnswer}, (*_JSON, *_USER, 403), body=r.UpdateRef, user=True,
    )  # fmt: skip
    manifest_log = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/manifest/log", "getManifestLog",
        "Every manifest set and update", {200: a.ManifestLog}, _USER, user=True,
    )  # fmt: skip
    audit = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/audit", "getAuditLog",
        "The audit log (JSON lines, hash-chained, signed by the root) and head",
        {200: a.AuditLogAnswer}, _USER, user=True,
    )  # fmt: skip
    recovery_offer = RouteSpec(
        ("client",), "GET", f"{API_PREFIX}/recovery", "getRecoveryOffer",
        "In recovery: the encrypted shares, and the key to send them to with evidence bound "
        "to a nonce",
        {200: a.RecoveryOffer}, (400, 409, 503), query=_NONCE,
    )  # fmt: skip
    recover = RouteSpec(
        ("client",), "POST", f"{API_PREFIX}/recovery", "uploadRecoveryShare",
        "In recovery: upload one party's share, signed with its recovery key",
        {200: a.RecoveryProgress}, (*_JSON, 403, 409, 503), body=r.RecoveryUpload,
    )  # fmt: skip
    nonce = RouteSpec(
        ("mesh",), "POST", f"{MESH_PREFIX}/nonce", "getNonce", "A single-use activation nonce",
        {200: a.NonceAnswer}, (503,),
    )  # fmt: skip
    activate = RouteSpec(
        ("mesh",), "POST", f"{MESH_PREFIX}/activate", "activate",
        "Activate an instance with evidence and a CSR",
        {200: a.ActivationAnswer}, (*_JSON, 403, 409, 503), body=r.ActivateBody,
    )  # fmt: skip
    renew = RouteSpec(
        ("mesh",), "POST", f"{MESH_PREFIX}/renew", "renew",
        "Renew a running instance's certificate (evidence, CSR, proof)",
        {200: a.RenewalAnswer}, (*_JSON, 403, 409, 503), body=r.RenewBody,
    )  # fmt: skip
    cluster_key = RouteSpec(
        ("mesh",), "POST", f"{MESH_PREFIX}/cluster-key", "getClusterKey",
        "The cluster key, sealed to a peer Coordinator that attests to the same Coordinator "
        "package (evidence over its key and a nonce)",
        {200: a.ClusterKeyAnswer}, (*_JSON, 403, 503), body=r.ClusterKeyBody,
    )  # fmt: skip

    @classmethod
    def all(cls) -> tuple[RouteSpec, ...]:
        return tuple(v for v in vars(cls).values() if isinstance(v, RouteSpec))

    @classmethod
    def of(cls, api: Api) -> tuple[RouteSpec, ...]:
        return tuple(spec for spec in cls.all() if api in spec.apis)
