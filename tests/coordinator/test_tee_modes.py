"""The Coordinator in hardware mode, in-process, on a fake SEV-SNP host TEE under test roots
(``open_coordinator(config, host=..., trust=...)``, the only way in): its statement carries
hardware evidence bound to it, its status names the TEE, simulated evidence is refused, its state
reopens on the same platform and code only, a TEE without a sealing key insists on recovery keys,
and the cluster key passes between two hardware Coordinators of the same code only."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import (
    ActivationRequest,
    Coordinator,
    CoordinatorConfig,
    GroupCommit,
    State,
    Store,
    open_coordinator,
)
from geode.coordinator._cluster import (
    ClusterMember,
    JoinParty,
    JoinRequest,
    hand_over_cluster_key,
)
from geode.errors import ActivationDenied, GeodeError, JoinRefused, ManifestError, NoTeeError
from geode.pki import certificate_der, public_key_der
from geode.protocol import key_binding, statement_binding
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.fake_snp import MEASUREMENT, FakeSnpHost, SnpChip
from tests.support.governance import make_party

OTHER_MEASUREMENT = b"\x43" * 48
SERVICE = bytes(range(32))
MANIFEST = {
    "version": 1,
    "trust_domain": "t.local",
    "packages": {"app": {"tee": "simulated", "measurement": SERVICE.hex()}},
    "services": {"web": {"package": "app"}},
}


class _AcceptsAnyone(JoinParty):
    def check(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def chip() -> SnpChip:
    return SnpChip.create()


@pytest.fixture(autouse=True)
def _no_simulation_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where simulation would put its keys: a hardware Coordinator must never make them."""
    monkeypatch.setenv("GEODE_PLATFORM_KEY", str(tmp_path / "sim" / "platform.key"))
    monkeypatch.setenv("GEODE_SEALING_KEY", str(tmp_path / "sim" / "sealing.key"))


def _open(
    tmp_path: Path, chip: SnpChip, host: FakeSnpHost, *, name: str = "data"
) -> tuple[Coordinator, Store]:
    config = CoordinatorConfig(data_dir=tmp_path / name, tee="sev-snp")
    return open_coordinator(config, host=host, trust=chip.trust)


def _save(coordinator: Coordinator, store: Store, manifest: dict[str, object]) -> None:
    coordinator.set_manifest(json.dumps(manifest).encode())
    store.save(coordinator.sealed_state())


def test_the_statement_carries_bound_hardware_evidence(tmp_path: Path, chip: SnpChip) -> None:
    host = chip.launch()
    coordinator, store = _open(tmp_path, chip, host)
    try:
        _save(coordinator, store, MANIFEST)
        nonce = os.urandom(32)
        statement = coordinator.statement(nonce)
        assert statement.tee == "sev-snp"
        assert statement.simulation is False
        evidence = statement.evidence.evidence()
        assert evidence.kind == "sev-snp"
        claims = EvidenceVerifier(trust=chip.trust).verify(evidence)
        assert claims.measurement == MEASUREMENT
        assert coordinator.document is not None
        root = certificate_der(coordinator.root_certificate)
        assert claims.report_data == statement_binding(root, coordinator.document.sha256, nonce)
        # Not under the pinned AMD roots: the test root came in through the Python API only.
        with pytest.raises(GeodeError):
            EvidenceVerifier().verify(evidence)

        status = coordinator.status()
        assert (status.tee, status.tee_interface, status.sealing) == (
            "sev-snp",
            host.name,
            host.sealing,
        )
        assert status.measurement == MEASUREMENT.hex()
        assert status.simulation is False
    finally:
        store.close()
    # Nothing of simulation was made or read.
    assert not (tmp_path / "sim").exists()


def test_the_start_is_audited_with_the_tee(tmp_path: Path, chip: SnpChip) -> None:
    host = chip.launch()
    coordinator, store = _open(tmp_path, chip, host)
    _save(coordinator, store, MANIFEST)
    store.close()
    coordinator, store = _open(tmp_path, chip, host)
    store.close()
    starts = [
        json.loads(line) for line in (tmp_path / "data" / "audit.log").read_text().splitlines()
    ]
    starts = [entry for entry in starts if entry["event"] == "coordinator.start"]
    assert len(starts) == 2  # the first with the manifest, then the restart
    for start in starts:
        assert start["details"]["tee"] == "sev-snp"
        assert start["details"]["interface"] == host.name
        assert start["details"]["measurement"] == MEASUREMENT.hex()


def test_simulated_evidence_is_refused_by_a_hardware_coordinator(
    tmp_path: Path, chip: SnpChip
) -> None:
    coordinator, store = _open(tmp_path, chip, chip.launch())
    try:
        coordinator.set_manifest(json.dumps(MANIFEST).encode())
        key = ec.generate_private_key(ec.SECP256R1())
        nonce, _ = coordinator.activation.issue_nonce()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        forged = SimulatedPlatform.generate().quote(
            SERVICE, key_binding(public_key_der(key.public_key()), nonce)
        )
        with pytest.raises(ActivationDenied, match="simulation is not enabled"):
            coordinator.activation.activate(ActivationRequest("web", nonce, csr, forged))
    finally:
        store.close()


def test_a_restart_on_the_same_platform_unseals_and_other_code_cannot(
    tmp_path: Path, chip: SnpChip
) -> None:
    host = chip.launch()
    coordinator, store = _open(tmp_path, chip, host)
    _save(coordinator, store, MANIFEST)
    root = coordinator.root_certificate
    store.close()

    again, store = _open(tmp_path, chip, host)
    store.close()
    assert again.state is State.ACTIVE
    assert again.root_certificate == root

    # The same chip launched with another image derives another sealing key.
    other, store = _open(tmp_path, chip, host.relaunched(OTHER_MEASUREMENT))
    store.close()
    assert other.state is State.RECOVERY
    assert "sealing key does not open this state" in other.recovery_reason
    assert other.status().measurement == OTHER_MEASUREMENT.hex()


