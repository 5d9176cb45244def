"""A Python client for the Coordinator's client API, and the pinned roots it trusts.

Every call goes over TLS verified against the deployment's root certificate, which ``geode
verify`` pins after checking the deployment statement. ``insecure=True`` skips verification and
exists for first contact and debugging only.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from geode._files import xdg_path
from geode.errors import ClientError
from geode.pki import certificate_pem, load_certificate

__all__ = [
    "CONFIG_DIR_ENV",
    "CoordinatorClient",
    "client_ssl_context",
    "config_dir",
    "load_pinned_root",
    "pin_root",
    "pinned_root_path",
]

CONFIG_DIR_ENV = "GEODE_CONFIG_DIR"
API = "/api/v1"


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


def client_ssl_context(root: x509.Certificate | None) -> ssl.SSLContext:
    """Strict TLS to a Coordinator: only ``root`` is trusted. ``None`` disables verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if root is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=certificate_pem(root))
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
    ) -> None:
        if root is None and not insecure:
            raise ClientError(
                f"no trusted root for {address}: run 'geode verify --coordinator {address}' first"
                " (or pass --insecure)"
            )
        self.address = address
        self._http = httpx.Client(
            base_url=f"https://{address}",
            verify=client_ssl_context(None if insecure else root),
            timeout=timeout,
        )

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ClientError(f"cannot reach the Coordinator at {self.address}: {exc}") from None
        except httpx.TimeoutException:
            raise ClientError(f"the Coordinator at {self.address} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to {self.address} failed: {exc}") from None
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

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/status")
        return result

    def get_manifest(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/manifest")
        return result

    def set_manifest(self, raw: bytes) -> dict[str, Any]:
        content_type = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
        result: dict[str, Any] = self._call(
            "POST", f"{API}/manifest", content=raw, headers={"content-type": content_type}
        )
        return result

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"{API}/attestation", params={"nonce": nonce.hex()}
        )
        return result

    def certificates(self) -> dict[str, str]:
        result: dict[str, str] = self._call("GET", f"{API}/certificates")
        return result
