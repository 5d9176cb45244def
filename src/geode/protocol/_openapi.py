"""The OpenAPI 3.1 document of both APIs, generated from the route table and the models.

Every success has its model's schema; every refusal a route can answer references the error
body, whose ``error`` lists the codes of the error table.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import TypeAdapter

from geode.protocol._errors import ErrorBody
from geode.protocol._routes import RawContent, Routes, RouteSpec

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "success",
    201: "created",
    202: "accepted, pending acknowledgements",
    400: "invalid request",
    401: "no user's client certificate",
    403: "refused",
    404: "not found",
    408: "the body did not arrive in time",
    409: "conflict with the Coordinator's state",
    413: "body too large",
    415: "not application/json",
    422: "validating the manifest exceeded its time or memory budget",
    503: "unavailable (recovery, or the state could not be saved)",
}
_USER_SECURITY: list[dict[str, list[str]]] = [{"clientCertificate": []}]
_MANIFEST_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
    },
}


class _Schemas:
    """Collects the components: each model once, under its name."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, content: Any) -> dict[str, Any]:
        # Validation mode for answers too: it describes what a client reads, and the status
        # answer's serializer (which leaves out the other state's fields) has no schema.
        schema = TypeAdapter(content).json_schema(ref_template=_REF)
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        if isinstance(content, type) and schema.get("type") == "object":
            self._add(content.__name__, schema)
            return {"$ref": _REF.format(model=content.__name__)}
        return schema

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        known = self.components.setdefault(name, schema)
        if known != schema:  # one name, two shapes: the document would lie about one
            raise AssertionError(f"two schemas named {name}")


def _operation(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, content in sorted(spec.ok.items()):
        if isinstance(content, RawContent):
            media, schema = content.media_type, dict(content.schema)
        else:
            media, schema = "application/json", schemas.ref(content)
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "success"),
            "content": {media: {"schema": schema}},
        }
    error = schemas.ref(ErrorBody)
    for status in sorted(set(spec.errors)):
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": error}},
        }
    operation: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in spec.path_params
    ] + [
        {
            "name": q.name,
            "in": "query",
            "required": True,
            "schema": {"type": "string", "pattern": q.pattern},
        }
        for q in spec.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if spec.body == "manifest":
        operation["requestBody"] = _MANIFEST_BODY
    elif spec.body is not None:
        body = schemas.ref(spec.body)
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if spec.user:
        operation["security"] = _USER_SECURITY
    return operation


@functools.cache
def _document() -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for spec in Routes.all():
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Geode Coordinator", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "clientCertificate": {
                    "type": "mutualTLS",
                    "description": "TLS client certificate of a user named in the manifest",
                }
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of both APIs (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
