"""Every activation denial, against a real Coordinator process, which keeps serving after each."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import Evidence, SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied
from geode.pki import public_key_der
from geode.protocol import key_binding
from geode.runtime import Activation, activate, simulated_evidence_provider
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess, sample_manifest

pytestmark = pytest.mark.e2e


class Deployment:
    """A Coordinator with a manifest set, and the means to activate against it."""

    def __init__(self, coordinator: CoordinatorProcess, bundle: Path, env: dict[str, str]) -> None:
        self.coordinator = coordinator
        self.measurement = measure_bundle(bundle)
        self.platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = x509.load_pem_x509_certificate(client.certificates().root.encode())
        self.mesh = httpx.Client(
            base_url=f"https://{coordinator.mesh_addr}", verify=False, timeout=30
        )

    def set_manifest(self, text: str) -> None:
        with CoordinatorClient(self.coordinator.client_addr, root=self.root) as client:
            client.set_manifest(text.encode())

    def activate(
        self,
        service: str = "web",
        *,
        platform: SimulatedPlatform | None = None,
        measurement: bytes | None = None,
    ) -> Activation:
        provider = simulated_evidence_provider(
            platform or self.platform, measurement or self.measurement
        )
        return activate(self.coordinator.mesh_addr, service, provider, root=self.root)

    def nonce(self) -> bytes:
        return bytes.fromhex(self.mesh.post("/api/v1/mesh/nonce").json()["nonce"])

    def raw_activate(
        self,
        nonce: bytes,
        *,
        service: str = "web",
        evidence_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> httpx.Response:
        """The protocol by hand, so a test can bend one step of it."""
        key = ec.generate_private_key(ec.SECP256R1())
        bound = evidence_key or key
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .sign(key, hashes.SHA256())
        )
        evidence = self.platform.quote(
            self.measurement, key_binding(public_key_der(bound.public_key()), nonce)
        )
        return self.mesh.post(
            "/api/v1/mesh/activate",
            json={
                "service": service,
                "nonce": nonce.hex(),
                "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                "evidence": evidence.to_json(),
            },
        )

    def close(self) -> None:
        self.mesh.close()


@pytest.fixture
def deployment(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str]
) -> Callable[..., Deployment]:
    made: list[Deployment] = []

    def make(*args: str, **service: object) -> Deployment:
        d = Deployment(start_coordinator(None, *args), bundle, geode_env)
        d.set_manifest(sample_manifest(d.measurement.hex(), **service))
        made.append(d)
        return d

    yield make  # type: ignore[misc]
    for d in made:
        d.close()


def _denied(call: Callable[[], object]) -> ActivationDenied:
    with pytest.raises(ActivationDenied) as info:
        call()
    return info.value


def _still_serving(d: Deployment) -> None:
    assert d.activate("worker").spiffe_id.endswith("/service/worker")


def test_wrong_measurement(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    denied = _denied(lambda: d.activate(measurement=bytes(32)))
    assert denied.reason == "measurement mismatch"
    _still_serving(d)


def test_unknown_service(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    assert _denied(lambda: d.activate("nope")).reason == "unknown service"
    _still_serving(d)


def test_max_activations(deployment: Callable[..., Deployment]) -> None:
    d = deployment(max_activations=2)
    first, second = d.activate(), d.activate()
    assert first.instance_id != second.instance_id
    assert _denied(d.activate).reason == "max_activations reached"
    _still_serving(d)
    assert d.coordinator.status()["activations"] == {"web": 2, "worker": 1}


def test_untrusted_platform_key(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    denied = _denied(lambda: d.activate(platform=SimulatedPlatform.generate()))
    assert denied.reason == "evidence verification failed"
    assert "platform_key_id" in denied.detail
    _still_serving(d)


def test_reused_nonce(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    nonce = d.nonce()
    assert d.raw_activate(nonce).status_code == 200
    again = d.raw_activate(nonce)
    assert again.status_code == 403
    assert again.json()["reason"] == "nonce expired or reused"
    _still_serving(d)


def test_unknown_nonce(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    answer = d.raw_activate(bytes(32))
    assert answer.status_code == 403
    assert answer.json()["reason"] == "nonce expired or reused"


def test_expired_nonce(deployment: Callable[..., Deployment]) -> None:
    d = deployment("--nonce-ttl", "1s")
    nonce = d.nonce()
    time.sleep(1.3)
    answer = d.raw_activate(nonce)
    assert answer.status_code == 403
    assert answer.json()["reason"] == "nonce expired or reused"
    _still_serving(d)


def test_evidence_bound_to_another_key(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    other = ec.generate_private_key(ec.SECP256R1())
    answer = d.raw_activate(d.nonce(), evidence_key=other)
    assert answer.status_code == 403
    body = answer.json()
    assert body["error"] == "activation_denied"
    assert body["reason"] == "evidence not bound to this key and nonce"
    _still_serving(d)


def test_manifest_not_set(
    start_coordinator: StartCoordinator, bundle: Path, geode_env: dict[str, str]
) -> None:
    d = Deployment(start_coordinator(), bundle, geode_env)
    try:
        assert _denied(d.activate).reason == "manifest not set"
    finally:
        d.close()


def test_denials_are_counted(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    _denied(lambda: d.activate(measurement=bytes(32)))
    d.activate()
    metrics = httpx.get(f"https://{d.coordinator.client_addr}/metrics", verify=False).text
    assert 'geode_activations_total{outcome="measurement_mismatch",service="web"} 1.0' in metrics
    assert 'geode_activations_total{outcome="ok",service="web"} 1.0' in metrics


@pytest.mark.parametrize(
    ("kind", "detail"), [("sgx", ""), ("nvidia", "GPU evidence attests no service")]
)
def test_evidence_that_does_not_verify_is_denied(
    deployment: Callable[..., Deployment], kind: str, detail: str
) -> None:
    d = deployment()
    evidence = Evidence(kind, b"\0" * 64)
    denied = _denied(
        lambda: activate(d.coordinator.mesh_addr, "web", lambda _: evidence, root=d.root)
    )
    assert denied.reason == "evidence verification failed"
    assert detail in denied.detail
    _still_serving(d)


def test_activation_response_has_no_unrequested_secrets(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment()
    worker = d.activate("worker")
    assert worker.secrets == {}
    web = d.activate("web")
    assert set(web.secrets) == {"api_token", "db_key", "tls"}
    assert json.dumps({name: s.to_json() for name, s in web.secrets.items()})  # plain JSON
