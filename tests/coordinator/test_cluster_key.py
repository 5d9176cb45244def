"""The cluster key: wrapped in the sealed header, kept sealed per host, and handed over only
between Coordinators whose evidence shows the same package (both directions)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import Sealer
from geode.coordinator._cluster import (
    ClusterKeyFile,
    JoinParty,
    JoinRequest,
    hand_over_cluster_key,
    read_answer,
)
from geode.errors import JoinRefused, SealError
from tests.coordinator.support.simulated import simulated_tee

MEASUREMENT = bytes(range(32))
CLUSTER_KEY = os.urandom(32)


def _party(platform: SimulatedPlatform, measurement: bytes = MEASUREMENT) -> JoinParty:
    verifier = EvidenceVerifier(simulation=True, platform_keys=[platform.public_key])
    return JoinParty(simulated_tee(platform, measurement), verifier)


class _AcceptsAnyone(JoinParty):
    def check(self, *args: object) -> None:
        return None


def test_another_sealing_key_opens_the_state_with_the_cluster_key_only() -> None:
    writer, reader = os.urandom(32), os.urandom(32)
    blob = Sealer(writer, cluster_key=CLUSTER_KEY).seal(b"state")
    with pytest.raises(SealError, match="does not open this state"):
        Sealer.unseal(blob, reader)
    with pytest.raises(SealError, match="neither does this Coordinator's cluster key"):
        Sealer.unseal(blob, reader, os.urandom(32))
    sealer, state = Sealer.unseal(blob, reader, CLUSTER_KEY)
    assert state == b"state"
    # What the reader writes back wraps the data key under its own sealing key and the cluster
    # key: the first writer now opens it with the cluster key only.
    again = sealer.seal(b"state 2")
    assert Sealer.unseal(again, reader)[1] == b"state 2"
    assert Sealer.unseal(again, writer, CLUSTER_KEY)[1] == b"state 2"
    with pytest.raises(SealError):
        Sealer.unseal(again, writer)


def test_a_fresh_data_key_stays_under_the_cluster_key() -> None:
    sealer = Sealer(os.urandom(32), cluster_key=CLUSTER_KEY)
    rekeyed = sealer.rekeyed()
    assert rekeyed.data_key != sealer.data_key
    assert Sealer.unseal(rekeyed.seal(b"x"), os.urandom(32), CLUSTER_KEY)[1] == b"x"


def test_the_local_copy_is_sealed_private_and_host_bound(tmp_path: Path) -> None:
    sealing_key = os.urandom(32)
    copy = ClusterKeyFile(tmp_path, sealing_key)
    assert copy.load() is None
    copy.save(CLUSTER_KEY)
    assert copy.load() == CLUSTER_KEY
    assert stat.S_IMODE(copy.path.stat().st_mode) == 0o600
    assert CLUSTER_KEY not in copy.path.read_bytes()
    with pytest.raises(SealError, match="does not open with this sealing key"):
        ClusterKeyFile(tmp_path, os.urandom(32)).load()
    copy.path.write_bytes(copy.path.read_bytes()[:-1])
    with pytest.raises(SealError, match="does not open"):
        copy.load()


def test_a_handover_between_same_package_coordinators() -> None:
    platform = SimulatedPlatform.generate()
    peer, newcomer = _party(platform), _party(platform)
    nonce = os.urandom(32)
    request = JoinRequest(newcomer, nonce)
    answer = hand_over_cluster_key(peer, CLUSTER_KEY, nonce, request.public_der, request.evidence)
    assert base64.b64encode(CLUSTER_KEY).decode() not in str(answer)
    assert request.open(answer) == CLUSTER_KEY


def test_a_newcomer_with_another_measurement_is_refused() -> None:
    platform = SimulatedPlatform.generate()
    nonce = os.urandom(32)
    request = JoinRequest(_party(platform, bytes(32)), nonce)
    with pytest.raises(JoinRefused, match="not the same Coordinator package: measurement"):
        hand_over_cluster_key(
            _party(platform), CLUSTER_KEY, nonce, request.public_der, request.evidence
        )


def test_a_newcomer_on_an_untrusted_platform_or_unbound_is_refused() -> None:
    nonce = os.urandom(32)
    outsider = JoinRequest(_party(SimulatedPlatform.generate()), nonce)
    peer = _party(SimulatedPlatform.generate())
    with pytest.raises(JoinRefused, match="evidence does not verify"):
        hand_over_cluster_key(peer, CLUSTER_KEY, nonce, outsider.public_der, outsider.evidence)
    # Evidence for one key cannot carry another key, nor another nonce.
    platform = SimulatedPlatform.generate()
    request, other = JoinRequest(_party(platform), nonce), JoinRequest(_party(platform), nonce)
    for key_der, used_nonce in ((other.public_der, nonce), (request.public_der, os.urandom(32))):
        with pytest.raises(JoinRefused, match="not bound to this exchange"):
            hand_over_cluster_key(
                _party(platform), CLUSTER_KEY, used_nonce, key_der, request.evidence
            )


def test_the_newcomer_refuses_a_peer_with_another_measurement_or_a_swapped_key() -> None:
    platform = SimulatedPlatform.generate()
    nonce = os.urandom(32)
    request = JoinRequest(_party(platform), nonce)
    # A peer of another package (a host's own program, say) hands over a key of its choosing.
    impostor = _AcceptsAnyone(
        simulated_tee(platform, bytes(32)),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
    )
    answer = hand_over_cluster_key(
        impostor, os.urandom(32), nonce, request.public_der, request.evidence
    )
    with pytest.raises(JoinRefused, match="the peer is not the same Coordinator package"):
        request.open(answer)
    # A genuine answer whose sealed key was swapped no longer matches the peer's evidence.
    genuine = hand_over_cluster_key(
        _party(platform), CLUSTER_KEY, nonce, request.public_der, request.evidence
    )
    swapped = genuine.model_copy(update={"sealed_key": answer.sealed_key})
    with pytest.raises(JoinRefused, match="not bound to this exchange"):
        request.open(swapped)
    with pytest.raises(JoinRefused, match="malformed"):
        request.open(read_answer({"public_key": genuine.public_key}))
    with pytest.raises(JoinRefused, match="sealed_key: not base64"):
        request.open(genuine.model_copy(update={"sealed_key": "%%%"}))


def test_a_malformed_exchange_key_is_refused_not_a_crash() -> None:
    platform = SimulatedPlatform.generate()
    nonce = os.urandom(32)
    request = JoinRequest(_party(platform), nonce)
    # Evidence bound to bytes that are no key: it verifies, but the exchange cannot happen.
    from geode.protocol import join_request_binding

    junk = b"not a key"
    evidence = platform.quote(MEASUREMENT, join_request_binding(junk, nonce))
    with pytest.raises(JoinRefused, match="not a P-256 public key"):
        hand_over_cluster_key(_party(platform), CLUSTER_KEY, nonce, junk, evidence)
    answer = hand_over_cluster_key(
        _party(platform), CLUSTER_KEY, nonce, request.public_der, request.evidence
    )
    with pytest.raises(JoinRefused, match="not bound to this exchange"):
        request.open(answer.model_copy(update={"public_key": base64.b64encode(junk).decode()}))
