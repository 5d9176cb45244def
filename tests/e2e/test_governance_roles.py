"""Users and roles against a real Coordinator: each role allows exactly what it grants, every
other call is refused (401/403, typed) and logged; user-defined secrets reach services on their
next activation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied, ClientError
from geode.pki import certificate_pem
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.support import CoordinatorProcess, geode_cli
from tests.support.governance import governance_manifest, make_user

pytestmark = pytest.mark.e2e

ROLES = {
    "notes-rw": {"resource": "secrets", "names": ["note"], "actions": ["read", "write"]},
    "notes-r": {"resource": "secrets", "names": ["note"], "actions": ["read"]},
    "keys-w": {"resource": "secrets", "names": ["ukey"], "actions": ["write"]},
    "shared-r": {"resource": "secrets", "names": ["api_token", "tls"], "actions": ["read"]},
    "packager": {"resource": "packages", "names": ["app"], "actions": ["update"]},
    "admin": {"resource": "manifest", "actions": ["update"]},
}
GRANTS = {
    "alice": ["notes-rw", "shared-r"],
    "bob": ["notes-r", "keys-w"],
    "carol": ["packager"],
    "dave": [],
    "erin": ["admin"],
}
SECRETS = {
    "note": {"type": "plain"},
    "ukey": {"type": "symmetric-key", "size": 256, "user_defined": True},
    "api_token": {"type": "symmetric-key", "size": 128, "shared": True},
    "db_key": {"type": "symmetric-key"},
    "tls": {"type": "cert-ecdsa", "shared": True},
    "own": {"type": "cert-ecdsa"},
}
SERVICES = {
    "web": {"package": "app", "env": {"NOTE": "{{ secrets.note | hex }}"}},
    "worker": {
        "package": "app",
        "env": {"KEY": "{{ secrets.ukey | hex }}"},
        "files": {
            "own.pem": "{{ secrets.own.cert | pem }}",
            "db.key": "{{ secrets.db_key | raw }}",
        },
    },
}


def _root(c: CoordinatorProcess) -> x509.Certificate:
    with CoordinatorClient(c.client_addr, insecure=True) as client:
        return x509.load_pem_x509_certificate(client.certificates().root.encode())


def _activate(c: CoordinatorProcess, bundle: Path, env: dict[str, str], service: str) -> Activation:
    platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
    provider = simulated_evidence_provider(platform, measure_bundle(bundle))
    return activate(c.mesh_addr, service, provider, root=_root(c))


def _refused(call: Callable[[], object]) -> tuple[int | None, str | None]:
    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.status, refused.value.code


def test_each_role_allows_exactly_what_it_grants(
    coordinator: CoordinatorProcess, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    users = {name: make_user(tmp_path / "users", name) for name in GRANTS}
    measurement = measure_bundle(bundle).hex()
    manifest = governance_manifest(
        measurement,
        {users[name]: roles for name, roles in GRANTS.items()},
        ROLES,
        secrets=SECRETS,
        services=SERVICES,
    )
    root = _root(coordinator)
    with CoordinatorClient(coordinator.client_addr, root=root) as anonymous:
        anonymous.set_manifest(manifest)

    package_update = b'{"packages": {"app": {"min_svn": 1}}}'  # a change: 0 would restate
    manifest_update = manifest.replace(b"gov.geode.local", b"gov2.geode.local")
    calls: dict[str, Callable[[CoordinatorClient], object]] = {
        "read note": lambda c: c.get_secret("note"),
        "write note": lambda c: c.set_secret("note", b"hello"),
        "read ukey": lambda c: c.get_secret("ukey"),
        "write ukey": lambda c: c.set_secret("ukey", bytes(range(32))),
        "read api_token": lambda c: c.get_secret("api_token"),
        "read tls": lambda c: c.get_secret("tls"),
        "write api_token": lambda c: c.set_secret("api_token", bytes(16)),
        "read db_key": lambda c: c.get_secret("db_key"),
        "read own": lambda c: c.get_secret("own"),
        "update package": lambda c: c.update(package_update),
        "update manifest": lambda c: c.update(manifest_update),
    }
    allowed = {
        ("alice", "read note"),
        ("alice", "write note"),
        ("alice", "read api_token"),
        ("alice", "read tls"),
        ("bob", "read note"),
        ("bob", "write ukey"),
        ("carol", "update package"),
        ("erin", "update manifest"),
    }

    # Before any user-defined secret is set: a plain one is empty, a typed one refuses.
    assert _activate(coordinator, bundle, geode_env, "web").env["NOTE"] == b""
    with pytest.raises(ActivationDenied, match="secret not set") as denied:
        _activate(coordinator, bundle, geode_env, "worker")
    assert denied.value.detail == "ukey"

    denials = 0
    clients = {name: u.client(coordinator.client_addr, root) for name, u in users.items()}
    # The updates rotate the mesh CA: run them last.
    for action in sorted(calls, key=lambda a: a.startswith("update")):
        for name, client in clients.items():
            if (name, action) in allowed:
                calls[action](client)
            else:
                call = calls[action]
                refusal = _refused(lambda call=call, client=client: call(client))
                assert refusal == (403, "permission_denied"), (name, action)
                denials += 1
    for client in clients.values():
        client.close()
    assert coordinator.log().count("refused: user ") == denials

    with users["bob"].client(coordinator.client_addr, root) as bob:
        assert _refused(lambda: bob.set_secret("ukey", b"short")) == (400, "secret_invalid")
        assert bob.get_secret("note") == b"hello"
    # A service activated before the secrets were set gets them on its next activation.
    assert _activate(coordinator, bundle, geode_env, "web").env["NOTE"] == b"hello".hex().encode()
    worker = _activate(coordinator, bundle, geode_env, "worker")
    assert worker.env["KEY"] == bytes(range(32)).hex().encode()

    # No certificate: 401. A certificate the root issued but no user's: 401 as well.
    with CoordinatorClient(coordinator.client_addr, root=root) as anonymous:
        assert _refused(lambda: anonymous.get_secret("note")) == (401, "authentication_required")
    with users["alice"].client(coordinator.client_addr, root) as alice:
        (tmp_path / "tls.pem").write_bytes(alice.get_secret("tls"))
    with CoordinatorClient(
        coordinator.client_addr, root=root, identity=(tmp_path / "tls.pem", tmp_path / "tls.pem")
    ) as holder:
        assert _refused(lambda: holder.get_secret("api_token")) == (401, "unknown_user")
    # A certificate that chains to nothing the Coordinator knows ends in the handshake.
    mallory = make_user(tmp_path / "users", "mallory")
    with mallory.client(coordinator.client_addr, root) as stranger:
        assert _refused(lambda: stranger.get_secret("note")) == (None, "certificate_refused")
    log = coordinator.log()
    assert "refused: this call needs the client certificate" in log
    assert "is no user's of this deployment" in log
    assert "TLS handshake refused a client certificate" in log
    assert "hello" not in log
    assert bytes(range(32)).hex() not in log

    with users["dave"].client(coordinator.client_addr, root) as dave:
        kinds = [u.kind for u in dave.manifest_log()]
    assert kinds == ["set", "package", "manifest"]


def test_secret_commands(
    coordinator: CoordinatorProcess, bundle: Path, geode_env: dict[str, str], tmp_path: Path
) -> None:
    alice = make_user(tmp_path / "users", "alice")
    manifest = governance_manifest(
        measure_bundle(bundle).hex(),
        {alice: ["notes-rw", "shared-r"]},
        {k: ROLES[k] for k in ("notes-rw", "shared-r")},
        secrets=SECRETS,
        services=SERVICES,
    )
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "root.pem").write_bytes(certificate_pem(_root(coordinator)).encode())
    address = ["--coordinator", coordinator.client_addr, "--root-ca", str(tmp_path / "root.pem")]
    who = ["--cert", str(alice.cert), "--key", str(alice.key)]
    geode_cli(
        "manifest", "set", str(tmp_path / "manifest.json"), *address, env=geode_env, check=True
    )
    (tmp_path / "note.txt").write_bytes(b"\x00note\xff")
    done = geode_cli(
        "secret", "set", "note", str(tmp_path / "note.txt"), *address, *who, env=geode_env
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "token.bin"
    got = geode_cli("secret", "get", "api_token", "-o", str(out), *address, *who, env=geode_env)
    assert got.returncode == 0, got.stderr
    assert len(out.read_bytes()) == 16
    assert out.stat().st_mode & 0o777 == 0o600
    with alice.client(coordinator.client_addr, _root(coordinator)) as client:
        assert client.get_secret("note") == b"\x00note\xff"
    refused = geode_cli("secret", "get", "db_key", *address, *who, env=geode_env)
    assert refused.returncode == 1
    assert "may not read secret 'db_key'" in refused.stderr
    assert base64.b64encode(b"note").decode() not in refused.stderr
