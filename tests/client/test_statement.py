"""geode.client: verifying a deployment statement from a real, in-process Coordinator."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from geode.attestation import EvidenceVerifier, ReferenceValues, SimulatedPlatform
from geode.client import statement_manifest, verify_statement
from geode.coordinator import Coordinator, CoordinatorSettings
from geode.errors import StatementError
from geode.pki import LeafParams, certificate_pem, fingerprint
from geode.protocol import DeploymentStatement
from tests.coordinator.support.simulated import simulated_tee

NONCE = bytes(range(32))


def manifest_bytes(trust_domain: str = "test.geode.local") -> bytes:
    manifest = {
        "version": 1,
        "trust_domain": trust_domain,
        "packages": {"app": {"tee": "simulated", "measurement": "ab" * 32}},
        "services": {
            "web": {"package": "app", "env": {"TOKEN": "{{ secrets.token | hex }}"}},
        },
        "secrets": {"token": {"type": "symmetric-key", "size": 128}},
    }
    return json.dumps(manifest, indent=2).encode()


@dataclass(frozen=True)
class Deployment:
    coordinator: Coordinator
    platform: SimulatedPlatform
    measurement: bytes
    manifest: bytes

    @property
    def reference(self) -> ReferenceValues:
        return ReferenceValues(tee="simulated", measurement=self.measurement.hex())

    def statement(self, nonce: bytes = NONCE) -> dict[str, Any]:
        """The statement as it travels (JSON), free to tamper with."""
        return self.coordinator.statement(nonce).to_json()


def start(manifest: bytes | None, platform: SimulatedPlatform | None = None) -> Deployment:
    """A Coordinator in this process, with a fresh root of trust and (optionally) a manifest."""
    platform = platform or SimulatedPlatform.generate()
    measurement = os.urandom(32)
    coordinator = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, measurement),
        os.urandom(32),
    )
    coordinator.load(None)
    if manifest is not None:
        coordinator.set_manifest(manifest)
    return Deployment(coordinator, platform, measurement, manifest or b"")


@functools.cache
def deployment() -> Deployment:
    return start(manifest_bytes())


@functools.cache
def other_deployment() -> Deployment:
    """A second Coordinator on the same simulated platform, with the same manifest."""
    return start(manifest_bytes(), deployment().platform)


def verify(
    statement: Any,
    *,
    nonce: bytes | None = NONCE,
    against: Deployment | None = None,
) -> Any:
    d = against or deployment()
    return verify_statement(
        DeploymentStatement.from_json(statement),
        reference=d.reference,
        platform_keys=[d.platform.public_key],
        nonce=nonce,
    )


def statement() -> dict[str, Any]:
    """A fresh copy of the deployment's statement, free to tamper with."""
    return copy.deepcopy(deployment().statement())


def refused(statement: Any, fragment: str, **kwargs: Any) -> StatementError:
    with pytest.raises(StatementError) as info:
        verify(statement, **kwargs)
    assert fragment in str(info.value), str(info.value)
    return info.value


# -- what a good statement proves --------------------------------------------------------------


def test_statement_verifies() -> None:
    d = deployment()
    verified = verify(d.statement())
    assert verified.root == d.coordinator.root_certificate
    assert verified.mesh_ca == d.coordinator.mesh_ca_certificate
    assert verified.manifest_sha256 == hashlib.sha256(d.manifest).digest()
    assert verified.claims.measurement == d.measurement
    assert verified.claims.tee == "simulated"
    assert verified.simulation is True
    assert verified.state == "active"


def test_root_fingerprint_is_the_sha256_of_the_root_der() -> None:
    verified = verify(statement())
    assert verified.root_fingerprint == fingerprint(deployment().coordinator.root_certificate)


def test_statement_survives_a_json_round_trip() -> None:
    wire = json.loads(json.dumps(deployment().statement()))
    assert verify(wire).manifest_sha256 == hashlib.sha256(deployment().manifest).digest()


