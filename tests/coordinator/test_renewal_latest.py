"""Only the latest certificate of an instance renews it: in the core, across a restart, from a
version 1 state, under concurrent renewals and failed writes, with a bounded record."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import Evidence, EvidenceVerifier, SimulatedPlatform
from geode.coordinator import (
    ActivationRequest,
    Coordinator,
    CoordinatorSettings,
    CoordinatorState,
    GroupCommit,
    RenewalRequest,
    Sealer,
    State,
)
from geode.coordinator._latest import LatestCertificate, LatestCertificates
from geode.errors import SealError, StaleCertificate
from geode.pki import CertificateAuthority, LeafParams, public_key_der
from geode.protocol import key_binding, renewal_payload
from geode.testing import FakeClock, MemoryStore
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.simulated import simulated_tee

MEASUREMENT = bytes(range(32))
MANIFEST = json.dumps(
    {
        "version": 1,
        "trust_domain": "latest.geode.local",
        "packages": {"app": {"tee": "simulated", "measurement": MEASUREMENT.hex()}},
        "services": {"web": {"package": "app"}},
    }
).encode()

Held = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class Deployment:
    """One platform and sealing key; Coordinators over the same sealed state, as after restarts."""

    def __init__(self) -> None:
        self.platform = SimulatedPlatform.generate()
        self.sealing_key = os.urandom(32)
        self.clock = FakeClock()

    def coordinator(self, blob: bytes | None = None) -> Coordinator:
        c = Coordinator(
            CoordinatorSettings(simulation=True, leaf_lifetime=datetime.timedelta(hours=1)),
            EvidenceVerifier(simulation=True, platform_keys=[self.platform.public_key]),
            simulated_tee(self.platform, MEASUREMENT),
            self.sealing_key,
            clock=self.clock,
        )
        c.load(blob)
        return c

    def active(self) -> Coordinator:
        c = self.coordinator()
        c.set_manifest(MANIFEST)
        return c

    def bound(self, c: Coordinator) -> tuple[ec.EllipticCurvePrivateKey, bytes, str, Evidence]:
        key = ec.generate_private_key(ec.SECP256R1())
        nonce, _ = c.activation.issue_nonce()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(key, hashes.SHA256())
        )
        evidence = self.platform.quote(
            MEASUREMENT, key_binding(public_key_der(key.public_key()), nonce)
        )
        return key, nonce, csr.public_bytes(serialization.Encoding.PEM).decode(), evidence

    def activate(self, c: Coordinator) -> Held:
        key, nonce, csr, evidence = self.bound(c)
        return c.activation.activate(
            ActivationRequest("web", nonce, csr, evidence)
        ).value.certificate, key

    def renewal(
        self, c: Coordinator, held: Held
    ) -> tuple[RenewalRequest, ec.EllipticCurvePrivateKey]:
        current, current_key = held
        key, nonce, csr, evidence = self.bound(c)
        proof = current_key.sign(
            renewal_payload(nonce, public_key_der(key.public_key())), ec.ECDSA(hashes.SHA256())
        )
        pem = current.public_bytes(serialization.Encoding.PEM).decode()
        return RenewalRequest(nonce, csr, evidence, pem, proof), key

    def renew(self, c: Coordinator, held: Held) -> Held:
        request, key = self.renewal(c, held)
        return c.activation.renew(request).value, key


def _instance(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_the_latest_renews_again_and_again_and_the_superseded_never() -> None:
    d = Deployment()
    c = d.active()
    first = d.activate(c)
    second = d.renew(c, first)
    third = d.renew(c, second)
    assert _instance(third[0]) == _instance(first[0])
    for superseded in (first, second):
        with pytest.raises(StaleCertificate, match="has a newer certificate") as denied:
            d.renew(c, superseded)
        assert (denied.value.code, denied.value.status) == ("stale_certificate", 403)
        assert denied.value.reason == "stale certificate"
    d.renew(c, third)  # the refusals changed nothing


def test_instances_are_tracked_apart() -> None:
    d = Deployment()
    c = d.active()
    a, b = d.activate(c), d.activate(c)
    d.renew(c, a)
    d.renew(c, b)  # a's renewal does not touch b's latest
    with pytest.raises(StaleCertificate):
        d.renew(c, a)


def test_the_latest_survives_a_restart() -> None:
    d = Deployment()
    c = d.active()
    first = d.activate(c)
    latest = d.renew(c, first)
    again = d.coordinator(c.sealed_state())
    assert again.state is State.ACTIVE
    with pytest.raises(StaleCertificate):
        d.renew(again, first)
    d.renew(again, latest)


def test_an_unsaved_renewal_is_undone() -> None:
    d = Deployment()
    c = d.active()
    first = d.activate(c)
    request, _ = d.renewal(c, first)
    c.activation.renew(request).revert()  # what the API does when the write fails
    d.renew(c, first)  # the presented certificate is still the latest


def _version_1(c: Coordinator, sealing_key: bytes) -> bytes:
    """``c``'s state as a Coordinator before the record of latest certificates sealed it."""
    _, raw = Sealer.unseal(c.sealed_state(), sealing_key)
    doc = json.loads(raw)
    doc["version"] = 1
    del doc["latest_certificates"]
    return Sealer(sealing_key).seal(json.dumps(doc).encode())


