"""Manifest updates against a real Coordinator: a 2-of-3 update applies at the second
acknowledgement, a cancel discards one, and the rotated mesh CA cuts instances activated before
an update off from those activated after it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied, ClientError
from geode.pki import SpiffeId, certificate_pem, private_key_pem
from geode.protocol import UpdatePending
from geode.runtime import Activation, Credentials, activate, simulated_evidence_provider
from tests.support import CoordinatorProcess, geode_cli
from tests.support.governance import User, governance_manifest, make_user

pytestmark = pytest.mark.e2e

ADMIN = {"admin": {"resource": "manifest", "actions": ["update"]}}


def _root(c: CoordinatorProcess) -> x509.Certificate:
    with CoordinatorClient(c.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def _credentials(
    c: CoordinatorProcess, bundle: Path, env: dict[str, str], where: Path
) -> Credentials:
    """An instance of 'web', activated now, with its files as ``geode run`` lays them out."""
    platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
    provider = simulated_evidence_provider(platform, measure_bundle(bundle))
    activation: Activation = activate(c.mesh_addr, "web", provider, root=_root(c))
    where.mkdir(parents=True)
    (where / "cert.pem").write_text(
        "".join(certificate_pem(x) for x in activation.certificate_chain)
    )
    (where / "key.pem").write_bytes(private_key_pem(activation.private_key))
    (where / "ca.pem").write_text(certificate_pem(activation.mesh_ca))
    return Credentials(
        where / "cert.pem",
        where / "key.pem",
        where / "ca.pem",
        SpiffeId.parse(activation.spiffe_id),
    )


async def _reach(server: Credentials, client: Credentials) -> bool:
    """Does a mutual-TLS connection from ``client`` to ``server`` carry data?"""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server.server_ssl_context())
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client.client_ssl_context(None), server_hostname="web"
        )
        data = await reader.read(2)
        writer.close()
        return data == b"ok"
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        listener.close()


def reaches(server: Credentials, client: Credentials) -> bool:
    return asyncio.run(_reach(server, client))


def test_two_of_three_update_applies_at_the_second_acknowledgement(
    coordinator: CoordinatorProcess, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    u1, u2, u3 = (make_user(tmp_path / "users", f"u{i}") for i in (1, 2, 3))
    measurement = measure_bundle(bundle).hex()
    users = {u1: ["admin"], u2: ["admin"], u3: ["admin"]}
    first = governance_manifest(measurement, users, ADMIN, update_threshold=2)
    second = governance_manifest(
        measurement, users, ADMIN, update_threshold=2, secrets={"extra": {"type": "plain"}}
    )
    third = governance_manifest(measurement, users, ADMIN, update_threshold=2, trust_domain="x.y")
    root = _root(coordinator)
    with CoordinatorClient(coordinator.client_addr, root=root) as anonymous:
        anonymous.set_manifest(first)
    before = [_credentials(coordinator, bundle, geode_env, tmp_path / f"old{i}") for i in (1, 2)]

    (tmp_path / "root.pem").write_text(certificate_pem(root))
    (tmp_path / "second.json").write_bytes(second)
    base = ["--coordinator", coordinator.client_addr, "--root-ca", str(tmp_path / "root.pem")]

    def as_user(user: User) -> list[str]:
        return [*base, "--cert", str(user.cert), "--key", str(user.key)]

    proposed = geode_cli(
        "manifest", "update", "apply", str(tmp_path / "second.json"), *as_user(u1), env=geode_env
    )
    assert proposed.returncode == 0, proposed.stderr
    assert "pending: 1 of 2 acknowledgements (u1)" in proposed.stdout
    digest = hashlib.sha256(second).hexdigest()
    with u1.client(coordinator.client_addr, root) as client:
        again = client.acknowledge_update(digest)  # the proposer's acknowledgement counts once
    assert isinstance(again, UpdatePending)
    assert (again.applied, again.acknowledgements) == (False, ["u1"])
    assert coordinator.status()["manifest_sha256"] == hashlib.sha256(first).hexdigest()
    shown = geode_cli("manifest", "update", "get", *as_user(u3), env=geode_env)
    assert f"pending:          {digest}" in shown.stdout, shown.stderr

    applied = geode_cli(
        "manifest", "update", "acknowledge", str(tmp_path / "second.json"), *as_user(u2),
        env=geode_env,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "update applied" in applied.stdout
    assert coordinator.status()["manifest_sha256"] == digest

    # The mesh CA rotated: instances from before reach each other, not those from after.
    after = [_credentials(coordinator, bundle, geode_env, tmp_path / f"new{i}") for i in (1, 2)]
    assert reaches(before[0], before[1])
    assert reaches(after[0], after[1])
    assert not reaches(after[0], before[0])
    assert not reaches(before[0], after[0])

    # A cancelled update is discarded: nothing to acknowledge, the manifest unchanged.
    with u2.client(coordinator.client_addr, root) as client:
        pending = client.update(third)
        assert pending.applied is False
    with u3.client(coordinator.client_addr, root) as client:
        client.cancel_update(pending.sha256)
        assert client.pending_update() is None
    with u1.client(coordinator.client_addr, root) as client, pytest.raises(ClientError) as gone:
        client.acknowledge_update(pending.sha256)
    assert (gone.value.status, gone.value.code) == (409, "update_conflict")
    assert coordinator.status()["manifest_sha256"] == digest

    listed = geode_cli("manifest", "log", *as_user(u3), env=geode_env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["set", "manifest"]
    assert digest in lines[1]
    assert "by u1, u2" in lines[1]


def test_an_update_that_changes_nothing_is_refused_and_counts_survive_updates(
    coordinator: CoordinatorProcess, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    u1 = make_user(tmp_path / "users", "u1")
    roles = {**ADMIN, "pkg": {"resource": "packages", "names": ["tool"], "actions": ["update"]}}
    manifest = json.loads(
        governance_manifest(
            measure_bundle(bundle).hex(),
            {u1: ["admin", "pkg"]},
            roles,
            services={"web": {"package": "app", "max_activations": 1}},
        )
    )
    manifest["packages"]["tool"] = {"tee": "simulated", "measurement": "cd" * 32, "min_svn": 2}
    raw = json.dumps(manifest).encode()
    root = _root(coordinator)
    with CoordinatorClient(coordinator.client_addr, root=root) as anonymous:
        anonymous.set_manifest(raw)
    _credentials(coordinator, bundle, geode_env, tmp_path / "web")
    (tmp_path / "root.pem").write_text(certificate_pem(root))
    as_u1 = [
        *("--coordinator", coordinator.client_addr, "--root-ca", str(tmp_path / "root.pem")),
        *("--cert", str(u1.cert), "--key", str(u1.key)),
    ]

    def apply(name: str, content: bytes) -> subprocess.CompletedProcess[str]:
        (tmp_path / name).write_bytes(content)
        return geode_cli("manifest", "update", "apply", str(tmp_path / name), *as_u1, env=geode_env)

    def in_force() -> tuple[object, ...]:
        with CoordinatorClient(coordinator.client_addr, root=root) as client:
            mesh = client.certificates().mesh_ca
        status = coordinator.status()
        return status["manifest_sha256"], status["activations"], mesh

    before = in_force()
    assert before[1] == {"web": 1}
    for name, content, reason in [
        ("restate.yaml", b"packages:\n  tool: {min_svn: 2}\n", "packages.tool changes nothing"),
        ("same.json", raw, "it is the manifest in force"),
        ("layout.yaml", yaml.safe_dump(manifest).encode(), "only in layout"),
    ]:
        refused = apply(name, content)
        assert refused.returncode == 1, refused.stdout
        (line,) = refused.stderr.splitlines()  # one line, no traceback
        assert "changes nothing" in line, line
        assert reason in line, line
        assert in_force() == before  # no new manifest, no new mesh CA, counts as they were

    applied = apply("raise.yaml", b"packages:\n  tool: {min_svn: 3}\n")
    assert applied.returncode == 0, applied.stderr
    assert "update applied" in applied.stdout
    after = in_force()
    assert after[0] != before[0]
    assert after[2] != before[2]  # the update rotated the mesh CA...
    # ...but gave "web" no second activation.
    assert after[1] == {"web": 1}
    with pytest.raises(ActivationDenied, match="max_activations reached"):
        _credentials(coordinator, bundle, geode_env, tmp_path / "web-again")
