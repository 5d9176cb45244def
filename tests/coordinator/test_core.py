"""The Coordinator's state machine in-process: manifest, activation, secrets, persistence."""

from __future__ import annotations

import datetime
import json
import logging
import os

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
    RenewalRequest,
    State,
)
from geode.errors import ActivationDenied, CoordinatorUnavailable, ManifestConflict
from geode.manifest import SERVICE_KEY_MARKER
from geode.pki import CertificateAuthority, LeafParams, public_key_der
from geode.protocol import key_binding, renewal_payload
from geode.testing import FakeClock
from tests.coordinator.support.simulated import simulated_tee

MEASUREMENT = bytes(range(32))
SEALING_KEY = os.urandom(32)


def _manifest(**extra_secrets: object) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "trust_domain": "unit.geode.local",
            "packages": {"app": {"tee": "simulated", "measurement": MEASUREMENT.hex()}},
            "services": {
                "web": {
                    "package": "app",
                    "files": {
                        "own.pem": "{{ secrets.own.cert | pem }}",
                        "shared.pem": "{{ secrets.shared.cert | pem }}",
                        "key.pem": "{{ geode.service_key | pem }}",
                        "note": "{{ secrets.note | raw }}",
                    },
                }
            },
            "secrets": {
                "own": {"type": "cert-ed25519"},
                "shared": {"type": "cert-rsa", "size": 2048, "shared": True},
                "note": {"type": "plain"},
                **extra_secrets,
            },
        }
    ).encode()


@pytest.fixture
def platform() -> SimulatedPlatform:
    return SimulatedPlatform.generate()


@pytest.fixture
def coordinator(platform: SimulatedPlatform) -> Coordinator:
    c = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        SEALING_KEY,
    )
    c.load(None)
    return c


def _bound(
    c: Coordinator, platform: SimulatedPlatform, name: str
) -> tuple[ec.EllipticCurvePrivateKey, bytes, str, Evidence]:
    """A fresh key, a nonce, a CSR for the key and evidence binding both."""
    key = ec.generate_private_key(ec.SECP256R1())
    nonce, _ = c.activation.issue_nonce()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    evidence = platform.quote(MEASUREMENT, key_binding(public_key_der(key.public_key()), nonce))
    return key, nonce, csr.public_bytes(serialization.Encoding.PEM).decode(), evidence


def _request(
    c: Coordinator, platform: SimulatedPlatform, service: str = "web"
) -> ActivationRequest:
    _, nonce, csr, evidence = _bound(c, platform, service)
    return ActivationRequest(service, nonce, csr, evidence)


def test_states_and_manifest_once(coordinator: Coordinator) -> None:
    assert coordinator.state is State.AWAITING_MANIFEST
    result = coordinator.set_manifest(_manifest())
    assert coordinator.state is State.ACTIVE
    assert len(bytes.fromhex(result.sha256)) == 32
    with pytest.raises(ManifestConflict):
        coordinator.set_manifest(_manifest())


def test_per_instance_and_shared_certificates(
    coordinator: Coordinator, platform: SimulatedPlatform
) -> None:
    coordinator.set_manifest(_manifest())
    a = coordinator.activation.activate(_request(coordinator, platform)).value
    b = coordinator.activation.activate(_request(coordinator, platform)).value
    assert a.files["own.pem"] != b.files["own.pem"]  # non-shared: one per instance
    assert a.files["shared.pem"] == b.files["shared.pem"]
    assert a.files["key.pem"] == SERVICE_KEY_MARKER.encode()  # the launcher fills it in
    assert a.files["note"] == b""  # user-defined, not set yet
    assert a.certificate.not_valid_after_utc <= coordinator.mesh_ca_certificate.not_valid_after_utc


def test_an_activation_is_logged_with_its_verdict(
    coordinator: Coordinator, platform: SimulatedPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator.set_manifest(_manifest())
    with caplog.at_level(logging.INFO, logger="geode.coordinator"):
        result = coordinator.activation.activate(_request(coordinator, platform)).value
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("activated ")]
    assert len(lines) == 1
    assert lines[0].endswith("(tee simulated, status Simulated, checked signature,reference)")
    assert result.instance_id in lines[0]