def test_a_version_1_state_takes_each_instance_on_first_use_only() -> None:
    d = Deployment()
    c = d.active()
    first = d.activate(c)
    second = d.renew(c, first)  # two valid certificates of one instance, both to be untracked
    other = d.activate(c)
    d.clock.advance(datetime.timedelta(minutes=1))
    upgraded = d.coordinator(_version_1(c, d.sealing_key))
    assert upgraded.state is State.ACTIVE

    pinned = d.renew(upgraded, first)  # the first untracked certificate to renew wins...
    with pytest.raises(StaleCertificate, match="has a newer certificate"):
        d.renew(upgraded, second)  # ...and its sibling never renews
    fresh = d.activate(upgraded)
    d.renew(upgraded, d.renew(upgraded, fresh))  # new certificates are tracked from the start

    # Written back as the current version: the pin and the untracked era survive a restart.
    restarted = d.coordinator(upgraded.sealed_state())
    with pytest.raises(StaleCertificate):
        d.renew(restarted, second)
    d.renew(restarted, pinned)
    d.renew(restarted, other)  # untracked, never renewed: taken on first use


def test_a_fresh_state_takes_nothing_on_first_use() -> None:
    d = Deployment()
    c = d.active()
    first = d.activate(c)
    _, raw = Sealer.unseal(c.sealed_state(), d.sealing_key)
    doc = json.loads(raw)
    assert doc["version"] == 3  # version 3 keeps the record of version 2
    assert doc["latest_certificates"]["untracked_before"] is None
    doc["latest_certificates"]["instances"] = {}  # as if the entry had been pruned
    forgotten = d.coordinator(Sealer(d.sealing_key).seal(json.dumps(doc).encode()))
    with pytest.raises(StaleCertificate, match=r"no certificate of instance .* is on record"):
        d.renew(forgotten, first)


def test_a_version_1_state_without_activations_has_no_untracked_era() -> None:
    d = Deployment()
    c = d.active()
    state = CoordinatorState.from_bytes(
        Sealer.unseal(_version_1(c, d.sealing_key), d.sealing_key)[1], now=d.clock()
    )
    assert state.latest_certificates.untracked_before is None


@pytest.mark.parametrize(
    "latest",
    [
        {"untracked_before": None, "instances": {"i": ["zz", 1]}},
        {"untracked_before": None, "instances": {"i": ["ab", "1"]}},
        {"untracked_before": None, "instances": {"i": ["ab"]}},
        {"untracked_before": "2026-01-01T00:00:00", "instances": {}},  # no time zone
        {"instances": {}},
    ],
)
def test_a_malformed_record_is_unreadable(latest: object) -> None:
    d = Deployment()
    _, raw = Sealer.unseal(d.active().sealed_state(), d.sealing_key)
    doc = json.loads(raw)
    doc["latest_certificates"] = latest
    with pytest.raises(SealError, match="state is unreadable"):
        CoordinatorState.from_bytes(json.dumps(doc).encode(), now=d.clock())


