"""geode.protocol: the OpenAPI document is generated from the route table, and it is what the
Coordinator serves; every route declares a schema for every status it can answer."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx
import pytest

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import Coordinator, CoordinatorSettings, GroupCommit, build_apps
from geode.protocol import (
    API_PREFIX,
    ERROR_CODES,
    MESH_PREFIX,
    RawContent,
    Routes,
    RouteSpec,
    openapi_document,
)
from geode.testing import MemoryStore
from tests.coordinator.support.simulated import simulated_tee

SRC = Path(__file__).resolve().parents[2] / "src" / "geode"


def _apps() -> tuple[object, object]:
    platform = SimulatedPlatform.generate()
    coordinator = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, bytes(32)),
        os.urandom(32),
    )
    coordinator.load(None)
    return build_apps(coordinator, GroupCommit(coordinator.sealed_state, MemoryStore()))


def test_both_apis_serve_the_generated_document() -> None:
    async def fetch(app: object) -> object:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://coordinator") as http:
            response = await http.get(Routes.openapi.path)
        assert response.status_code == 200
        return response.json()

    client, mesh = _apps()
    generated = openapi_document()
    assert asyncio.run(fetch(client)) == generated
    assert asyncio.run(fetch(mesh)) == generated


def test_a_method_a_path_does_not_take_is_405_with_allow() -> None:
    async def delete(app: object, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://coordinator") as http:
            return await http.delete(path)

    client, mesh = _apps()
    for app, path, allowed in (
        (client, Routes.manifest.path, {"GET", "POST"}),
        (mesh, Routes.activate.path, {"POST"}),
    ):
        response = asyncio.run(delete(app, path))
        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"
        assert set(response.headers["allow"].replace(" ", "").split(",")) >= allowed


def _request(app: object, method: str, path: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://coordinator") as http:
            return await http.request(method, path, json={})

    return asyncio.run(send())


@pytest.mark.parametrize("spec", Routes.all(), ids=lambda s: f"{s.method} {s.path}")
def test_a_path_the_table_does_not_have_is_a_typed_404_never_a_redirect(spec: RouteSpec) -> None:
    client, mesh = _apps()
    app = client if "client" in spec.apis else mesh
    paths = [spec.path + "/"]
    if spec.path_params:  # a value that is no path segment: the route's own documented 404
        paths += [spec.url(**dict.fromkeys(spec.path_params, v)) for v in ("a%2Fb", "a%2F", "")]
        assert 404 in _statuses(spec)
    for path in paths:
        response = _request(app, spec.method, path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json()["error"] == "not_found"


def test_the_server_has_exactly_the_routes_of_the_table() -> None:
    client, mesh = _apps()
    for app, api in ((client, "client"), (mesh, "mesh")):
        served = {
            (method, route.path)
            for route in app.routes  # type: ignore[attr-defined]
            for method in route.methods - {"HEAD"}
        }
        assert served == {(spec.method, spec.path) for spec in Routes.of(api)}  # type: ignore[arg-type]


def test_the_document_describes_every_route_once() -> None:
    paths = openapi_document()["paths"]
    described = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert described == {(spec.method, spec.path) for spec in Routes.all()}
    operation_ids = [spec.operation_id for spec in Routes.all()]
    assert len(set(operation_ids)) == len(operation_ids)


def _statuses(spec: RouteSpec) -> set[int]:
    return {*spec.ok, *spec.errors}


@pytest.mark.parametrize("spec", Routes.all(), ids=lambda s: f"{s.method} {s.path}")
def test_every_status_of_a_route_has_a_schema(spec: RouteSpec) -> None:
    document = openapi_document()
    operation = document["paths"][spec.path][spec.method.lower()]
    assert operation["operationId"] == spec.operation_id
    responses = operation["responses"]
    assert set(responses) == {str(status) for status in _statuses(spec)}
    schemas = document["components"]["schemas"]
    for status, response in responses.items():
        (content,) = response["content"].values()
        schema = content["schema"]
        assert schema, (spec.path, status)
        if int(status) >= 400:
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        elif not isinstance(spec.ok[int(status)], RawContent):
            for ref in re.findall(r"#/components/schemas/(\w+)", str(schema)):
                assert ref in schemas
            assert schema != {"type": "object"}


@pytest.mark.parametrize("spec", Routes.all(), ids=lambda s: f"{s.method} {s.path}")
def test_the_statuses_follow_from_what_the_handlers_do(spec: RouteSpec) -> None:
    statuses = _statuses(spec)
    if spec.body is not None:  # read with a size limit and a deadline, and validated
        assert {400, 408, 413} <= statuses
    if spec.body not in (None, "manifest"):  # JSON only
        assert 415 in statuses
    if spec.query:  # a malformed nonce
        assert 400 in statuses
    in_recovery_too = {r.operation_id for r in (Routes.status, Routes.openapi, Routes.metrics)}
    if spec.operation_id not in in_recovery_too:  # needs the keys (503 in recovery) or saves (503)
        assert 503 in statuses
    if spec.user:  # no (known) user's certificate; no manifest to name users yet
        assert {401, 409} <= statuses
    if spec.body is not None and spec.user:  # changes need a role
        assert 403 in statuses
    if spec.path_params:  # a value that is no path segment routes nowhere
        assert 404 in statuses


def test_the_error_body_lists_every_code() -> None:
    schema = openapi_document()["components"]["schemas"]["ErrorBody"]
    assert schema["properties"]["error"]["enum"] == sorted(ERROR_CODES)
    assert schema["required"] == ["error", "message"]
    # An update that changes nothing is refused with a code of its own, a 409 of the route.
    assert "update_changes_nothing" in schema["properties"]["error"]["enum"]
    assert ERROR_CODES["update_changes_nothing"].status == 409
    assert 409 in Routes.update.errors


def test_users_authenticate_by_client_certificate() -> None:
    document = openapi_document()
    for spec in Routes.all():
        operation = document["paths"][spec.path][spec.method.lower()]
        assert ("security" in operation) == spec.user
    assert document["components"]["securitySchemes"]["clientCertificate"]["type"] == "mutualTLS"


def test_the_prefix_is_written_once_in_all_of_the_source() -> None:
    assert MESH_PREFIX.startswith(API_PREFIX)
    found = [
        path.relative_to(SRC)
        for path in sorted(SRC.rglob("*.py"))
        for _ in range(path.read_text().count(f'"{API_PREFIX}'))
    ]
    assert found == [Path("protocol/_routes.py")]