def test_offline_verification_without_a_nonce() -> None:
    other_nonce = os.urandom(32)
    assert verify(deployment().statement(other_nonce), nonce=None).state == "active"


def test_statement_before_the_manifest_is_set() -> None:
    d = start(None)
    verified = verify(d.statement(), against=d)
    assert verified.manifest_sha256 is None
    assert verified.state == "awaiting-manifest"


def test_statement_fields() -> None:
    s = statement()
    assert s["version"] == 1
    assert s["nonce"] == NONCE.hex()
    assert s["simulation"] is True
    assert s["manifest_sha256"] == hashlib.sha256(deployment().manifest).hexdigest()
    assert s["evidence"]["kind"] == "simulated"


# -- what a statement must not get away with ---------------------------------------------------


def test_wrong_measurement_is_refused() -> None:
    with pytest.raises(StatementError, match="measurement mismatch"):
        verify_statement(
            DeploymentStatement.from_json(statement()),
            reference=ReferenceValues(tee="simulated", measurement="00" * 32),
            platform_keys=[deployment().platform.public_key],
            nonce=NONCE,
        )


def test_wrong_tee_is_refused() -> None:
    with pytest.raises(StatementError, match="tee mismatch"):
        verify_statement(
            DeploymentStatement.from_json(statement()),
            reference=ReferenceValues(tee="sgx", measurement=deployment().measurement.hex()),
            platform_keys=[deployment().platform.public_key],
            nonce=NONCE,
        )


def test_debug_coordinator_is_refused_unless_allowed() -> None:
    d = deployment()
    s = statement()
    s["evidence"] = d.platform.quote(
        d.measurement,
        base64.b64decode(s["evidence"]["data"])[80:144],
        debug=True,
    ).to_json()
    refused(s, "debug mode not allowed")


def test_wrong_nonce_is_refused() -> None:
    refused(statement(), "another nonce", nonce=os.urandom(32))


def test_rewritten_nonce_is_refused() -> None:
    # An attacker replays an old statement and rewrites its nonce to the caller's.
    fresh = os.urandom(32)
    s = statement()
    s["nonce"] = fresh.hex()
    refused(s, "not bound", nonce=fresh)


def test_untrusted_platform_key_is_refused() -> None:
    with pytest.raises(StatementError, match="platform_key_id"):
        verify_statement(
            DeploymentStatement.from_json(statement()),
            reference=deployment().reference,
            platform_keys=[SimulatedPlatform.generate().public_key],
            nonce=NONCE,
        )


def test_no_platform_key_is_refused() -> None:
    with pytest.raises(StatementError, match="untrusted"):
        verify_statement(
            DeploymentStatement.from_json(statement()),
            reference=deployment().reference,
            nonce=NONCE,
        )


def test_swapped_root_certificate_is_refused() -> None:
    s = statement()
    other = other_deployment().coordinator
    s["root_certificate"] = certificate_pem(other.root_certificate)
    refused(s, "not bound to this root certificate")


def test_swapped_root_and_mesh_ca_is_refused() -> None:
    # A consistent chain from another Coordinator: only the evidence binding catches it.
    s = statement()
    other = other_deployment().coordinator
    s["root_certificate"] = certificate_pem(other.root_certificate)
    s["mesh_ca_certificate"] = certificate_pem(other.mesh_ca_certificate)
    refused(s, "not bound")


def test_swapped_mesh_ca_is_refused() -> None:
    s = statement()
    s["mesh_ca_certificate"] = certificate_pem(other_deployment().coordinator.mesh_ca_certificate)
    refused(s, "mesh CA certificate is not issued by the root certificate")


def test_a_whole_statement_from_another_coordinator_is_refused() -> None:
    # Same platform, same manifest, different root of trust and measurement.
    other = other_deployment()
    with pytest.raises(StatementError, match="measurement mismatch"):
        verify(other.statement())


def test_tampered_manifest_hash_is_refused() -> None:
    s = statement()
    digest = bytearray(bytes.fromhex(s["manifest_sha256"]))
    digest[0] ^= 0x01
    s["manifest_sha256"] = digest.hex()
    refused(s, "not bound")


