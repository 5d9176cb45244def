"""Activation: prove what runs, receive an identity.

The instance generates its key pair itself, asks the Coordinator for a nonce, obtains evidence whose
report data binds ``sha256(public key DER || nonce)``, and sends evidence and CSR. The private key
never leaves the instance.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ValidationError

from geode.attestation import Evidence, SimulatedPlatform
from geode.errors import ClientError, PKIError, StoreConflict
from geode.manifest import MeshConfig
from geode.pki import load_certificate, load_certificates, private_key_pem, public_key_der
from geode.protocol import (
    ActivateBody,
    ActivationAnswer,
    EvidenceBody,
    NonceAnswer,
    RenewalAnswer,
    RenewBody,
    RequestBody,
    Routes,
    RouteSpec,
    SecretMaterial,
    check_coordinator_peer,
    coordinator_client_context,
    first_error,
    key_binding,
    raise_for_error,
    renewal_payload,
)

__all__ = [
    "Activation",
    "EvidenceProvider",
    "activate",
    "renew",
    "simulated_evidence_provider",
]

STORE_CONFLICT_ATTEMPTS = 3  # Coordinators sharing an etcd store: lost races are tried again

EvidenceProvider = Callable[[bytes], Evidence]


def simulated_evidence_provider(
    platform: SimulatedPlatform, measurement: bytes, *, debug: bool = False
) -> EvidenceProvider:
    def provide(report_data: bytes) -> Evidence:
        return platform.quote(measurement, report_data, debug=debug)

    return provide


@dataclass(frozen=True)
class Activation:
    """What an instance received from the Coordinator."""

    instance_id: str
    spiffe_id: str
    private_key: ec.EllipticCurvePrivateKey
    certificate_chain: list[x509.Certificate]
    mesh_ca: x509.Certificate
    root_ca: x509.Certificate
    files: dict[str, bytes] = field(repr=False)
    env: dict[str, bytes] = field(repr=False)
    argv: list[bytes] = field(repr=False)
    secrets: dict[str, SecretMaterial] = field(repr=False)
    mesh: MeshConfig | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return self.certificate_chain[0]

    def private_key_pem(self) -> bytes:
        return private_key_pem(self.private_key)


_Answer = TypeVar("_Answer", bound=BaseModel)


def _post(
    http: httpx.Client,
    path: str,
    verified: bool,
    model: type[_Answer],
    body: RequestBody | None = None,
) -> _Answer:
    """POST ``body`` to the mesh API; its answer as ``model``. A refusal raises what it stands
    for (``ActivationDenied``, ``StaleCertificate``, else ``ClientError`` with its code)."""
    try:
        response = http.post(path, json=body.model_dump() if body is not None else None)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the Coordinator's mesh API: {exc}") from None
    if verified:
        check_coordinator_peer(response)
    try:
        answer: Any = response.json()
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except ValueError:
        raise ClientError(
            f"the Coordinator answered {response.status_code} without JSON",
            status=response.status_code,
        ) from None
    if response.status_code >= 400:
        raise_for_error(response.status_code, answer, f"HTTP {response.status_code}")
    try:
        return model.model_validate(answer)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise ClientError(f"malformed answer from the Coordinator: {where}: {message}") from None


class _MeshCall:
    """One exchange with the mesh API: a fresh key and CSR, a nonce, evidence bound to both."""

    def __init__(
        self,
        address: str,
        evidence_provider: EvidenceProvider,
        root: x509.Certificate | None,
        insecure: bool,
        timeout: float,
        http: httpx.Client | None,
    ) -> None:
        # Refused here, before any key or connection: no root and no insecure=True.
        context = coordinator_client_context(root, insecure=insecure)
        self.root = root
        self.verified = not insecure
        self._own = http is None
        self.http = http or httpx.Client(
            base_url=f"https://{address}", verify=context, timeout=timeout
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.evidence_provider = evidence_provider

    def csr(self, common_name: str) -> str:
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(self.key, hashes.SHA256())
        )
        return request.public_bytes(serialization.Encoding.PEM).decode()

    def nonce_and_evidence(self) -> tuple[bytes, Evidence]:
        issued = _post(self.http, Routes.nonce.path, self.verified, NonceAnswer)
        try:
            nonce = bytes.fromhex(issued.nonce)
        except ValueError:
            raise ClientError("malformed nonce answer from the Coordinator") from None
        binding = key_binding(public_key_der(self.key.public_key()), nonce)
        return nonce, self.evidence_provider(binding)

    def exchange(
        self,
        route: RouteSpec,
        model: type[_Answer],
        body: Callable[[bytes, Evidence], RequestBody],
    ) -> _Answer:
        """POST ``body(nonce, evidence)`` with a fresh nonce. A 409 ``store_conflict`` (another
        Coordinator saved the shared state first; this one undid the change and handed out
        nothing) is tried again, with a new nonce, on the state the Coordinator has read again."""
        for attempt in range(1, STORE_CONFLICT_ATTEMPTS + 1):
            nonce, evidence = self.nonce_and_evidence()
            try:
                return _post(self.http, route.path, self.verified, model, body(nonce, evidence))
            except ClientError as exc:
                if exc.code != StoreConflict.code or attempt == STORE_CONFLICT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def chain(
        self, answer: ActivationAnswer | RenewalAnswer
    ) -> tuple[list[x509.Certificate], x509.Certificate, x509.Certificate]:
        """The issued chain, checked: it carries our key and chains to the (pinned) root."""
        try:
            chain = load_certificates("".join(answer.certificate_chain), "certificate_chain")
            mesh_ca = load_certificate(answer.mesh_ca, "mesh_ca")
            root_ca = load_certificate(answer.root_ca, "root_ca")
        except (ValueError, PKIError) as exc:
            raise ClientError(f"malformed answer from the Coordinator: {exc}") from None
        ours = public_key_der(self.key.public_key())
        if not chain or public_key_der(chain[0].public_key()) != ours:
            raise ClientError("the issued certificate does not carry this instance's key")
        try:
            chain[0].verify_directly_issued_by(mesh_ca)
            mesh_ca.verify_directly_issued_by(root_ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ClientError(
                "the issued certificate does not chain to the deployment's root"
            ) from None
        if self.root is not None and root_ca != self.root:
            raise ClientError("the Coordinator answered with another deployment's root certificate")
        return chain, mesh_ca, root_ca

    def close(self) -> None:
        if self._own:
            self.http.close()


def activate(
    address: str,
    service: str,
    evidence_provider: EvidenceProvider,
    *,
    root: x509.Certificate | None,
    insecure: bool = False,
    timeout: float = 30.0,
    http: httpx.Client | None = None,
) -> Activation:
    """Activate one instance of ``service`` at the mesh API ``address`` (``HOST:PORT``).

    The Coordinator's certificate is verified against ``root``; not verifying it takes
    ``root=None`` and ``insecure=True`` (a missing root alone is a ``ClientError``): callers
    decide whether that is acceptable and say so.
    """
    call = _MeshCall(address, evidence_provider, root, insecure, timeout, http)
    try:
        body = call.exchange(
            Routes.activate,
            ActivationAnswer,
            lambda nonce, evidence: ActivateBody(
                service=service,
                nonce=nonce.hex(),
                csr=call.csr(service),
                evidence=EvidenceBody.of(evidence),
            ),
        )
        chain, mesh_ca, root_ca = call.chain(body)
    finally:
        call.close()
    try:
        return Activation(
            instance_id=body.instance_id,
            spiffe_id=body.spiffe_id,
            private_key=call.key,
            certificate_chain=chain,
            mesh_ca=mesh_ca,
            root_ca=root_ca,
            files={p: base64.b64decode(v) for p, v in body.files.items()},
            env={k: base64.b64decode(v) for k, v in body.env.items()},
            argv=[base64.b64decode(v) for v in body.argv],
            secrets=dict(body.secrets),
            mesh=body.mesh,
        )
    except ValueError as exc:
        raise ClientError(f"malformed activation answer: {exc}") from None


def renew(
    address: str,
    certificate: x509.Certificate,
    private_key: ec.EllipticCurvePrivateKey,
    evidence_provider: EvidenceProvider,
    *,
    root: x509.Certificate | None,
    insecure: bool = False,
    timeout: float = 30.0,
) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """A fresh key and certificate chain for a running instance, before the old one expires.

    The instance proves what it runs again (fresh evidence) and that it holds the current key;
    it keeps its instance id. ``root`` and ``insecure`` are as for ``activate``.
    """
    call = _MeshCall(address, evidence_provider, root, insecure, timeout, None)
    try:

        def request(nonce: bytes, evidence: Evidence) -> RenewBody:
            proof = private_key.sign(
                renewal_payload(nonce, public_key_der(call.key.public_key())),
                ec.ECDSA(hashes.SHA256()),
            )
            return RenewBody(
                nonce=nonce.hex(),
                csr=call.csr("renewal"),
                evidence=EvidenceBody.of(evidence),
                certificate=certificate.public_bytes(serialization.Encoding.PEM).decode(),
                proof=base64.b64encode(proof).decode(),
            )

        body = call.exchange(Routes.renew, RenewalAnswer, request)
        chain, _, _ = call.chain(body)
    finally:
        call.close()
    return call.key, chain
