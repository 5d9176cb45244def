"""The Coordinator in hardware mode on each fake TEE platform (``tests.support.hardware``),
found by the real ``probe_host`` over the fake devices: it starts, its statement carries the
platform's evidence bound to it, its status names the TEE; sealing behaves as each TEE allows
(SNP derived keys and Gramine's keys bind the code, TDX has none); two TDs of the same code hand
over the cluster key, of other code not."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geode.attestation import EvidenceVerifier, golden_reference_values
from geode.coordinator import Coordinator, CoordinatorConfig, State, Store, open_coordinator
from geode.coordinator._cluster import JoinRequest
from geode.errors import ClaimsMismatch, JoinRefused, ManifestError
from geode.pki import certificate_der
from geode.protocol import statement_binding
from tests.support.governance import make_party
from tests.support.hardware import FakeGuest, FakeSgx, FakeSnp, FakeTdx

MANIFEST: dict[str, Any] = {
    "version": 1,
    "trust_domain": "t.local",
    "packages": {"app": {"tee": "sgx", "measurement": "ab" * 32}},
    "services": {"web": {"package": "app"}},
}


@pytest.fixture(autouse=True)
def _no_simulation_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_PLATFORM_KEY", str(tmp_path / "sim" / "platform.key"))
    monkeypatch.setenv("GEODE_SEALING_KEY", str(tmp_path / "sim" / "sealing.key"))


def _open(
    data: Path, guest: FakeGuest, tee: str = "auto", **config: Any
) -> tuple[Coordinator, Store]:
    return open_coordinator(
        CoordinatorConfig(data_dir=data, tee=tee, **config), probe=guest.probe, trust=guest.trust()
    )


def _restart(data: Path, guest: FakeGuest, **config: Any) -> Coordinator:
    coordinator, store = _open(data, guest, **config)
    store.close()
    return coordinator


def _save(coordinator: Coordinator, store: Store, manifest: dict[str, Any] = MANIFEST) -> None:
    coordinator.set_manifest(json.dumps(manifest).encode())
    store.save(coordinator.sealed_state())
    store.close()


LAUNCHES: dict[str, tuple[str, str, Callable[[Any], FakeGuest]]] = {
    "sev-snp": ("sev-snp", "sev-snp", lambda p: p.launch()),
    "sev-snp via configfs-tsm": (
        "sev-snp",
        "sev-snp",
        lambda p: p.launch(interfaces=("configfs-tsm",)),
    ),
    "tdx": ("tdx", "tdx", lambda p: p.launch()),
    "sgx-gramine": ("sgx-gramine", "sgx", lambda p: p.launch()),
}


@pytest.mark.parametrize("which", list(LAUNCHES))
@pytest.mark.parametrize("choice", ["auto", "named"])
def test_it_starts_and_attests_on_each_tee(
    which: str, choice: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name, kind, launch = LAUNCHES[which]
    platform = request.getfixturevalue(kind if kind != "sev-snp" else "snp")
    guest = launch(platform)
    coordinator, store = _open(tmp_path / "data", guest, name if choice == "named" else "auto")
    try:
        status = coordinator.status()
        assert status.tee == kind
        assert status.simulation is False
        assert status.tee_interface.startswith(f"{kind} via ")
        nonce = os.urandom(32)
        statement = coordinator.statement(nonce)
        assert statement.tee == kind
        evidence = statement.evidence.evidence()
        assert evidence.kind == kind
        claims = EvidenceVerifier(trust=guest.trust()).verify(evidence)
        root = certificate_der(coordinator.root_certificate)
        assert claims.report_data == statement_binding(root, bytes(32), nonce)
        assert status.measurement == claims.measurement.hex()
        if kind == "tdx":
            assert status.sealing == "none"
    finally:
        store.close()
    assert not (tmp_path / "sim").exists()


def test_snp_unseals_on_the_same_chip_and_code_only(snp: FakeSnp, tmp_path: Path) -> None:
    guest = snp.launch()
    _save(*_open(tmp_path / "data", guest))
    assert _restart(tmp_path / "data", guest).state is State.ACTIVE
    other = _restart(tmp_path / "data", snp.launch(measurement=b"\x24" * 48))
    assert other.state is State.RECOVERY
    # Another guest policy (here: debug allowed) derives another key too.
    debug = _restart(tmp_path / "data", snp.launch(policy=0x30000 | 1 << 19))
    assert debug.state is State.RECOVERY


def test_sgx_sealing_by_enclave_and_by_signer(sgx: FakeSgx, tmp_path: Path) -> None:
    guest = sgx.launch()
    _save(*_open(tmp_path / "enclave", guest))
    assert _restart(tmp_path / "enclave", guest).state is State.ACTIVE
    updated = sgx.launch(mrenclave=b"\x12" * 32)  # new code, same signer and product
    assert _restart(tmp_path / "enclave", updated).state is State.RECOVERY

    coordinator, store = _open(tmp_path / "signer", guest, sgx_sealing="mrsigner")
    assert coordinator.tee.identity.signer == (b"\x22" * 32).hex()
    assert coordinator.tee.identity.measurement is None
    _save(coordinator, store)
    again = _restart(tmp_path / "signer", updated, sgx_sealing="mrsigner")
    assert again.state is State.ACTIVE
    other_signer = sgx.launch(mrsigner=b"\x23" * 32)
    assert _restart(tmp_path / "signer", other_signer, sgx_sealing="mrsigner").state is (
        State.RECOVERY
    )


def test_tdx_has_no_sealing_key(tdx: FakeTdx, tmp_path: Path) -> None:
    guest = tdx.launch()
    coordinator, store = _open(tmp_path / "data", guest)
    with pytest.raises(ManifestError, match="no sealing key that survives a restart"):
        coordinator.set_manifest(json.dumps(MANIFEST).encode())
    party = make_party(tmp_path / "parties", "ops", 0)
    recovery = {"keys": {"ops": party.public_pem}, "threshold": 1}
    _save(coordinator, store, {**MANIFEST, "recovery": recovery})
    # The same TD restarted: a new key of its own, so only the recovery party opens the state.
    again = _restart(tmp_path / "data", guest)
    assert again.state is State.RECOVERY


def test_tdx_peers_of_the_same_code_hand_over_the_cluster_key(tdx: FakeTdx, tmp_path: Path) -> None:
    peer, peer_store = _open(tmp_path / "peer", tdx.launch())
    newcomer, newcomer_store = _open(tmp_path / "new", tdx.launch())
    rtmrs = (b"\x40" * 48, b"\x41" * 48, b"\x99" * 48, b"\x43" * 48)
    other, other_store = _open(tmp_path / "other", tdx.launch(rtmrs=rtmrs))
    # RTMR3 is extended at run time: not part of who the Coordinator is.
    late = (b"\x40" * 48, b"\x41" * 48, b"\x42" * 48, b"\x77" * 48)
    extended, extended_store = _open(tmp_path / "extended", tdx.launch(rtmrs=late))
    try:
        for joining in (newcomer, extended):
            nonce, _ = peer.nonces.issue()
            request = JoinRequest(joining.cluster_keys.join_party(), nonce)
            answer = peer.cluster_keys.hand_over(nonce, request.public_der, request.evidence)
            assert request.open(answer) == peer.cluster_key
        nonce, _ = peer.nonces.issue()
        request = JoinRequest(other.cluster_keys.join_party(), nonce)
        with pytest.raises(JoinRefused, match="rtmr2 mismatch"):
            peer.cluster_keys.hand_over(nonce, request.public_der, request.evidence)
    finally:
        for store in (peer_store, newcomer_store, other_store, extended_store):
            store.close()


def _hand_over(peer: Coordinator, joining: Coordinator) -> bytes:
    nonce, _ = peer.nonces.issue()
    request = JoinRequest(joining.cluster_keys.join_party(), nonce)
    return request.open(peer.cluster_keys.hand_over(nonce, request.public_der, request.evidence))


def test_a_peer_launched_with_another_configuration_is_another_coordinator(
    snp: FakeSnp, tdx: FakeTdx, tmp_path: Path
) -> None:
    """The same code launched otherwise (an SNP guest policy that allows a migration agent, a
    TD with other attributes) is not the same Coordinator: no cluster key either way."""
    pairs = [
        (snp.launch(), snp.launch(), snp.launch(policy=0x30000 | 1 << 18), "policy mismatch"),
        (
            tdx.launch(),
            tdx.launch(),
            tdx.launch(td_attributes=0x10000000 | 1 << 27),
            "td attributes mismatch",
        ),
    ]
    stores = []
    try:
        for index, (own, same, other, reason) in enumerate(pairs):
            peer, store = _open(tmp_path / f"peer{index}", own)
            twin, twin_store = _open(tmp_path / f"twin{index}", same)
            stranger, stranger_store = _open(tmp_path / f"other{index}", other)
            stores += [store, twin_store, stranger_store]
            assert _hand_over(peer, twin) == peer.cluster_key
            with pytest.raises(JoinRefused, match=reason):
                _hand_over(peer, stranger)
    finally:
        for store in stores:
            store.close()


def test_peers_launched_to_allow_a_migration_agent_are_the_same_coordinator(
    snp: FakeSnp, tmp_path: Path
) -> None:
    """The identity is the reference values the verified claims show: a guest policy with the
    migration-agent bit gives ``migrate_ma``, so two such Coordinators hand over the key (and
    one without the bit still refuses them)."""
    migratable = 0x30000 | 1 << 18
    peer, peer_store = _open(tmp_path / "peer", snp.launch(policy=migratable))
    twin, twin_store = _open(tmp_path / "twin", snp.launch(policy=migratable))
    plain, plain_store = _open(tmp_path / "plain", snp.launch())
    try:
        assert peer.tee.identity.migrate_ma is True
        assert plain.tee.identity.migrate_ma is False
        assert _hand_over(peer, twin) == peer.cluster_key
        with pytest.raises(JoinRefused, match="policy mismatch"):
            _hand_over(plain, peer)
    finally:
        for store in (peer_store, twin_store, plain_store):
            store.close()


@pytest.mark.parametrize("which", ["sev-snp", "tdx", "sgx-gramine"])
def test_the_identity_is_what_golden_evidence_of_the_same_launch_shows(
    which: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One mapping from claims to reference values: the Coordinator's identity (from its own
    verified claims) and ``geode measure evidence`` (reading golden evidence) agree, but for
    what a peer may differ in (the SNP reported TCB, the SGX SVN) and the TCB statuses."""
    _name, kind, launch = LAUNCHES[which]
    guest = launch(request.getfixturevalue(kind if kind != "sev-snp" else "snp"))
    coordinator, store = _open(tmp_path / "data", guest)
    store.close()
    golden = golden_reference_values(guest.evidence(bytes(64)))
    identity = coordinator.tee.identity
    skip = {"accepted_tcb_statuses"}
    assert identity.model_dump(exclude=skip) == golden.model_dump(exclude=skip)
    assert identity.model_fields_set - skip == golden.model_fields_set - skip


