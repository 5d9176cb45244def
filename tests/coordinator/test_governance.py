"""Governance in-process: users' secrets, package and manifest updates, the audit chain, recovery
from shares, and the state and header formats that carry them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import Evidence, EvidenceVerifier, ReferenceValues, SimulatedPlatform
from geode.client import prepare_share_upload, verify_audit_log, verify_recovery_offer
from geode.coordinator import (
    ActivationRequest,
    Coordinator,
    CoordinatorSettings,
    CoordinatorState,
    GroupCommit,
    Pending,
    Sealer,
    State,
    Transaction,
)
from geode.coordinator._updates import PackageUpdate, apply_package_update
from geode.errors import (
    ActivationDenied,
    ManifestError,
    PermissionDenied,
    RecoveryRefused,
    SealError,
    SecretRejected,
    StatementError,
    UpdateConflict,
)
from geode.manifest import load_manifest
from geode.pki import (
    CertificateAuthority,
    LeafParams,
    certificate_pem,
    generate_private_key,
    private_key_pem,
    public_key_der,
)
from geode.protocol import RecoveryProgress, key_binding
from geode.testing import MemoryStore
from tests.coordinator.support.simulated import simulated_tee
from tests.support.governance import Party, User, governance_manifest, make_party, make_user

MEASUREMENT = bytes(range(32))


@pytest.fixture(scope="module")
def platform() -> SimulatedPlatform:
    return SimulatedPlatform.generate()


def _coordinator(platform: SimulatedPlatform, key: bytes, blob: bytes | None = None) -> Coordinator:
    c = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        key,
    )
    c.load(blob)
    return c


SECRETS = {
    "note": {"type": "plain"},
    "ukey": {"type": "symmetric-key", "size": 128, "user_defined": True},
    "ucert": {"type": "cert-ecdsa", "user_defined": True},
    "token": {"type": "symmetric-key", "shared": True},
    "db_key": {"type": "symmetric-key"},
}
ROLES = {"admin": {"resource": "manifest", "actions": ["update"]}}


@pytest.fixture
def alice(tmp_path: Path) -> User:
    return make_user(tmp_path, "alice")


def _manifest(user: User, **extra: object) -> bytes:
    services = {
        "web": {
            "package": "app",
            "env": {"KEY": "{{ secrets.ukey | hex }}"},
            "files": {"c.pem": "{{ secrets.ucert.cert | pem }}"},
        }
    }
    return governance_manifest(
        MEASUREMENT.hex(), {user: ["admin"]}, ROLES, secrets=SECRETS, services=services, **extra
    )


def _activation(c: Coordinator, platform: SimulatedPlatform) -> ActivationRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    nonce, _ = c.activation.issue_nonce()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web")]))
        .sign(key, hashes.SHA256())
    )
    evidence: Evidence = platform.quote(
        MEASUREMENT, key_binding(public_key_der(key.public_key()), nonce)
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    return ActivationRequest("web", nonce, pem, evidence)


def _certificate_pem(kind: str = "ecdsa") -> tuple[bytes, bytes]:
    root = CertificateAuthority.create_root("Somebody's CA")
    key = generate_private_key(kind)
    cert = root.issue(LeafParams(public_key=key.public_key(), common_name="x"))
    return certificate_pem(cert).encode(), private_key_pem(key)


# -- secrets -----------------------------------------------------------------------------------


def test_typed_user_secrets_refuse_activation_until_set(
    platform: SimulatedPlatform, alice: User
) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    with pytest.raises(ActivationDenied, match="secret not set"):
        c.activation.activate(_activation(c, platform))
    c.governance.write_secret("alice", "ukey", bytes(range(16)))
    with pytest.raises(ActivationDenied, match=r"secret not set \(ucert\)"):
        c.activation.activate(_activation(c, platform))
    cert, key = _certificate_pem()
    c.governance.write_secret("alice", "ucert", key + cert)  # either order in the PEM file
    result = c.activation.activate(_activation(c, platform)).value
    assert result.env["KEY"] == bytes(range(16)).hex().encode()
    assert result.files["c.pem"] == cert
    assert "private_key" not in result.secrets["ucert"].to_json()  # the template reads .cert only


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ukey", b"short", "exactly 16 bytes"),
        ("ucert", b"not pem", "certificate and its private key"),
        ("ucert", b"ED25519", "takes a cert-ecdsa key of 256 bits"),
        ("ucert", b"MISMATCH", "does not match the certificate"),
        ("note", b"x" * (32 * 1024 + 1), "larger than"),
    ],
)
def test_values_that_do_not_fit_the_type_are_refused(
    platform: SimulatedPlatform, alice: User, name: str, value: bytes, message: str
) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    if value == b"ED25519":
        cert, key = _certificate_pem("ed25519")
        value = cert + key
    elif value == b"MISMATCH":
        cert, _ = _certificate_pem()
        value = cert + _certificate_pem()[1]
    head = c.governance.audit_head()
    with pytest.raises(SecretRejected, match=message) as refused:
        c.governance.write_secret("alice", name, value)
    assert "short" not in str(refused.value)  # errors never quote the value
    assert c.governance.audit_head() == head


def test_only_shared_or_user_defined_secrets_reach_users(
    platform: SimulatedPlatform, alice: User
) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    with pytest.raises(PermissionDenied, match="never handed to users"):
        c.governance.read_secret("db_key")
    with pytest.raises(PermissionDenied, match="not user-defined"):
        c.governance.write_secret("alice", "token", bytes(32))
    spec, stored = c.governance.read_secret("token")
    assert (spec.type, len(stored.value)) == ("symmetric-key", 32)


def test_an_unsaved_secret_write_is_undone(platform: SimulatedPlatform, alice: User) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    store = MemoryStore()
    transaction = Transaction(c.held, GroupCommit(c.sealed_state, store), c.audit_sink)

    async def write(value: bytes) -> None:
        async def change() -> Pending[None]:
            return c.governance.write_secret("alice", "note", value)

        await transaction.govern(change)

    asyncio.run(write(b"first"))
    head = c.governance.audit_head()
    store.fail = True
    with pytest.raises(SealError):
        asyncio.run(write(b"second"))
    assert c.governance.read_secret("note")[1].value == b"first"
    assert c.governance.audit_head() == head
    assert c.held.unflushed_audit() == ()
    lines = c.audit_sink.read()
    assert [json.loads(line)["event"] for line in lines] == ["manifest.set", "secret.write"]


# -- updates -----------------------------------------------------------------------------------


def test_package_updates_raise_min_svn_or_replace_a_measurement() -> None:
    raw = json.dumps(
        {
            "version": 1,
            "trust_domain": "u.local",
            "packages": {
                "a": {"tee": "simulated", "measurement": "11" * 32},
                "b": {"tee": "sgx", "signer": "22" * 32, "product_id": 1, "min_svn": 3},
            },
        }
    ).encode()
    manifest = load_manifest(raw).manifest

    def apply(update: object) -> dict[str, object]:
        new = apply_package_update(raw, manifest, PackageUpdate.parse(update))
        return json.loads(new)["packages"]  # type: ignore[no-any-return]

    assert apply({"packages": {"a": {"measurement": "AB" * 32}}})["a"] == {
        "tee": "simulated",
        "measurement": "ab" * 32,
    }
    assert apply({"packages": {"b": {"min_svn": 4}}})["b"]["min_svn"] == 4  # type: ignore[index]
    for update, path, message in [
        ({"packages": {"b": {"min_svn": 2}}}, "packages.b.min_svn", "can only be raised"),
        ({"packages": {"b": {"measurement": "33" * 32}}}, "packages.b.measurement", "measurement"),
        ({"packages": {"c": {"min_svn": 1}}}, "packages.c", "unknown package"),
        ({"packages": {"a": {}}}, "packages.a", "give a new"),
        ({"packages": {"a": {"measurement": "zz"}}}, "packages.a", "hex"),
        ({"packages": {"a": {"debug": True}}}, "packages.a.debug", "unknown field"),
    ]:
        with pytest.raises(ManifestError, match=message) as refused:
            apply(update)
        assert refused.value.path == path


def test_a_manifest_update_rotates_the_mesh_ca_and_keeps_what_it_can(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    bob = make_user(tmp_path, "bob")
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    c.governance.write_secret("alice", "ukey", bytes(16))
    c.governance.write_secret("alice", "note", b"kept")
    c.governance.write_secret("alice", "ucert", b"".join(_certificate_pem()))
    token = c.governance.read_secret("token")[1].value
    c.activation.activate(_activation(c, platform))
    root, mesh = c.root_certificate, c.mesh_ca_certificate

    changed = {**SECRETS, "ukey": {"type": "symmetric-key", "size": 256, "user_defined": True}}
    new_raw = governance_manifest(
        MEASUREMENT.hex(),
        {alice: ["admin"], bob: ["admin"]},
        ROLES,
        secrets=changed,
        services={"web": {"package": "app"}},
        update_threshold=2,
    )
    proposal = c.governance.propose_update("alice", load_manifest(new_raw))
    assert c.governance.acknowledgements_after("alice") == 1 < c.governance.manifest_threshold() + 1
    applied = c.governance.adopt_update(
        c.governance.prepare_update(new_raw), kind="manifest", users=["alice"]
    )
    assert applied.value.applied is True
    assert c.root_certificate == root
    assert c.mesh_ca_certificate != mesh
    assert c.status().activations == {"web": 1}  # a kept service keeps its history
    assert c.governance.read_secret("note")[1].value == b"kept"  # unchanged specification: kept
    assert c.governance.read_secret("token")[1].value == token
    assert c.governance.read_secret("ukey")[1].value == b""  # a changed specification starts afresh
    assert c.governance.pending_update() is None
    assert c.governance.manifest_threshold() == 2
    # Undone (as when the write fails): the old manifest, mesh CA and pending update are back.
    applied.revert()
    proposal.revert()
    assert c.mesh_ca_certificate == mesh
    assert c.governance.manifest_threshold() == 1
    assert [u.kind for u in c.governance.manifest_log()] == ["set"]


def test_acknowledgements_cancel_and_stale_proposals(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    bob = make_user(tmp_path, "bob")
    c = _coordinator(platform, os.urandom(32))
    base = governance_manifest(
        MEASUREMENT.hex(),
        {alice: ["admin", "pkg"], bob: ["admin"]},
        {**ROLES, "pkg": {"resource": "packages", "names": ["app"], "actions": ["update"]}},
    )
    c.set_manifest(base)
    proposed = base.replace(b"gov.geode.local", b"other.geode.local")
    digest = load_manifest(proposed).sha256
    c.governance.propose_update("alice", load_manifest(proposed))
    with pytest.raises(UpdateConflict, match="pending"):
        c.governance.propose_update("bob", load_manifest(proposed))
    with pytest.raises(UpdateConflict, match="not"):
        c.governance.acknowledge_update("bob", bytes(32))
    assert c.governance.acknowledgements_after("bob") == 2 == c.governance.manifest_threshold()
    c.governance.cancel_update("bob", digest)
    with pytest.raises(UpdateConflict, match="no manifest update is pending"):
        c.governance.acknowledge_update("bob", digest)

    c.governance.propose_update("alice", load_manifest(proposed))
    update = PackageUpdate.parse({"packages": {"app": {"min_svn": 1}}})
    document = c.document
    assert document is not None
    raw = apply_package_update(document.raw, document.manifest, update)
    c.governance.adopt_update(
        c.governance.prepare_update(raw), kind="package", users=["alice"], packages=["app"]
    )
    pending = c.governance.pending_update()
    assert pending is not None
    assert pending.stale is True
    with pytest.raises(UpdateConflict, match="changed since this update was proposed"):
        c.governance.acknowledge_update("bob", digest)
    log = c.governance.manifest_log()
    assert [(u.kind, u.packages, u.users) for u in log] == [
        ("set", [], []),
        ("package", ["app"], ["alice"]),
    ]


def test_without_a_lasting_sealing_key_an_update_without_recovery_is_refused_at_proposal(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    """On a Coordinator whose sealing key dies with its process (TDX, SNP without
    /dev/sev-guest) an update that drops the recovery section is refused when proposed, not
    after every user has acknowledged it."""
    bob = make_user(tmp_path, "bob")
    party = make_party(tmp_path / "parties", "p1", 0)
    c = Coordinator(
        CoordinatorSettings(simulation=True, durable_sealing=False),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        os.urandom(32),
    )
    c.load(None)
    users = {alice: ["admin"], bob: ["admin"]}
    c.set_manifest(governance_manifest(MEASUREMENT.hex(), users, ROLES, recovery=([party], 1)))
    assert c.governance.manifest_threshold() == 2
    bare = governance_manifest(MEASUREMENT.hex(), users, ROLES, trust_domain="other.geode.local")
    with pytest.raises(ManifestError, match="recovery"):
        c.governance.propose_update("alice", load_manifest(bare))
    assert c.governance.pending_update() is None
    kept = governance_manifest(
        MEASUREMENT.hex(), users, ROLES, recovery=([party], 1), trust_domain="other.geode.local"
    )
    c.governance.propose_update("alice", load_manifest(kept))
    assert c.governance.pending_update() is not None


# -- audit -------------------------------------------------------------------------------------


def test_the_audit_chain_verifies_and_names_the_first_broken_entry(
    platform: SimulatedPlatform, alice: User
) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.record_start()
    c.set_manifest(_manifest(alice))
    for value in (b"a", b"b", b"c"):
        c.governance.write_secret("alice", "note", value)
    lines = list(c.held.unflushed_audit())
    head = c.governance.audit_head()
    root = c.root_certificate
    report = verify_audit_log(lines, head, root)
    assert report.ok
    assert [e.event for e in report.entries] == [
        "coordinator.start",
        "manifest.set",
        "secret.write",
        "secret.write",
        "secret.write",
    ]
    assert report.entries[2].details == {"secret": "note"}
    assert all('"a"' not in line for line in lines)

    edited = json.loads(lines[3])
    edited["time"] = "2000-01-01T00:00:00+00:00"
    cases = {
        "edited": ([*lines[:3], json.dumps(edited), *lines[4:]], 4, "signature does not verify"),
        "removed": ([*lines[:1], *lines[2:]], 2, "missing"),
        "swapped": ([lines[1], lines[0], *lines[2:]], 1, "missing"),
        "truncated": (lines[:-1], 5, "missing (the log ends at 4"),
        "garbage": ([*lines[:2], "{", *lines[3:]], 3, "not JSON"),
    }
    for name, (tampered, at, reason) in cases.items():
        report = verify_audit_log(tampered, head, root)
        assert (report.broken_at, reason in report.reason) == (at, True), (name, report.reason)
    other = CertificateAuthority.create_root().certificate
    assert verify_audit_log(lines, head, other).broken_at == 1


def test_unflushed_entries_reach_the_log_once(platform: SimulatedPlatform, alice: User) -> None:
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    c.governance.write_secret("alice", "note", b"x")
    lines = c.held.unflushed_audit()
    c.audit_sink.append_missing(lines)
    c.audit_sink.append_missing(lines)  # a retry after a lost confirmation
    c.held.audit_flushed(lines)
    assert c.audit_sink.read() == list(lines)
    assert c.held.unflushed_audit() == ()


def test_entries_are_not_appended_after_a_forged_one(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    """A line with a huge sequence number, planted by the host, would make every later entry
    look written already: they are refused, and stay in the sealed state."""
    from geode.coordinator._audit import AuditFile

    sink = AuditFile(tmp_path)
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice))
    sink.append_missing(c.held.unflushed_audit())
    sink.append_missing(c.held.unflushed_audit())  # a retry of ours is fine
    with sink.path.open("a") as log:
        log.write(json.dumps({"seq": 10**9, "event": "planted"}) + "\n")
    c.governance.write_secret("alice", "note", b"x")
    lines = c.held.unflushed_audit()
    with pytest.raises(SealError, match="not the one this Coordinator wrote"):
        sink.append_missing(lines)
    assert c.held.unflushed_audit() == lines  # kept, not dropped


# -- formats -----------------------------------------------------------------------------------


def test_a_version_2_state_reads_with_one_set_and_no_audit(
    platform: SimulatedPlatform, alice: User
) -> None:
    key = os.urandom(32)
    c = _coordinator(platform, key)
    c.set_manifest(_manifest(alice))
    _, raw = Sealer.unseal(c.sealed_state(), key)
    doc = json.loads(raw)
    for field in ("updates", "pending_update", "audit"):
        del doc[field]
    doc["version"] = 2
    state = CoordinatorState.from_bytes(json.dumps(doc).encode(), now=c.started_at)
    assert [(u.seq, u.kind) for u in state.updates] == [(1, "set")]
    assert state.pending_update is None
    assert state.audit.seq == 0
    again = _coordinator(platform, key, Sealer(key).seal(json.dumps(doc).encode()))
    assert again.state is State.ACTIVE
    assert again.governance.manifest_log()[0].sha256 == c.manifest_info().sha256


def test_the_recovery_header_is_authenticated(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    party = make_party(tmp_path, "p1", 1)
    key = os.urandom(32)
    c = _coordinator(platform, key)
    c.set_manifest(_manifest(alice, recovery=([party], 1)))
    blob = c.sealed_state()
    length = int.from_bytes(blob[12:16], "big")
    assert json.loads(blob[16 : 16 + length])["version"] == 2
    header = Sealer.recovery_header(blob)
    assert header is not None
    assert (header.threshold, sorted(header.parties)) == (1, ["p1"])
    # Swapping the public key recorded for p1 (to take over the recovery) breaks the state.
    other = make_party(tmp_path, "p9", 9)
    forged = blob.replace(
        party.public_pem.replace("\n", "\\n").encode(),
        other.public_pem.replace("\n", "\\n").encode(),
    )
    assert forged != blob
    with pytest.raises(SealError, match="modified"):
        Sealer.unseal(forged, key)


# -- recovery ----------------------------------------------------------------------------------


def _parties(tmp_path: Path) -> list[Party]:
    return [make_party(tmp_path, f"p{i}", i) for i in (1, 2, 3)]


def _upload(c: Coordinator, party: Party, platform: SimulatedPlatform) -> RecoveryProgress:
    nonce = os.urandom(32)
    offer = c.recovery.offer(nonce)
    recovery_key = verify_recovery_offer(
        offer,
        reference=ReferenceValues(tee="simulated", measurement=MEASUREMENT.hex()),
        platform_keys=[platform.public_key],
        nonce=nonce,
    )
    key = serialization.load_pem_private_key(party.key.read_bytes(), None)
    upload = prepare_share_upload(offer, key, recovery_key)  # type: ignore[arg-type]
    pending = c.recovery.recover(upload.party, upload.sealed_share, upload.signature)
    return pending.value


def test_two_of_three_shares_open_the_state_under_another_sealing_key(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    parties = _parties(tmp_path)
    c = _coordinator(platform, os.urandom(32))
    result = c.set_manifest(_manifest(alice, recovery=(parties, 2)))
    assert sorted(result.recovery_shares or {}) == ["p1", "p2", "p3"]
    c.governance.write_secret("alice", "note", b"across hosts")
    blob = c.sealed_state()

    elsewhere = _coordinator(platform, os.urandom(32), blob)
    assert elsewhere.state is State.RECOVERY
    assert elsewhere.status().recovery.parties == ["p1", "p2", "p3"]
    with pytest.raises(RecoveryRefused, match="not a recovery party"):
        elsewhere.recovery.recover("mallory", b"", b"")
    assert _upload(elsewhere, parties[1], platform).state == "recovery"
    assert _upload(elsewhere, parties[1], platform).received == ["p2"]  # counted once
    done = _upload(elsewhere, parties[0], platform)
    assert done.state == "active"
    assert elsewhere.root_certificate == c.root_certificate
    assert elsewhere.governance.read_secret("note")[1].value == b"across hosts"
    assert elsewhere.manifest_info().sha256 == c.manifest_info().sha256
    # Sealed from now on under the new key, with the same shares.
    reopened_key = elsewhere.held.sealing_key
    again = _coordinator(platform, reopened_key, elsewhere.sealed_state())
    assert again.state is State.ACTIVE
    assert Sealer.recovery_header(elsewhere.sealed_state()) == Sealer.recovery_header(blob)


def test_uploads_are_checked_before_they_count(
    platform: SimulatedPlatform, alice: User, tmp_path: Path
) -> None:
    parties = _parties(tmp_path)
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(_manifest(alice, recovery=(parties, 2)))
    elsewhere = _coordinator(platform, os.urandom(32), c.sealed_state())
    nonce = os.urandom(32)
    offer = elsewhere.recovery.offer(nonce)
    reference = ReferenceValues(tee="simulated", measurement=MEASUREMENT.hex())
    recovery_key = verify_recovery_offer(
        offer, reference=reference, platform_keys=[platform.public_key], nonce=nonce
    )
    p1 = serialization.load_pem_private_key(parties[0].key.read_bytes(), None)
    upload = prepare_share_upload(offer, p1, recovery_key)  # type: ignore[arg-type]
    with pytest.raises(RecoveryRefused, match="not signed with the recovery key of 'p2'"):
        elsewhere.recovery.recover("p2", upload.sealed_share, upload.signature)
    with pytest.raises(RecoveryRefused, match="not signed"):
        elsewhere.recovery.recover("p1", upload.sealed_share[::-1], upload.signature)
    # The share of p1 for another state (the same parties, another data key).
    other = _coordinator(platform, os.urandom(32))
    shares = other.set_manifest(_manifest(alice, recovery=(parties, 2))).recovery_shares
    foreign = prepare_share_upload(
        offer,
        p1,
        recovery_key,
        encrypted_share=base64.b64decode(shares["p1"]),  # type: ignore[arg-type]
    )
    with pytest.raises(RecoveryRefused, match="not the share of 'p1' for this state"):
        elsewhere.recovery.recover("p1", foreign.sealed_share, foreign.signature)
    # Evidence for another nonce (a replayed offer) is not taken.
    with pytest.raises(StatementError, match="does not vouch"):
        verify_recovery_offer(
            offer, reference=reference, platform_keys=[platform.public_key], nonce=bytes(32)
        )
    assert elsewhere.status().recovery.received == []


def test_the_openapi_document_lists_the_governance_endpoints() -> None:
    from geode.protocol import openapi_document

    document = openapi_document()
    paths = document["paths"]
    for path, method in [
        ("/api/v1/secrets/{name}", "get"),
        ("/api/v1/secrets/{name}", "put"),
        ("/api/v1/update", "post"),
        ("/api/v1/update", "get"),
        ("/api/v1/update/acknowledge", "post"),
        ("/api/v1/update/cancel", "post"),
        ("/api/v1/manifest/log", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/recovery", "get"),
        ("/api/v1/recovery", "post"),
    ]:
        assert method in paths[path], (path, method)
    assert paths["/api/v1/audit"]["get"]["security"] == [{"clientCertificate": []}]
    assert "security" not in paths["/api/v1/recovery"]["post"]
    assert document["components"]["securitySchemes"]["clientCertificate"]["type"] == "mutualTLS"


def test_a_state_built_by_whoever_holds_its_data_key_is_not_recovered(tmp_path: Path) -> None:
    """A host that runs Geode outside a TEE knows every key of a state it builds: one that
    names the host's own key as recovery party (the manifest names none) is refused."""
    from cryptography.hazmat.primitives import serialization

    from geode.attestation import ReferenceValues
    from geode.client import prepare_share_upload, verify_recovery_offer
    from geode.coordinator import Sealer, State
    from geode.coordinator._recovery import split_data_key
    from geode.errors import RecoveryRefused
    from geode.manifest import Recovery
    from tests.support.governance import make_party, make_user

    platform = SimulatedPlatform.generate()
    alice = make_user(tmp_path, "alice")
    host_seal = os.urandom(32)
    forged = _coordinator(platform, host_seal)
    forged.set_manifest(_manifest(alice))  # the genuine manifest: no recovery section
    raw_state = forged.held.data.to_bytes()
    host = make_party(tmp_path, "h", 7)
    sealer = Sealer(host_seal)
    shares = split_data_key(sealer.data_key, Recovery(keys={"h": host.public_pem}, threshold=1))
    blob = sealer.with_recovery(shares).seal(raw_state)

    victim = _coordinator(platform, os.urandom(32), blob)
    assert victim.state is State.RECOVERY
    victim.recovery.prepare()
    nonce = os.urandom(32)
    offer = victim.recovery.offer(nonce)
    recovery_key = verify_recovery_offer(
        offer,
        reference=ReferenceValues(tee="simulated", measurement=MEASUREMENT.hex()),
        platform_keys=[platform.public_key],
        nonce=nonce,
    )
    key = serialization.load_pem_private_key(host.key.read_bytes(), None)
    upload = prepare_share_upload(offer, key, recovery_key)  # type: ignore[arg-type]
    with pytest.raises(RecoveryRefused, match="not the ones its manifest names"):
        victim.recovery.recover(upload.party, upload.sealed_share, upload.signature)
    assert victim.state is State.RECOVERY


