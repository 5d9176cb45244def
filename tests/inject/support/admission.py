"""Shared pieces of the webhook and chart tests: review bodies, patches applied, test TLS."""

from __future__ import annotations

import base64
import copy
import datetime
import importlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REVIEWS = Path(__file__).resolve().parents[1] / "reviews"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
"""Validated against: an old release still in support somewhere, and the newest the schemas know."""


def require(module: str, package: str) -> ModuleType:
    """Import a test tool; skip without it, except in CI, where its absence is a failure."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{package} is not installed: it is in pyproject's test extra")
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")


def review(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REVIEWS / f"{name}.json").read_text())
    return data


def pod_of(body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = body["request"]["object"]
    return pod


def with_pod(body: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["request"]["object"] = pod
    return changed


def patched(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The pod of ``body`` with the answer's JSONPatch applied, as the API server would."""
    jsonpatch = require("jsonpatch", "jsonpatch")
    response = answer["response"]
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod_of(body), operations)
    return result


def validate_pod(pod: dict[str, Any]) -> None:
    """The pod is a valid v1 Pod (strict: no unknown fields) for every version we support."""
    kubernetes_validate = require("kubernetes_validate", "kubernetes-validate")
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)


@dataclass(frozen=True)
class ServingFiles:
    ca: Path
    cert: Path
    key: Path


def write_serving_files(directory: Path, common_name: str = "geode-webhook") -> ServingFiles:
    """A test CA and a serving certificate for localhost / 127.0.0.1 that it issued."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA of {common_name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = ServingFiles(directory / "ca.pem", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