def test_a_tee_without_a_sealing_key_insists_on_recovery_keys(
    tmp_path: Path, chip: SnpChip
) -> None:
    host = chip.launch(derived_keys=False)
    coordinator, store = _open(tmp_path, chip, host)
    assert coordinator.status().sealing == host.sealing

    async def refused() -> None:
        client, _ = in_process_apis(coordinator, GroupCommit(coordinator.sealed_state, store))
        async with client:
            answer = await client.post("/api/v1/manifest", content=json.dumps(MANIFEST))
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["error"] == "manifest_invalid"
        assert "no sealing key that survives a restart" in body["message"]

    asyncio.run(refused())
    with pytest.raises(ManifestError) as raised:
        coordinator.set_manifest(json.dumps(MANIFEST).encode())
    assert raised.value.path == "recovery"
    assert coordinator.state is State.AWAITING_MANIFEST

    party = make_party(tmp_path / "parties", "ops", 0)
    with_recovery = {**MANIFEST, "recovery": {"keys": {"ops": party.public_pem}, "threshold": 1}}
    _save(coordinator, store, with_recovery)
    store.close()
    # Restarted, even on the same platform, it has a new key: the state waits for recovery.
    again, store = _open(tmp_path, chip, host)
    store.close()
    assert again.state is State.RECOVERY
    progress = again.status().recovery
    assert progress is not None
    assert progress.parties == ["ops"]
    # The recovery offer is attested by the TEE too, bound to the Coordinator's recovery key.
    nonce = os.urandom(32)
    offer = again.recovery.offer(nonce)
    assert (offer.tee, offer.simulation) == ("sev-snp", False)
    claims = EvidenceVerifier(trust=chip.trust).verify(offer.evidence.evidence())
    assert claims.measurement == MEASUREMENT


def test_without_a_tee_nothing_is_left_behind(tmp_path: Path) -> None:
    """The TEE is found before the store is opened: no data directory, no simulation keys."""
    asked: list[str] = []

    def probe(choice: str) -> FakeSnpHost:
        asked.append(choice)
        raise NoTeeError(choice, (("configfs-tsm", "/sys/kernel/config/tsm/report", "absent"),))

    config = CoordinatorConfig(data_dir=tmp_path / "data", tee="tdx")
    with pytest.raises(NoTeeError, match=r"configfs-tsm .* absent; start with --tee simulated"):
        open_coordinator(config, probe=probe)
    assert asked == ["tdx"]
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"platform_key": Path("p.key")}, "for simulation only"),
        ({"sealing_key": Path("s.key")}, "for simulation only"),
        ({"trusted_platform_keys": [Path("p.pub")]}, "for simulation only"),
        ({"coordinator_platform_keys": [Path("p.pub")]}, "for simulation only"),
        ({"simulation": True, "tee": "sev-snp"}, "--simulation contradicts --tee sev-snp"),
        ({"tee": "quantum"}, "--tee quantum: expected one of"),
    ],
)
def test_simulated_keys_are_refused_on_hardware(
    tmp_path: Path, chip: SnpChip, changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"data_dir": tmp_path / "data", "tee": "sev-snp", **changes}
    config = CoordinatorConfig(**fields)  # type: ignore[arg-type]
    with pytest.raises(GeodeError, match=message):
        open_coordinator(config, host=chip.launch(), trust=chip.trust)
    assert not (tmp_path / "data").exists()


def test_no_cluster_key_copy_without_a_sealing_key(tmp_path: Path) -> None:
    """A copy sealed with a key of this process only is of no use after a restart: not made."""
    member = ClusterMember("a:1", tmp_path, None, os.urandom(32), keep_copy=False)  # type: ignore[arg-type]
    member.keep(os.urandom(32))
    assert member.local_key() is None
    assert not list(tmp_path.iterdir())


def test_the_cluster_key_passes_between_hardware_coordinators_of_the_same_code(
    tmp_path: Path, chip: SnpChip
) -> None:
    peer, peer_store = _open(tmp_path, chip, chip.launch(), name="peer")
    # Another chip under the same AMD root, the same Coordinator image.
    newcomer, newcomer_store = _open(tmp_path, chip, SnpChip(chip.pki).launch(), name="new")
    impostor, impostor_store = _open(
        tmp_path, chip, chip.launch(OTHER_MEASUREMENT), name="impostor"
    )
    try:
        _save(peer, peer_store, MANIFEST)
        nonce, _ = peer.nonces.issue()
        request = JoinRequest(newcomer.cluster_keys.join_party(), nonce)
        answer = peer.cluster_keys.hand_over(nonce, request.public_der, request.evidence)
        assert request.open(answer) == peer.cluster_key

        nonce, _ = peer.nonces.issue()
        request = JoinRequest(impostor.cluster_keys.join_party(), nonce)
        with pytest.raises(JoinRefused, match="measurement mismatch"):
            peer.cluster_keys.hand_over(nonce, request.public_der, request.evidence)
        # Nor does a newcomer take a key from a peer of other code that hands one over.
        request = JoinRequest(newcomer.cluster_keys.join_party(), os.urandom(32))
        careless = _AcceptsAnyone(impostor.tee, impostor.cluster_keys.join_party().verifier)
        forged = hand_over_cluster_key(
            careless, os.urandom(32), request.nonce, request.public_der, request.evidence
        )
        with pytest.raises(JoinRefused, match="measurement mismatch"):
            request.open(forged)
    finally:
        for store in (peer_store, newcomer_store, impostor_store):
            store.close()
