"""Bad input to every endpoint gets a typed JSON error with a 4xx status, never a 500 or a hang."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geode.attestation import measure_bundle
from tests.support import CoordinatorProcess, sample_manifest

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json"}
GOOD_ACTIVATE = {
    "service": "web",
    "nonce": "00" * 32,
    "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    "evidence": {"kind": "simulated", "data": ""},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    """One Coordinator for the whole module: every case must leave it serving."""
    base = tmp_path_factory.mktemp("api")
    env = {
        **os.environ,
        "GEODE_SEALING_KEY": str(base / "sealing.key"),
        "GEODE_PLATFORM_KEY": str(base / "platform.key"),
        "GEODE_CONFIG_DIR": str(base / "config"),
    }
    proc = CoordinatorProcess(base / "data", env, base / "coordinator.log").start()
    bundle = base / "bundle"
    bundle.mkdir()
    (bundle / "app.py").write_text("pass\n")
    manifest = sample_manifest(measure_bundle(bundle).hex())
    answer = httpx.post(
        f"https://{proc.client_addr}/api/v1/manifest",
        content=manifest,
        headers=JSON,
        verify=False,
    )
    assert answer.status_code == 201, answer.text
    yield proc
    proc.stop()


def _activate_with(**changes: object) -> bytes:
    body = dict(GOOD_ACTIVATE)
    body.update(changes)
    return json.dumps(body).encode()


# (api, method, path, headers, body, status, error code)
CASES: list[tuple[str, str, str, dict[str, str], bytes | None, int, str]] = [
    ("mesh", "POST", "/api/v1/mesh/activate", JSON, b"{not json", 400, "invalid_json"),
    ("mesh", "POST", "/api/v1/mesh/activate", JSON, b"\xff\xfe", 400, "invalid_json"),
    ("mesh", "POST", "/api/v1/mesh/activate", JSON, b"[]", 400, "invalid_request"),
    ("mesh", "POST", "/api/v1/mesh/activate", JSON, b"null", 400, "invalid_request"),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(service=7),
        400,
        "invalid_request",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(nonce="zz"),
        400,
        "invalid_request",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(extra=1),
        400,
        "invalid_request",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(evidence={"kind": "simulated", "data": "x", "more": 1}),
        400,
        "invalid_request",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(evidence={"kind": "simulated", "data": "***"}),
        403,
        "activation_denied",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(evidence={"kind": "quantum", "data": ""}),
        403,
        "activation_denied",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        _activate_with(service="x" * 65),
        400,
        "invalid_request",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        JSON,
        b"{" + b" " * 70_000 + b"}",
        413,
        "payload_too_large",
    ),
    (
        "mesh",
        "POST",
        "/api/v1/mesh/activate",
        {"content-type": "text/plain"},
        _activate_with(),
        415,
        "unsupported_media_type",
    ),
    ("mesh", "POST", "/api/v1/mesh/activate", {}, _activate_with(), 415, "unsupported_media_type"),
    ("mesh", "GET", "/api/v1/mesh/activate", {}, None, 405, "method_not_allowed"),
    ("mesh", "GET", "/api/v1/mesh/nonce", {}, None, 405, "method_not_allowed"),
    ("mesh", "GET", "/nowhere", {}, None, 404, "not_found"),
    ("mesh", "GET", "/api/v1/status", {}, None, 404, "not_found"),
    ("client", "GET", "/api/v1/attestation", {}, None, 400, "invalid_request"),
    ("client", "GET", "/api/v1/attestation?nonce=abc", {}, None, 400, "invalid_request"),
    ("client", "GET", "/api/v1/attestation?nonce=" + "00" * 8, {}, None, 400, "invalid_request"),
    ("client", "GET", "/api/v1/attestation?nonce=" + "00" * 65, {}, None, 400, "invalid_request"),
    ("client", "POST", "/api/v1/manifest", JSON, b"version: 1\n", 409, "manifest_conflict"),
    (
        "client",
        "POST",
        "/api/v1/manifest",
        JSON,
        b"x" * (1024 * 1024 + 1),
        413,
        "payload_too_large",
    ),
    ("client", "PUT", "/api/v1/manifest", JSON, b"{}", 405, "method_not_allowed"),
    ("client", "DELETE", "/api/v1/status", {}, None, 405, "method_not_allowed"),
    ("client", "POST", "/api/v1/mesh/activate", JSON, _activate_with(), 404, "not_found"),
]


@pytest.mark.parametrize(("which", "method", "path", "headers", "body", "status", "code"), CASES)
def test_bad_input(
    api: CoordinatorProcess,
    which: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    port = api.mesh_port if which == "mesh" else api.client_port
    answer = httpx.request(
        method,
        f"https://127.0.0.1:{port}{path}",
        content=body,
        headers=headers,
        verify=False,
        timeout=10,
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    assert payload["error"] == code
    assert isinstance(payload["message"], str)
    assert payload["message"]
    assert api.status()["state"] == "active"


def test_invalid_manifest_names_the_path(coordinator: CoordinatorProcess, bundle: Path) -> None:
    proc = coordinator
    url = f"https://{proc.client_addr}/api/v1/manifest"
    manifest = json.loads(sample_manifest(measure_bundle(bundle).hex()))
    manifest["services"]["web"]["package"] = "missing"
    answer = httpx.post(url, content=json.dumps(manifest), headers=JSON, verify=False)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "manifest_invalid",
        "message": "services.web.package: unknown package 'missing'",
        "path": "services.web.package",
    }
    for body in (b"", b"   ", b"- a list", b"{broken", b"\xff"):
        answer = httpx.post(url, content=body, verify=False)
        assert answer.status_code == 400, body
        assert answer.json()["error"] == "manifest_invalid"
    # Nothing was half-set: the Coordinator still awaits a manifest and accepts a good one.
    assert proc.status()["state"] == "awaiting-manifest"
    manifest["services"]["web"]["package"] = "app"
    answer = httpx.post(url, content=json.dumps(manifest), headers=JSON, verify=False)
    assert answer.status_code == 201
    again = httpx.post(url, content=json.dumps(manifest), headers=JSON, verify=False)
    assert again.status_code == 409
    assert again.json()["error"] == "manifest_conflict"


def test_garbage_and_plaintext_on_the_tls_port_do_not_hurt(api: CoordinatorProcess) -> None:
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05garbage", b""):
        with socket.create_connection(("127.0.0.1", api.mesh_port), timeout=5) as raw:
            raw.sendall(payload)
            raw.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                raw.recv(1024)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", api.mesh_port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
        answer = tls.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    assert api.status()["state"] == "active"


def test_openapi_document(api: CoordinatorProcess) -> None:
    doc = httpx.get(f"https://{api.client_addr}/api/v1/openapi.json", verify=False).json()
    assert doc["openapi"].startswith("3.")
    assert {
        "/api/v1/status",
        "/api/v1/manifest",
        "/api/v1/attestation",
        "/api/v1/certificates",
        "/api/v1/mesh/nonce",
        "/api/v1/mesh/activate",
    } <= set(doc["paths"])
    schema = doc["components"]["schemas"]["ActivateBody"]
    assert set(schema["required"]) == {"service", "nonce", "csr", "evidence"}
    assert schema["additionalProperties"] is False