def test_a_grant_is_checked_again_once_the_change_may_run() -> None:
    """A user whose role an update removes while their package update waits for the lock is
    refused: the grant is judged against the manifest in force when the change runs."""
    import json as _json
    import tempfile
    import time

    from starlette.requests import Request

    from geode.coordinator import GroupCommit
    from geode.coordinator._api import build_apps
    from tests.support.governance import governance_manifest, make_user

    tmp = Path(tempfile.mkdtemp())
    platform = SimulatedPlatform.generate()
    alice, bob = make_user(tmp, "alice"), make_user(tmp, "bob")
    roles = {
        "admin": {"resource": "manifest", "actions": ["update"]},
        "release": {"resource": "packages", "names": ["app"], "actions": ["update"]},
    }
    before = governance_manifest(
        MEASUREMENT.hex(), {alice: ["release"], bob: ["admin"]}, roles, update_threshold=1
    )
    after = governance_manifest(
        MEASUREMENT.hex(), {alice: [], bob: ["admin"]}, roles, update_threshold=1
    )
    c = _coordinator(platform, os.urandom(32))
    c.set_manifest(before)
    prepare = c.governance.prepare_update

    def slow_prepare(raw: bytes) -> Any:
        time.sleep(0.3)  # key generation for the new manifest takes a while
        return prepare(raw)

    c.governance.prepare_update = slow_prepare  # type: ignore[method-assign]
    client_app, _ = build_apps(c, GroupCommit(c.sealed_state, MemoryStore()))
    post_update = next(
        r.endpoint for r in client_app.routes if getattr(r, "path", "") == "/api/v1/update"
        and "POST" in (getattr(r, "methods", None) or ())
    )  # fmt: skip

    def request(user: Any, body: bytes) -> Request:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http", "method": "POST", "path": "/api/v1/update", "headers": [],
            "query_string": b"", "app": client_app,
            "extensions": {"tls": {"client_cert_chain": [user.pem]}},
        }  # fmt: skip
        return Request(scope, receive)

    async def race() -> tuple[int, int]:
        bob_task = asyncio.create_task(post_update(request(bob, after)))
        await asyncio.sleep(0.05)  # bob's manifest update holds the lock
        package = _json.dumps({"packages": {"app": {"measurement": "ab" * 32}}}).encode()
        try:
            alice_status = (await post_update(request(alice, package))).status_code
        except PermissionDenied:
            alice_status = 403
        return (await bob_task).status_code, alice_status

    bob_status, alice_status = asyncio.run(race())
    assert (bob_status, alice_status) == (201, 403)
    assert c.document.manifest.packages["app"].measurement == MEASUREMENT.hex()