def test_a_peer_older_than_this_coordinator_is_not_the_same_coordinator(
    snp: FakeSnp, sgx: FakeSgx, tdx: FakeTdx, tmp_path: Path
) -> None:
    """A peer may be newer, never older: an SNP guest on older firmware (lower reported TCB)
    and, sealing by signer, an older enclave of the same signer (lower ISVSVN) are refused; the
    launch configuration is compared on the typed claims, not on their text in ``details``."""
    cases: list[tuple[FakeGuest, dict[str, Any], dict[str, Any], str]] = []
    own = snp.launch()
    low = {name: max(value - 1, 0) for name, value in snp.tcb.items()}
    cases.append((own, {}, {"tcb": low}, "tcb too low"))
    cases.append((sgx.launch(), {"sgx_sealing": "mrsigner"}, {"svn": 2}, "security version"))
    td = tdx.launch()
    cases.append((td, {}, {"td_attributes": bytes(8), "details": {}}, "td attributes mismatch"))
    cases.append((own, {}, {"policy": 0x20000, "details": {}}, "policy mismatch"))
    for index, (guest, config, change, reason) in enumerate(cases):
        coordinator, store = _open(tmp_path / f"c{index}", guest, **config)
        store.close()
        claims = EvidenceVerifier(simulation=False, trust=guest.trust()).verify(
            guest.evidence(bytes(64))
        )
        coordinator.tee.match_peer(claims)  # itself: the same Coordinator
        newer = {"tcb": {n: v + 1 for n, v in claims.tcb.items()}, "svn": claims.svn + 1}
        coordinator.tee.match_peer(dataclasses.replace(claims, **newer))
        with pytest.raises(ClaimsMismatch, match=reason):
            coordinator.tee.match_peer(dataclasses.replace(claims, **change))