def _leaf(
    ca: CertificateAuthority, lifetime: datetime.timedelta, now: FakeClock
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return ca.issue(LeafParams(key.public_key(), "x", lifetime=lifetime), clock=now)


def test_the_record_forgets_instances_whose_certificates_all_expired() -> None:
    clock = FakeClock()
    ca = CertificateAuthority.create_root(clock=clock).create_intermediate("mesh", clock=clock)
    hour, day = datetime.timedelta(hours=1), datetime.timedelta(days=1)
    latest = LatestCertificates()
    latest.record("short", _leaf(ca, hour, clock), clock())
    latest.record("long", _leaf(ca, hour, clock), clock())
    latest.record("long", _leaf(ca, day, clock), clock())
    latest.record("renewed-shorter", _leaf(ca, day, clock), clock())
    latest.record("renewed-shorter", _leaf(ca, hour, clock), clock())  # the older outlives it
    latest.record("pinned", _leaf(ca, hour, clock), clock(), keep_until=clock() + 2 * day)
    clock.advance(2 * hour)
    latest.prune(clock())
    assert {i for i in ("short", "long", "renewed-shorter", "pinned") if latest.get(i)} == {
        "long",
        "renewed-shorter",
        "pinned",
    }


def test_the_record_prunes_itself_as_it_grows() -> None:
    clock = FakeClock()
    ca = CertificateAuthority.create_root(clock=clock).create_intermediate("mesh", clock=clock)
    soon_expired = _leaf(ca, datetime.timedelta(minutes=1), clock)
    latest = LatestCertificates()
    for i in range(63):
        latest.record(f"old-{i}", soon_expired, clock())
    assert len(latest) == 63
    clock.advance(datetime.timedelta(hours=1))
    current = _leaf(ca, datetime.timedelta(hours=1), clock)
    latest.record("new", current, clock())  # the 64th entry: time to prune
    assert len(latest) == 1
    assert latest.get("new") == LatestCertificate(
        current.serial_number, int(current.not_valid_after_utc.timestamp())
    )


class Api:
    """Both APIs in-process over ASGI, with a store that can be made to fail."""

    def __init__(self) -> None:
        self.d = Deployment()
        self.coordinator = self.d.active()
        self.store = MemoryStore()
        self.client, self.mesh = in_process_apis(
            self.coordinator, GroupCommit(self.coordinator.sealed_state, self.store)
        )

    async def renew(self, held: Held) -> httpx.Response:
        request, _ = self.d.renewal(self.coordinator, held)
        body = {
            "nonce": request.nonce.hex(),
            "csr": request.csr,
            "evidence": request.evidence.to_json(),
            "certificate": request.certificate,
            "proof": base64.b64encode(request.proof).decode(),
        }
        return await self.mesh.post("/api/v1/mesh/renew", json=body)

    async def metrics(self) -> str:
        return (await self.client.get("/metrics")).text


def test_of_concurrent_renewals_with_one_certificate_exactly_one_wins() -> None:
    async def scenario() -> None:
        api = Api()
        held = api.d.activate(api.coordinator)
        answers = await asyncio.gather(*(api.renew(held) for _ in range(4)))
        assert sorted(a.status_code for a in answers) == [200, 403, 403, 403]
        for denied in (a for a in answers if a.status_code == 403):
            body = denied.json()
            assert body["error"] == "stale_certificate"
            assert body["reason"] == "stale certificate"
            assert "has a newer certificate" in body["detail"]
        metrics = await api.metrics()
        assert 'geode_renewals_total{outcome="ok"} 1.0' in metrics
        assert 'geode_renewals_total{outcome="stale_certificate"} 3.0' in metrics
        # The winner's certificate is on disk as the latest.
        _, raw = Sealer.unseal(api.store.saved[-1], api.d.sealing_key)
        winner = next(a for a in answers if a.status_code == 200).json()
        leaf = x509.load_pem_x509_certificate(winner["certificate_chain"][0].encode())
        instances = json.loads(raw)["latest_certificates"]["instances"]
        assert instances[_instance(held[0])][0] == format(leaf.serial_number, "x")

    asyncio.run(scenario())


def test_a_renewal_that_cannot_be_saved_leaves_the_latest_as_it_was() -> None:
    async def scenario() -> None:
        api = Api()
        held = api.d.activate(api.coordinator)
        api.store.fail = True
        failed = await api.renew(held)
        assert failed.status_code == 503
        assert failed.json()["error"] == "state_unavailable"
        assert "certificate_chain" not in failed.json()
        api.store.fail = False
        assert (await api.renew(held)).status_code == 200

    asyncio.run(scenario())
