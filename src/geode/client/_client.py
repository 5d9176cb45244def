"""A Python client for the Coordinator's client API, and the pinned roots it trusts.

Every call goes over TLS verified against the deployment's root certificate, which ``geode
verify`` pins after checking the deployment statement. ``insecure=True`` skips verification and
exists for first contact and debugging only. A user of the manifest passes ``identity`` (their
certificate and key files): the client API authenticates users by TLS client certificate.
"""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from geode._files import xdg_path
from geode.errors import ClientError
from geode.pki import COORDINATOR_URI, certificate_pem, load_certificate, uri_sans

__all__ = [
    "CONFIG_DIR_ENV",
    "ClientIdentity",
    "CoordinatorClient",
    "check_coordinator_peer",
    "client_ssl_context",
    "config_dir",
    "load_pinned_root",
    "pin_root",
    "pinned_root_path",
]

CONFIG_DIR_ENV = "GEODE_CONFIG_DIR"
API = "/api/v1"

ClientIdentity = tuple[Path, Path]  # a user's certificate and private key, PEM files


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
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, path)
    return pinned_root_path(address)


def load_pinned_root(address: str | None = None) -> x509.Certificate | None:
    path = pinned_root_path(address)
    try:
        return load_certificate(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


def check_coordinator_peer(response: httpx.Response) -> None:
    """Refuse a TLS peer that chains to the root but is not the Coordinator itself.

    The root also issues certificates that services and secret holders own; only the
    Coordinator's carries ``COORDINATOR_URI``.
    """
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    # The low-level _ssl socket httpcore hands out takes the flag positionally only.
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    if not der or COORDINATOR_URI not in uri_sans(x509.load_der_x509_certificate(der)):
        raise ClientError(
            "the server's certificate chains to the deployment root but is not the "
            "Coordinator's: refusing to talk to it"
        )


def client_ssl_context(
    root: x509.Certificate | None, identity: ClientIdentity | None = None
) -> ssl.SSLContext:
    """Strict TLS to a Coordinator: only ``root`` is trusted. ``None`` disables verification.
    ``identity`` is the user's certificate and key, sent when the Coordinator asks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=certificate_pem(root))
    if identity is not None:
        cert_file, key_file = identity
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(
                f"cannot use the client certificate {cert_file} with key {key_file}: {exc}"
            ) from None
    return context


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
        self._verified = not insecure
        self._root = None if insecure else root
        self._timeout = timeout
        self._identity = identity
        try:
            self._http = httpx.Client(
                base_url=f"https://{address}",
                verify=client_ssl_context(None if insecure else root, identity),
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

    def _call(self, method: str, path: str, *fields: str, **kwargs: Any) -> dict[str, Any]:
        """One API call; the answer must be a JSON object with (at least) ``fields``."""
        body = self._request(method, path, **kwargs)
        missing = [f for f in fields if not isinstance(body, dict) or f not in body]
        if missing:
            raise ClientError(
                f"malformed answer from the Coordinator at {self.address}: no {missing[0]!r}"
            )
        result: dict[str, Any] = body
        return result

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
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
        if self._verified:
            check_coordinator_peer(response)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body.get("error"), body.get("message", response.text)
            except ValueError:
                code, message = None, response.text.strip() or response.reason_phrase
            raise ClientError(str(message), status=response.status_code, code=code)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"the Coordinator at {self.address} sent invalid JSON") from None

    def _answers_without_identity(self) -> bool:
        context = client_ssl_context(self._root)
        try:
            with httpx.Client(verify=context, timeout=self._timeout) as probe:
                probe.get(f"https://{self.address}{API}/status")
        except httpx.HTTPError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        return self._call("GET", f"{API}/status", "state")

    def get_manifest(self) -> dict[str, Any]:
        return self._call("GET", f"{API}/manifest", "manifest", "sha256")

    def set_manifest(self, raw: bytes) -> dict[str, Any]:
        content_type = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
        return self._call(
            "POST",
            f"{API}/manifest",
            "sha256",
            content=raw,
            headers={"content-type": content_type},
        )

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        return self._call("GET", f"{API}/attestation", params={"nonce": nonce.hex()})

    def certificates(self) -> dict[str, str]:
        body = self._call("GET", f"{API}/certificates", "root", "mesh_ca", "chain")
        return {key: str(body[key]) for key in ("root", "mesh_ca", "chain")}

    # -- governance (``identity`` must be a user's) ---------------------------------------------

    def get_secret(self, name: str) -> bytes:
        """A secret's value: bytes, or for certificates the certificate and key in PEM."""
        body = self._call("GET", f"{API}/secrets/{name}", "value")
        return base64.b64decode(body["value"])

    def set_secret(self, name: str, value: bytes) -> dict[str, Any]:
        return self._call(
            "PUT", f"{API}/secrets/{name}", json={"value": base64.b64encode(value).decode()}
        )

    def update(self, raw: bytes) -> dict[str, Any]:
        """A package update (``{"packages": ...}``) or a manifest update (a whole manifest)."""
        content_type = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
        return self._call(
            "POST", f"{API}/update", "applied", content=raw, headers={"content-type": content_type}
        )

    def pending_update(self) -> dict[str, Any] | None:
        pending = self._call("GET", f"{API}/update", "pending")["pending"]
        return pending if isinstance(pending, dict) else None

    def acknowledge_update(self, sha256: str) -> dict[str, Any]:
        return self._call("POST", f"{API}/update/acknowledge", "applied", json={"sha256": sha256})

    def cancel_update(self, sha256: str) -> dict[str, Any]:
        return self._call("POST", f"{API}/update/cancel", "cancelled", json={"sha256": sha256})

    def manifest_log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{API}/manifest/log", "updates")["updates"])

    def audit_log(self) -> dict[str, Any]:
        return self._call("GET", f"{API}/audit", "entries", "head")

    # -- recovery (no user: the Coordinator cannot read its manifest yet) ------------------------

    def recovery_offer(self, nonce: bytes) -> dict[str, Any]:
        return self._call(
            "GET", f"{API}/recovery", "parties", "recovery_key", params={"nonce": nonce.hex()}
        )

    def upload_share(self, party: str, share: bytes, signature: bytes) -> dict[str, Any]:
        body = {
            "party": party,
            "share": base64.b64encode(share).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
        return self._call("POST", f"{API}/recovery", "state", json=body)
