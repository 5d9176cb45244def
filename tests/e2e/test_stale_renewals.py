"""Only an instance's latest certificate renews it: real Coordinator process, real mesh API,
across a restart and under concurrent renewals."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from geode.attestation import SimulatedPlatform
from geode.client import CoordinatorClient
from geode.errors import ClientError, StaleCertificate
from geode.runtime import EvidenceProvider, activate, renew, simulated_evidence_provider
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess

pytestmark = pytest.mark.e2e

MEASUREMENT = bytes(range(32))
MANIFEST = {
    "version": 1,
    "trust_domain": "renewal.geode.local",
    "packages": {"app": {"tee": "simulated", "measurement": MEASUREMENT.hex()}},
    "services": {"web": {"package": "app"}},
}

Held = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


class Instance:
    """Talks to one Coordinator's mesh API as ``geode run`` does."""

    def __init__(self, coordinator: CoordinatorProcess, env: dict[str, str]) -> None:
        self.coordinator = coordinator
        platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
        self.provider: EvidenceProvider = simulated_evidence_provider(platform, MEASUREMENT)
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = x509.load_pem_x509_certificate(client.certificates().root.encode())

    def activate(self) -> Held:
        activation = activate(self.coordinator.mesh_addr, "web", self.provider, root=self.root)
        return activation.private_key, activation.certificate

    def renew(self, held: Held) -> Held:
        key, certificate = held
        new_key, chain = renew(
            self.coordinator.mesh_addr, certificate, key, self.provider, root=self.root
        )
        return new_key, chain[0]

    def refused_as_stale(self, held: Held) -> None:
        # geode.runtime raises the refusal as StaleCertificate (same status and code).
        with pytest.raises((ClientError, StaleCertificate)) as refused:
            self.renew(held)
        assert (refused.value.status, refused.value.code) == (403, "stale_certificate")

    def stale_count(self) -> float:
        text = httpx.get(f"https://{self.coordinator.client_addr}/metrics", verify=False).text
        for line in text.splitlines():
            if line.startswith('geode_renewals_total{outcome="stale_certificate"}'):
                return float(line.split()[-1])
        return 0.0


def test_only_the_latest_certificate_renews_across_a_restart(
    start_coordinator: StartCoordinator, geode_env: dict[str, str]
) -> None:
    first_run = start_coordinator()
    with CoordinatorClient(first_run.client_addr, insecure=True) as client:
        client.set_manifest(json.dumps(MANIFEST).encode())
    instance = Instance(first_run, geode_env)
    activated = instance.activate()
    renewed = instance.renew(activated)
    latest = instance.renew(renewed)  # the latest renews, twice in a row
    assert latest[1].subject == activated[1].subject
    instance.refused_as_stale(renewed)
    instance.refused_as_stale(activated)
    assert instance.stale_count() == 2
    assert first_run.stop() == 0

    second_run = start_coordinator(first_run.data_dir)
    instance = Instance(second_run, geode_env)
    instance.refused_as_stale(renewed)  # the record survived the restart
    instance.renew(latest)


def test_of_concurrent_renewals_with_one_certificate_exactly_one_wins(
    coordinator: CoordinatorProcess, geode_env: dict[str, str]
) -> None:
    with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
        client.set_manifest(json.dumps(MANIFEST).encode())
    instance = Instance(coordinator, geode_env)
    held = instance.activate()

    def attempt(_: int) -> Held | ClientError | StaleCertificate:
        try:
            return instance.renew(held)
        except (ClientError, StaleCertificate) as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    winners = [o for o in outcomes if not isinstance(o, ClientError | StaleCertificate)]
    losers = [o for o in outcomes if isinstance(o, ClientError | StaleCertificate)]
    assert len(winners) == 1
    assert [(e.status, e.code) for e in losers] == [(403, "stale_certificate")] * 3
    instance.renew(winners[0])