def test_manifest_hash_of_another_manifest_is_refused() -> None:
    s = statement()
    s["manifest_sha256"] = hashlib.sha256(manifest_bytes("other.geode.local")).hexdigest()
    refused(s, "not bound")


def test_removed_manifest_hash_is_refused() -> None:
    s = statement()
    s["manifest_sha256"] = None
    refused(s, "not bound")


@pytest.mark.parametrize(("value", "fragment"), [("zz", "not hex"), ("abcd", "not a SHA-256")])
def test_malformed_manifest_hash_is_refused(value: str, fragment: str) -> None:
    s = statement()
    s["manifest_sha256"] = value
    refused(s, fragment)


def test_tampered_manifest_signature_is_refused() -> None:
    s = statement()
    signature = bytearray(base64.b64decode(s["manifest_signature"]))
    signature[-1] ^= 0x01
    s["manifest_signature"] = base64.b64encode(bytes(signature)).decode()
    refused(s, "manifest signature does not verify with the root key")


def test_root_signature_over_another_manifest_is_refused() -> None:
    # A valid root signature, but over a different digest.
    key = deployment().coordinator.root_authority.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    other = hashlib.sha256(b"another manifest").digest()
    s = statement()
    signature = key.sign(other, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    s["manifest_signature"] = base64.b64encode(signature).decode()
    refused(s, "does not verify")


def test_another_coordinators_manifest_signature_is_refused() -> None:
    # Same manifest bytes, so the same hash, but signed by another root.
    s = statement()
    s["manifest_signature"] = other_deployment().statement()["manifest_signature"]
    refused(s, "does not verify")


@pytest.mark.parametrize(
    ("value", "fragment"), [(None, "missing"), (12, "missing"), ("!!!", "not base64")]
)
def test_missing_or_malformed_manifest_signature_is_refused(value: Any, fragment: str) -> None:
    s = statement()
    s["manifest_signature"] = value
    refused(s, fragment)


def test_tampered_evidence_is_refused() -> None:
    s = statement()
    data = bytearray(base64.b64decode(s["evidence"]["data"]))
    data[100] ^= 0x01  # inside the report data
    s["evidence"]["data"] = base64.b64encode(bytes(data)).decode()
    refused(s, "coordinator evidence")


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"nonce": None},
        {"nonce": "xyz"},
        {"root_certificate": None},
        {"root_certificate": "garbage"},
        {"mesh_ca_certificate": "garbage"},
        {"evidence": None},
        {"evidence": {"kind": "sgx", "data": ""}},
        {"evidence": {"kind": "simulated", "data": "!!"}},
    ],
)
def test_malformed_statements_are_refused(change: dict[str, Any]) -> None:
    s = statement()
    s.update(change)
    with pytest.raises(StatementError):
        verify(s)


@pytest.mark.parametrize("value", [None, [], "statement", 1])
def test_non_statements_are_refused(value: Any) -> None:
    refused(value, "not a version 1 deployment statement")


# -- statement_manifest: the manifest hash under an already pinned root ------------------------


def test_statement_manifest_returns_the_hash_for_the_pinned_root() -> None:
    d = deployment()
    digest = statement_manifest(
        DeploymentStatement.from_json(d.statement()),
        root=d.coordinator.root_certificate,
        nonce=NONCE,
    )
    assert digest == hashlib.sha256(d.manifest).digest()


def test_statement_manifest_is_none_before_the_manifest_is_set() -> None:
    d = start(None)
    assert statement_manifest(
        DeploymentStatement.from_json(d.statement()),
        root=d.coordinator.root_certificate,
        nonce=NONCE,
    ) is (None)


def test_statement_manifest_refuses_another_root() -> None:
    with pytest.raises(StatementError, match="another root certificate than the pinned one"):
        statement_manifest(
            DeploymentStatement.from_json(statement()),
            root=other_deployment().coordinator.root_certificate,
            nonce=NONCE,
        )


