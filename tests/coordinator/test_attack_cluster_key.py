"""The cluster key goes to Coordinators only: a simulated platform key trusted for services'
evidence signs evidence of any measurement, the Coordinator's too, and must not earn the key
that opens the sealed state (the mesh API in-process over ASGI, the real handover on both
ends, a ``MemoryStore``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import Coordinator, CoordinatorSettings, GroupCommit, HardwareTee, Sealer
from geode.coordinator._cluster import (
    JoinParty,
    JoinRequest,
    hand_over_cluster_key,
    read_answer,
)
from geode.errors import JoinRefused
from geode.pki import public_key_der
from geode.protocol import key_binding
from geode.testing import FakeClock, MemoryStore
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.fake_snp import SnpChip
from tests.coordinator.support.simulated import simulated_tee

MEASUREMENT = bytes(range(32))  # the Coordinator's own (simulated) measurement
SERVICE = bytes(32 * [7])
MANIFEST = json.dumps(
    {
        "version": 1,
        "trust_domain": "join.geode.local",
        "packages": {"app": {"tee": "simulated", "measurement": SERVICE.hex()}},
        "services": {"web": {"package": "app"}},
    }
).encode()


class Node:
    """A Coordinator whose services may run on another simulated platform (``services``), as
    ``--trust-platform-key`` makes it, with its manifest set and its two APIs in-process."""

    def __init__(
        self, services: SimulatedPlatform, *, peer_verifier: EvidenceVerifier | None = None
    ) -> None:
        self.platform = SimulatedPlatform.generate()
        self.settings = CoordinatorSettings(simulation=True)
        extra = {} if peer_verifier is None else {"peer_verifier": peer_verifier}
        self.coordinator = Coordinator(
            self.settings,
            EvidenceVerifier(
                simulation=True, platform_keys=[self.platform.public_key, services.public_key]
            ),
            simulated_tee(self.platform, MEASUREMENT),
            os.urandom(32),
            clock=FakeClock(),
            **extra,  # type: ignore[arg-type]
        )
        self.coordinator.load(None)
        self.store = MemoryStore()
        self.client, self.mesh = in_process_apis(
            self.coordinator, GroupCommit(self.coordinator.sealed_state, self.store)
        )

    async def set_manifest(self) -> None:
        assert (await self.client.post("/api/v1/manifest", content=MANIFEST)).status_code == 201

    async def nonce(self) -> bytes:
        return bytes.fromhex((await self.mesh.post("/api/v1/mesh/nonce")).json()["nonce"])

    async def ask(self, party: JoinParty) -> tuple[JoinRequest, httpx.Response]:
        """What a Coordinator on ``party``'s platform sends to join (``_cluster._request_from``)."""
        request = JoinRequest(party, await self.nonce())
        body = request.body().model_dump(mode="json")
        return request, await self.mesh.post("/api/v1/mesh/cluster-key", json=body)

    async def activate(self, platform: SimulatedPlatform) -> httpx.Response:
        key = ec.generate_private_key(ec.SECP256R1())
        nonce = await self.nonce()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(key, hashes.SHA256())
        )
        quote = platform.quote(SERVICE, key_binding(public_key_der(key.public_key()), nonce))
        body = {
            "service": "web",
            "nonce": nonce.hex(),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "evidence": quote.to_json(),
        }
        return await self.mesh.post("/api/v1/mesh/activate", json=body)


def _party(platform: SimulatedPlatform, *trusted: SimulatedPlatform) -> JoinParty:
    keys = [p.public_key for p in (platform, *trusted)]
    return JoinParty(
        simulated_tee(platform, MEASUREMENT), EvidenceVerifier(simulation=True, platform_keys=keys)
    )


def test_a_key_trusted_for_services_does_not_earn_the_cluster_key() -> None:
    async def scenario() -> None:
        services = SimulatedPlatform.generate()
        node = Node(services)
        await node.set_manifest()
        # The key is trusted for services: their evidence activates.
        assert (await node.activate(services)).status_code == 200
        # Its holder claims the Coordinator's measurement (public: anyone can measure the
        # package) and asks for the cluster key: refused, typed, with nothing sealed to it.
        cluster_key = node.coordinator.cluster_key
        assert cluster_key is not None
        _, refused = await node.ask(_party(services, node.platform))
        assert refused.status_code == 403, refused.text
        body = refused.json()
        assert body["error"] == "join_refused"
        assert "untrusted simulated platform key" in body["message"]
        assert set(body) == {"error", "message"}
        assert base64.b64encode(cluster_key).decode() not in refused.text
        # Nothing of the state leaves with a refusal, and nothing changes.
        assert node.coordinator.cluster_key == cluster_key

    asyncio.run(scenario())


def test_a_coordinator_on_its_own_platform_still_joins() -> None:
    async def scenario() -> None:
        services = SimulatedPlatform.generate()
        node = Node(services)
        await node.set_manifest()
        # A peer on the same simulated platform (the same platform key): the legitimate join.
        request, answer = await node.ask(_party(node.platform))
        assert answer.status_code == 200, answer.text
        assert request.open(read_answer(answer.json())) == node.coordinator.cluster_key
        blob = node.store.blob
        assert blob is not None
        key = request.open(read_answer(answer.json()))
        assert Sealer.unseal(blob, os.urandom(32), key)[1]  # it opens the shared state

    asyncio.run(scenario())


def test_a_key_given_for_coordinators_earns_it_in_simulation_only() -> None:
    from geode.coordinator._cluster import coordinator_peer_verifier

    async def scenario() -> None:
        services, peers = SimulatedPlatform.generate(), SimulatedPlatform.generate()
        node = Node(
            services, peer_verifier=coordinator_peer_verifier(simulated_tee(), [peers.public_key])
        )
        await node.set_manifest()
        request, answer = await node.ask(_party(peers, node.platform))
        assert answer.status_code == 200, answer.text
        assert request.open(read_answer(answer.json())) == node.coordinator.cluster_key
        # The key of the services' platform is still not one of them.
        assert (await node.ask(_party(services, node.platform)))[1].status_code == 403

    asyncio.run(scenario())
    # A Coordinator not in simulation accepts no simulated evidence from a peer, whatever
    # keys it is given.
    platform = SimulatedPlatform.generate()
    chip = SnpChip.create()
    on_snp = HardwareTee.start(chip.launch(), EvidenceVerifier(trust=chip.trust))
    hardware = coordinator_peer_verifier(on_snp, [platform.public_key], trust=chip.trust)
    party = JoinParty(simulated_tee(platform, MEASUREMENT), hardware)
    request = JoinRequest(_party(platform), os.urandom(32))
    with pytest.raises(JoinRefused, match="simulation is not enabled"):
        party.check(request.evidence, request.evidence.data[80:144], "the newcomer")


def test_a_newcomer_takes_no_cluster_key_from_a_peer_on_a_services_platform() -> None:
    """The other direction: a host holding a key trusted for services cannot hand a joining
    Coordinator a cluster key (and with it a state) of its own making."""
    services = SimulatedPlatform.generate()
    newcomer = Node(services)
    party = newcomer.coordinator.cluster_keys.join_party()
    nonce = os.urandom(32)
    request = JoinRequest(party, nonce)
    forged = hand_over_cluster_key(
        _party(services, newcomer.platform), os.urandom(32), nonce, request.public_der,
        request.evidence,
    )  # fmt: skip
    with pytest.raises(JoinRefused, match="the peer's evidence does not verify"):
        request.open(forged)
