"""A Python client for the Coordinator's client API, and the pinned roots it trusts.

Every call goes over TLS verified against the deployment's root certificate, which ``geode
verify`` pins after checking the deployment statement. ``insecure=True`` skips verification and
exists for first contact and debugging only. A user of the manifest passes ``identity`` (their
certificate and key files): the client API authenticates users by TLS client certificate. The
answers are the models of ``geode.protocol``; a refusal raises ``ClientError`` with its code.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, TypeAdapter, ValidationError

from geode._files import replace_file, xdg_path
from geode.attestation import ReferenceValues, TrustAnchors
from geode.client._policy import VerificationPolicy
from geode.client._recovery import verify_recovery_offer
from geode.client._statement import VerifiedStatement, statement_manifest, verify_statement
from geode.errors import ClientError
from geode.pki import certificate_pem, load_certificate
from geode.protocol import (
    AcknowledgeAnswer,
    AuditLogAnswer,
    CancelAnswer,
    CertificatesAnswer,
    ClientIdentity,
    CoordinatorStatus,
    DeploymentStatement,
    ManifestInfo,
    ManifestLog,
    ManifestLogEntry,
    ManifestSetResult,
    PendingUpdate,
    PendingUpdateAnswer,
    RecoveryOffer,
    RecoveryProgress,
    RecoveryUpload,
    Routes,
    SecretAnswer,
    SecretBody,
    SecretSetAnswer,
    UpdateApplied,
    UpdatePending,
    UpdateRef,
    check_coordinator_peer,
    coordinator_client_context,
    first_error,
    raise_for_error,
)

__all__ = [
    "CONFIG_DIR_ENV",
    "CoordinatorClient",
    "config_dir",
    "load_pinned_root",
    "pin_root",
    "pinned_root_path",
]

CONFIG_DIR_ENV = "GEODE_CONFIG_DIR"

T = TypeVar("T")
_Model = TypeVar("_Model", bound=BaseModel)
_ACKNOWLEDGE: TypeAdapter[UpdateApplied | UpdatePending] = TypeAdapter(AcknowledgeAnswer)


def config_dir() -> Path:
    """``$GEODE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/geode`` (``~/.config/geode``)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else xdg_path("config")


def pinned_root_path(address: str | None = None) -> Path:
    """Where the root for ``address`` is pinned; ``None`` is the most recently verified root."""
    if address is None:
        return config_dir() / "root.pem"
    safe = address.replace(":", "_").replace("/", "_").replace("[", "").replace("]", "")
    return config_dir() / "roots" / f"{safe}.pem"


def pin_root(address: str, root: x509.Certificate) -> Path:
    pem = certificate_pem(root).encode()
    for path in (pinned_root_path(address), pinned_root_path()):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        replace_file(path, pem, mode=0o644)
    return pinned_root_path(address)