def test_statement_manifest_refuses_a_statement_of_another_coordinator() -> None:
    with pytest.raises(StatementError, match="pinned"):
        statement_manifest(
            DeploymentStatement.from_json(other_deployment().statement()),
            root=deployment().coordinator.root_certificate,
            nonce=NONCE,
        )


def test_statement_manifest_refuses_another_nonce() -> None:
    with pytest.raises(StatementError, match="another nonce"):
        statement_manifest(
            DeploymentStatement.from_json(statement()),
            root=deployment().coordinator.root_certificate,
            nonce=os.urandom(32),
        )


def test_statement_manifest_refuses_a_tampered_hash() -> None:
    s = statement()
    s["manifest_sha256"] = hashlib.sha256(b"another manifest").hexdigest()
    with pytest.raises(StatementError, match="does not verify"):
        statement_manifest(
            DeploymentStatement.from_json(s),
            root=deployment().coordinator.root_certificate,
            nonce=NONCE,
        )


def test_statement_manifest_refuses_a_tampered_signature() -> None:
    s = statement()
    s["manifest_signature"] = other_deployment().statement()["manifest_signature"]
    with pytest.raises(StatementError, match="does not verify"):
        statement_manifest(
            DeploymentStatement.from_json(s),
            root=deployment().coordinator.root_certificate,
            nonce=NONCE,
        )


def test_statement_manifest_refuses_garbage() -> None:
    root = deployment().coordinator.root_certificate
    with pytest.raises(StatementError):
        statement_manifest(
            DeploymentStatement.from_json({"version": 1, "nonce": NONCE.hex()}),
            root=root,
            nonce=NONCE,
        )
    with pytest.raises(StatementError):
        statement_manifest(DeploymentStatement.from_json(None), root=root, nonce=NONCE)


# -- found while writing these tests -----------------------------------------------------------


@pytest.mark.parametrize("value", ["abcd", ""], ids=["short", "empty"])
def test_statement_manifest_refuses_a_hash_of_the_wrong_length(value: str) -> None:
    # Bug: unlike verify_statement, statement_manifest does not check the digest length, and
    # the prehashed ECDSA verify raises ValueError instead of a StatementError.
    s = statement()
    s["manifest_sha256"] = value
    with pytest.raises(StatementError):
        statement_manifest(
            DeploymentStatement.from_json(s),
            root=deployment().coordinator.root_certificate,
            nonce=NONCE,
        )


def test_root_certificate_that_is_not_utf8_encodable_is_a_statement_error() -> None:
    # Bug: load_certificate encodes the str outside its try block; a JSON statement carrying
    # "\ud800" makes verify_statement raise UnicodeEncodeError instead of StatementError.
    s = statement()
    s["root_certificate"] = "\ud800"
    with pytest.raises(StatementError):
        verify(s)


def root_itself(d: Deployment) -> str:
    return certificate_pem(d.coordinator.root_certificate)


def leaf_of_the_root(d: Deployment) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    params = LeafParams(public_key=key.public_key(), common_name="not a CA")
    return certificate_pem(d.coordinator.root_authority.issue(params))


def another_mesh_ca_of_the_root(d: Deployment) -> str:
    """What a stale (rotated-out) mesh CA looks like: a real intermediate of the same root."""
    return certificate_pem(d.coordinator.root_authority.create_intermediate("old mesh").certificate)


@pytest.mark.parametrize(
    "replacement", [root_itself, leaf_of_the_root, another_mesh_ca_of_the_root]
)
def test_a_root_signed_certificate_that_is_not_the_mesh_ca_is_refused(
    replacement: Callable[[Deployment], str],
) -> None:
    # The root signs (nonce, manifest hash, mesh CA) in every statement, so neither the root
    # itself, nor a leaf it issued, nor another intermediate of it passes as the mesh CA.
    s = statement()
    s["mesh_ca_certificate"] = replacement(deployment())
    with pytest.raises(StatementError):
        verify(s)
