"""An update must change something, and activation counts are a service's history: the client
API in-process (the real handlers, transaction and governance, a ``MemoryStore``, a
``FakeClock``), with the user's client certificate as the TLS layer would hand it over."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import Coordinator, CoordinatorSettings, GroupCommit
from geode.pki import public_key_der
from geode.protocol import key_binding
from geode.testing import FakeClock, MemoryStore
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.simulated import simulated_tee
from tests.support.governance import User, make_user

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]

MEASUREMENT = bytes(range(32))
OTHER = "cd" * 32
ROLES = {
    "admin": {"resource": "manifest", "actions": ["update"]},
    "packages": {"resource": "packages", "names": ["app", "tool"], "actions": ["update"]},
}


def _manifest(user: User, *, threshold: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "trust_domain": "noop.geode.local",
        "packages": {
            "app": {"tee": "simulated", "measurement": MEASUREMENT.hex()},
            "tool": {"tee": "simulated", "measurement": OTHER, "min_svn": 2},
        },
        "services": {
            "web": {"package": "app", "max_activations": 1},
            "worker": {"package": "app"},
        },
        "users": {user.name: {"certificate": user.pem, "roles": ["admin", "packages"]}},
        "roles": ROLES,
        "updates": {"threshold": threshold},
        **extra,
    }


def _as_user(app: App, user: User) -> App:
    """``app`` behind a TLS layer that verified ``user``'s client certificate."""

    async def with_certificate(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {"tls": {"client_cert_chain": [user.pem]}}}
        await app(scope, receive, send)

    return with_certificate