def load_pinned_root(address: str | None = None) -> x509.Certificate | None:
    path = pinned_root_path(address)
    try:
        return load_certificate(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


class CoordinatorClient:
    """Synchronous client for the client API at ``address`` (``HOST:PORT``)."""

    def __init__(
        self,
        address: str,
        *,
        root: x509.Certificate | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        identity: ClientIdentity | None = None,
    ) -> None:
        if root is None and not insecure:
            raise ClientError(
                f"no trusted root for {address}: run 'geode verify --coordinator {address}' first"
                " (or pass --insecure)"
            )
        self.address = address
        self._insecure = insecure
        self._root = None if insecure else root
        self._timeout = timeout
        self._identity = identity
        try:
            self._http = httpx.Client(
                base_url=f"https://{address}",
                verify=coordinator_client_context(self._root, identity, insecure=insecure),
                timeout=timeout,
            )
        except httpx.InvalidURL:
            raise ClientError(f"{address!r}: expected HOST:PORT") from None

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, model: type[_Model], method: str, path: str, **kwargs: Any) -> _Model:
        """One API call, its answer read as ``model``."""
        return self._read(TypeAdapter(model), method, path, **kwargs)

    def _read(self, adapter: TypeAdapter[T], method: str, path: str, **kwargs: Any) -> T:
        body = self._request(method, path, **kwargs)
        try:
            return adapter.validate_python(body)
        except ValidationError as exc:
            where, message = first_error(exc, "answer")
            raise ClientError(
                f"malformed answer from the Coordinator at {self.address}: {where}: {message}"
            ) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> object:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
            # The handshake is the only place a certificate that chains to nothing the
            # Coordinator knows can be refused (with TLS 1.3 the client sees the connection
            # closed before the answer): if the same server answers without it, it was that.
            if self._identity is not None and self._answers_without_identity():
                raise ClientError(
                    f"the Coordinator at {self.address} refused the client certificate "
                    f"{self._identity[0]}: it is no user's of this deployment",
                    code="certificate_refused",
                ) from None
            if isinstance(exc, httpx.ConnectError):
                raise ClientError(
                    f"cannot reach the Coordinator at {self.address}: {exc}"
                ) from None
            raise ClientError(f"talking to {self.address} failed: {exc}") from None
        except httpx.TimeoutException:
            raise ClientError(f"the Coordinator at {self.address} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to {self.address} failed: {exc}") from None
        if not self._insecure:
            check_coordinator_peer(response)
        if response.status_code >= 400:
            try:
                error: object = response.json()
            except ValueError:
                error = None
            raise_for_error(
                response.status_code, error, response.text.strip() or response.reason_phrase
            )
        try:
            answer: object = response.json()
            return answer
        except ValueError:
            raise ClientError(f"the Coordinator at {self.address} sent invalid JSON") from None

    def _answers_without_identity(self) -> bool:
        context = coordinator_client_context(self._root, insecure=self._insecure)
        try:
            with httpx.Client(verify=context, timeout=self._timeout) as probe:
                probe.get(f"https://{self.address}{Routes.status.path}")
        except httpx.HTTPError:
            return False
        return True

    def status(self) -> CoordinatorStatus:
        return self._call(CoordinatorStatus, "GET", Routes.status.path)

    def get_manifest(self) -> ManifestInfo:
        """The manifest in force; ``ClientError`` when its text is not what its hash says."""
        info = self._call(ManifestInfo, "GET", Routes.manifest.path)
        _check_sha256(info.manifest, info.sha256, "the manifest")
        return info

    def set_manifest(self, raw: bytes) -> ManifestSetResult:
        return self._call(
            ManifestSetResult,
            "POST",
            Routes.set_manifest.path,
            content=raw,
            headers={"content-type": _manifest_type(raw)},
        )

    def attestation(self, nonce: bytes) -> DeploymentStatement:
        """The deployment statement for ``nonce``, not verified yet (``verify_statement``);
        ``StatementError`` when it is not even shaped like one."""
        body = self._request("GET", Routes.attestation.path, params={"nonce": nonce.hex()})
        return DeploymentStatement.from_json(body)

    def verified_statement(
        self,
        *,
        reference: ReferenceValues | None = None,
        policy: VerificationPolicy | None = None,
        platform_keys: Sequence[Ed25519PublicKey] = (),
        trust: TrustAnchors | None = None,
    ) -> VerifiedStatement:
        """A fresh deployment statement (for a nonce of this call's own), verified against
        ``reference`` or ``policy`` under ``trust`` (``verify_statement``; ``StatementError``
        naming what failed)."""
        nonce = os.urandom(32)
        statement = self.attestation(nonce)
        return verify_statement(
            statement,
            reference=reference,
            policy=policy,
            platform_keys=platform_keys,
            nonce=nonce,
            trust=trust,
        )

    def deployed_manifest(self, root: x509.Certificate) -> bytes | None:
        """The SHA-256 of the manifest the deployment runs now, as a fresh statement carrying
        ``root`` (already trusted, pinned) vouches for it; ``None`` before one is set."""
        nonce = os.urandom(32)
        return statement_manifest(self.attestation(nonce), root=root, nonce=nonce)

    def certificates(self) -> CertificatesAnswer:
        return self._call(CertificatesAnswer, "GET", Routes.certificates.path)

    # -- governance (``identity`` must be a user's) ---------------------------------------------

    def get_secret(self, name: str) -> bytes:
        """A secret's value: bytes, or for certificates the certificate and key in PEM."""
        answer = self._call(SecretAnswer, "GET", Routes.secret.url(name=name))
        return base64.b64decode(answer.value)

    def set_secret(self, name: str, value: bytes) -> SecretSetAnswer:
        body = SecretBody(value=base64.b64encode(value).decode())
        return self._call(
            SecretSetAnswer, "PUT", Routes.set_secret.url(name=name), json=body.model_dump()
        )

    def update(self, raw: bytes) -> UpdateApplied | UpdatePending:
        """A package update (``{"packages": ...}``) or a manifest update (a whole manifest)."""
        return self._read(
            _ACKNOWLEDGE,
            "POST",
            Routes.update.path,
            content=raw,
            headers={"content-type": _manifest_type(raw)},
        )

    def pending_update(self) -> PendingUpdate | None:
        """The pending manifest update; ``ClientError`` when its text is not what its hash says."""
        pending = self._call(PendingUpdateAnswer, "GET", Routes.pending_update.path).pending
        if pending is not None:
            _check_sha256(pending.manifest, pending.sha256, "the pending manifest")
        return pending

    def acknowledge_update(self, sha256: str) -> UpdateApplied | UpdatePending:
        body = UpdateRef(sha256=sha256)
        return self._read(
            _ACKNOWLEDGE, "POST", Routes.acknowledge_update.path, json=body.model_dump()
        )

    def cancel_update(self, sha256: str) -> CancelAnswer:
        body = UpdateRef(sha256=sha256)
        return self._call(CancelAnswer, "POST", Routes.cancel_update.path, json=body.model_dump())

    def manifest_log(self) -> list[ManifestLogEntry]:
        return self._call(ManifestLog, "GET", Routes.manifest_log.path).updates

    def audit_log(self) -> AuditLogAnswer:
        return self._call(AuditLogAnswer, "GET", Routes.audit.path)

    # -- recovery (no user: the Coordinator cannot read its manifest yet) ------------------------

    def recovery_offer(self, nonce: bytes) -> RecoveryOffer:
        return self._call(
            RecoveryOffer, "GET", Routes.recovery_offer.path, params={"nonce": nonce.hex()}
        )

    def verified_recovery_offer(
        self,
        *,
        reference: ReferenceValues,
        platform_keys: Sequence[Ed25519PublicKey] = (),
        trust: TrustAnchors | None = None,
    ) -> tuple[RecoveryOffer, rsa.RSAPublicKey]:
        """A recovering Coordinator's offer for a nonce of this call's own, and the key its
        evidence vouches for (``verify_recovery_offer``; ``StatementError`` otherwise)."""
        nonce = os.urandom(32)
        offer = self.recovery_offer(nonce)
        key = verify_recovery_offer(
            offer, reference=reference, platform_keys=platform_keys, nonce=nonce, trust=trust
        )
        return offer, key

    def upload_share(self, party: str, share: bytes, signature: bytes) -> RecoveryProgress:
        body = RecoveryUpload(
            party=party,
            share=base64.b64encode(share).decode(),
            signature=base64.b64encode(signature).decode(),
        )
        return self._call(RecoveryProgress, "POST", Routes.recover.path, json=body.model_dump())


def _check_sha256(text: str, sha256: str, what: str) -> None:
    if hashlib.sha256(text.encode()).hexdigest() != sha256:
        raise ClientError(f"{what} does not match its stated sha256")


def _manifest_type(raw: bytes) -> str:
    return "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