def test_state_survives_sealing(coordinator: Coordinator, platform: SimulatedPlatform) -> None:
    coordinator.set_manifest(_manifest())
    first = coordinator.activation.activate(_request(coordinator, platform)).value
    blob = coordinator.sealed_state()
    again = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        SEALING_KEY,
    )
    again.load(blob)
    assert again.state is State.ACTIVE
    assert again.root_certificate == coordinator.root_certificate
    assert again.status().activations == {"web": 1}
    second = again.activation.activate(_request(again, platform)).value
    assert second.files["shared.pem"] == first.files["shared.pem"]


def test_unopenable_state_means_recovery(platform: SimulatedPlatform) -> None:
    c = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        SEALING_KEY,
    )
    c.load(b"GEODESEALED\0garbage")
    assert c.state is State.RECOVERY
    assert c.status().state == "recovery"
    with pytest.raises(CoordinatorUnavailable):
        c.activation.issue_nonce()
    with pytest.raises(CoordinatorUnavailable):
        c.sealed_state()


def test_denial_spends_the_nonce(coordinator: Coordinator, platform: SimulatedPlatform) -> None:
    coordinator.set_manifest(_manifest())
    request = _request(coordinator, platform, service="nope")
    with pytest.raises(ActivationDenied, match="unknown service"):
        coordinator.activation.activate(request)
    retry = ActivationRequest("web", request.nonce, request.csr, request.evidence)
    with pytest.raises(ActivationDenied, match="nonce expired or reused"):
        coordinator.activation.activate(retry)


def test_statement_binds_root_manifest_and_nonce(coordinator: Coordinator) -> None:
    before = coordinator.statement(b"n" * 32)
    assert before.manifest_sha256 is None
    coordinator.set_manifest(_manifest())
    after = coordinator.statement(b"n" * 32)
    assert after.manifest_sha256 is not None
    assert after.evidence != before.evidence
    assert after.root_certificate == before.root_certificate


def _renewal(
    c: Coordinator,
    platform: SimulatedPlatform,
    current: x509.Certificate,
    current_key: ec.EllipticCurvePrivateKey,
) -> RenewalRequest:
    key, nonce, csr, evidence = _bound(c, platform, "renewal")
    proof = current_key.sign(
        renewal_payload(nonce, public_key_der(key.public_key())), ec.ECDSA(hashes.SHA256())
    )
    certificate = current.public_bytes(serialization.Encoding.PEM).decode()
    return RenewalRequest(nonce, csr, evidence, certificate, proof)


def _activated(
    c: Coordinator, platform: SimulatedPlatform
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key, nonce, csr, evidence = _bound(c, platform, "web")
    return c.activation.activate(
        ActivationRequest("web", nonce, csr, evidence)
    ).value.certificate, key


def test_renewal_keeps_the_instance_and_counts_nothing(
    coordinator: Coordinator, platform: SimulatedPlatform
) -> None:
    coordinator.set_manifest(_manifest())
    current, key = _activated(coordinator, platform)
    renewed = coordinator.activation.renew(_renewal(coordinator, platform, current, key)).value
    assert renewed.subject == current.subject  # CN = the same instance id
    assert renewed.serial_number != current.serial_number
    assert renewed.public_key() != current.public_key()
    assert coordinator.status().activations == {"web": 1}


def test_renewal_refusals(coordinator: Coordinator, platform: SimulatedPlatform) -> None:
    coordinator.set_manifest(_manifest())
    current, key = _activated(coordinator, platform)
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ActivationDenied, match="no proof of the current key"):
        coordinator.activation.renew(_renewal(coordinator, platform, current, stranger))
    other = CertificateAuthority.create_root().create_intermediate("other")
    foreign = other.issue(LeafParams(key.public_key(), "x"))
    with pytest.raises(ActivationDenied, match="not from the current mesh CA"):
        coordinator.activation.renew(_renewal(coordinator, platform, foreign, key))
    request = _renewal(coordinator, platform, current, key)
    coordinator.activation.renew(request)
    with pytest.raises(ActivationDenied, match="nonce expired or reused"):
        coordinator.activation.renew(request)


def test_renewal_of_an_expired_certificate_is_refused(platform: SimulatedPlatform) -> None:
    clock = FakeClock()
    c = Coordinator(
        CoordinatorSettings(simulation=True, leaf_lifetime=datetime.timedelta(seconds=10)),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, MEASUREMENT),
        SEALING_KEY,
        clock=clock,
    )
    c.load(None)
    c.set_manifest(_manifest())
    current, key = _activated(c, platform)
    clock.advance(datetime.timedelta(seconds=11))
    with pytest.raises(ActivationDenied, match="certificate expired"):
        c.activation.renew(_renewal(c, platform, current, key))