class Deployment:
    """A Coordinator with ``_manifest`` set and a user who may update everything."""

    def __init__(self, tmp_path: Path, *, threshold: int = 1) -> None:
        self.platform = SimulatedPlatform.generate()
        self.user = make_user(tmp_path, "alice")
        self.coordinator = Coordinator(
            CoordinatorSettings(simulation=True),
            EvidenceVerifier(simulation=True, platform_keys=[self.platform.public_key]),
            simulated_tee(self.platform, MEASUREMENT),
            os.urandom(32),
            clock=FakeClock(),
        )
        self.coordinator.load(None)
        self.store = MemoryStore()
        self.client, self.mesh = in_process_apis(
            self.coordinator,
            GroupCommit(self.coordinator.sealed_state, self.store),
            wrap_client=lambda app: _as_user(app, self.user),
        )
        self.raw = json.dumps(_manifest(self.user, threshold=threshold)).encode()

    async def activate(self) -> httpx.Response:
        """An instance of "web" (SVN 1) asks for its identity."""
        key = ec.generate_private_key(ec.SECP256R1())
        nonce = bytes.fromhex((await self.mesh.post("/api/v1/mesh/nonce")).json()["nonce"])
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(key, hashes.SHA256())
        )
        binding = key_binding(public_key_der(key.public_key()), nonce)
        body = {
            "service": "web",
            "nonce": nonce.hex(),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "evidence": self.platform.quote(MEASUREMENT, binding, svn=1).to_json(),
        }
        return await self.mesh.post("/api/v1/mesh/activate", json=body)

    async def set_up(self) -> None:
        assert (await self.client.post("/api/v1/manifest", content=self.raw)).status_code == 201

    async def update(self, body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.post("/api/v1/update", content=content)

    def in_force(self) -> tuple[object, ...]:
        """Everything a refused update must leave as it was."""
        c = self.coordinator
        return (
            c.status().manifest_sha256,
            c.mesh_ca_certificate,
            c.status().activations,
            c.governance.audit_head(),
            len(c.governance.manifest_log()),
            c.governance.pending_update(),
            len(self.store.saved),
        )


def _refused(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "update_changes_nothing"
    for fragment in fragments:
        assert fragment in body["message"]


def test_a_package_update_that_restates_its_values_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        d = Deployment(tmp_path)
        await d.set_up()
        assert (await d.activate()).status_code == 200
        before = d.in_force()
        restating = [
            ({"tool": {"min_svn": 2}}, "packages.tool changes nothing: min_svn is already 2"),
            ({"app": {"measurement": MEASUREMENT.hex().upper()}}, "measurement is already"),
            ({"app": {"min_svn": 0}}, "min_svn is already 0"),  # none set admits any SVN
            ({"tool": {"min_svn": 2, "measurement": OTHER}}, "min_svn is already 2 and"),
            # Every package it names must change: the log would name this one as updated.
            ({"tool": {"min_svn": 3}, "app": {"min_svn": 0}}, "packages.app changes nothing"),
        ]
        for packages, message in restating:
            _refused(await d.update({"packages": packages}), message)
            assert d.in_force() == before, packages
        # What changes something still applies: the first one of the list, raised.
        applied = await d.update({"packages": {"tool": {"min_svn": 3}}})
        assert applied.status_code == 201, applied.text
        assert d.coordinator.mesh_ca_certificate != before[1]

    asyncio.run(scenario())


def test_a_manifest_update_that_means_the_manifest_in_force_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        d = Deployment(tmp_path)
        await d.set_up()
        before = d.in_force()
        sha = d.coordinator.status().manifest_sha256 or ""
        _refused(await d.update(d.raw), "it is the manifest in force", sha)
        # The same content as YAML, keys in another order, with comments and defaults spelt
        # out: another hash, the same manifest.
        as_yaml = "# the same deployment\n" + "\n".join(
            f"{key}: {json.dumps(value)}" for key, value in reversed(_manifest(d.user).items())
        )
        spelt_out = as_yaml + '\npolicies: {"mode": "strict", "rules": []}\n'
        for layout in (as_yaml.encode(), spelt_out.encode()):
            _refused(await d.update(layout), "only in layout")
            assert d.in_force() == before
        changed = _manifest(d.user, trust_domain="changed.geode.local")
        assert (await d.update(json.dumps(changed).encode())).status_code == 201

    asyncio.run(scenario())


def test_a_proposal_that_changes_nothing_is_refused_when_proposed(tmp_path: Path) -> None:
    async def scenario() -> None:
        d = Deployment(tmp_path, threshold=2)
        second = make_user(tmp_path, "bob")
        raw = _manifest(d.user, threshold=2)
        raw["users"]["bob"] = {"certificate": second.pem, "roles": ["admin"]}
        d.raw = json.dumps(raw).encode()
        await d.set_up()
        before = d.in_force()
        _refused(await d.update(d.raw), "it is the manifest in force")
        assert d.coordinator.governance.pending_update() is None
        assert d.in_force() == before
        # A proposal that changes something pends (202), acknowledged by its proposer.
        raw["trust_domain"] = "changed.geode.local"
        pending = await d.update(json.dumps(raw).encode())
        assert pending.status_code == 202, pending.text

    asyncio.run(scenario())


def test_activation_counts_survive_updates_and_only_removed_services_lose_theirs(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        d = Deployment(tmp_path)
        await d.set_up()
        assert (await d.activate()).status_code == 200
        assert d.coordinator.status().activations == {"web": 1}
        # An update of another package does not give "web" its max_activations back.
        applied = await d.update({"packages": {"tool": {"min_svn": 5}}})
        assert applied.status_code == 201, applied.text
        assert d.coordinator.status().activations == {"web": 1}
        denied = await d.activate()
        assert (denied.status_code, denied.json()["reason"]) == (403, "max_activations reached")
        # Nor does an update of its own package: the count is the service's, not the code's.
        assert (await d.update({"packages": {"app": {"min_svn": 1}}})).status_code == 201
        assert (await d.activate()).json()["reason"] == "max_activations reached"
        # A manifest update keeps the counts of the services it keeps; the limit is the
        # manifest's to raise.
        raised = _manifest(d.user)
        raised["services"]["web"]["max_activations"] = 2
        raised["packages"]["app"]["min_svn"] = 1
        raised["packages"]["tool"]["min_svn"] = 5
        assert (await d.update(json.dumps(raised).encode())).status_code == 201
        assert d.coordinator.status().activations == {"web": 1}
        assert (await d.activate()).status_code == 200
        assert (await d.activate()).json()["reason"] == "max_activations reached"
        # Only a service the update removes loses its count (it has no history to keep).
        del raised["services"]["web"]
        raised["services"]["worker"]["max_activations"] = 3
        assert (await d.update(json.dumps(raised).encode())).status_code == 201
        assert d.coordinator.status().activations == {}

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["package", "manifest"])
def test_a_refused_update_is_saved_nowhere_and_audited_nowhere(tmp_path: Path, kind: str) -> None:
    async def scenario() -> None:
        d = Deployment(tmp_path)
        await d.set_up()
        saved = list(d.store.saved)
        body: bytes | dict[str, Any] = (
            {"packages": {"tool": {"min_svn": 2}}} if kind == "package" else d.raw
        )
        _refused(await d.update(body))
        assert d.store.saved == saved
        events = [json.loads(line)["event"] for line in d.coordinator.audit_sink.read()]
        assert events == ["manifest.set"]

    asyncio.run(scenario())
