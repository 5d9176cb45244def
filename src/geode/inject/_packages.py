"""Which TEE a labelled pod's service runs in.

The manifest says it: a service names a package, the package its ``tee``. The webhook reads the
manifest from the Coordinator's client API (``GET /manifest``, which needs no user) over TLS
pinned to the deployment's root, the same root the pods trust, or from a file. It keeps the last
manifest it read and reads it again once ``refresh`` has passed. While it has never read one, a
labelled pod is refused: a pod whose TEE is unknown cannot be given its isolation, and running it
without would only fail later, at activation, with a less helpful message.

What a pod in each TEE needs is its ``TeeProfile`` (``_profiles``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from geode.errors import GeodeError, InjectionRefused
from geode.inject._config import SERVICE_LABEL
from geode.manifest import load_manifest

__all__ = [
    "CoordinatorManifest",
    "ManifestFile",
    "ManifestSource",
    "ManifestUnavailable",
    "PackageTees",
    "ServiceTees",
]

log = logging.getLogger("geode.inject")

_LABEL_PATH = f"metadata.labels.{SERVICE_LABEL}"


class PackageTees(Protocol):
    """Answers which TEE a service's package runs in, or refuses."""

    def tee_of(self, service: str) -> str:
        """The ``tee`` of ``service``'s package; ``InjectionRefused`` when it is not known."""
        ...


@dataclass(frozen=True)
class ServiceTees:
    """Each service's package TEE, from one manifest (``sha256``: that manifest's hash)."""

    kinds: Mapping[str, str]
    sha256: str

    @classmethod
    def from_manifest(cls, raw: bytes) -> ServiceTees:
        document = load_manifest(raw)
        manifest = document.manifest
        kinds = {
            name: manifest.packages[service.package].tee
            for name, service in manifest.services.items()
        }
        return cls(kinds, document.sha256.hex())

    def tee_of(self, service: str) -> str:
        kind = self.kinds.get(service)
        if kind is None:
            raise InjectionRefused(
                _LABEL_PATH,
                f"the manifest in force ({self.sha256[:12]}) has no service {service!r}, so its "
                "TEE is unknown",
            )
        return kind


@dataclass(frozen=True)
class ManifestUnavailable:
    """No manifest could be read: every labelled pod is refused, saying why."""

    reason: str

    def tee_of(self, service: str) -> str:
        raise InjectionRefused(
            _LABEL_PATH,
            f"the TEE of service {service!r} is unknown ({self.reason}); the pod is refused "
            "rather than run without its isolation",
        )


class ManifestSource(PackageTees, Protocol):
    """Where the webhook reads the manifest: ``current`` never raises (a failure is a
    ``ManifestUnavailable``), ``tee_of`` asks the current one."""

    def current(self) -> PackageTees: ...


class _Cached:
    """The last manifest read, read again after ``refresh`` seconds. A failed read keeps the
    last good one (and is retried after ``refresh``); without one, the failure is the answer."""

    def __init__(
        self,
        read: Callable[[], bytes],
        refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._tees: ServiceTees | None = None
        self._at = 0.0

    def current(self) -> PackageTees:
        with self._lock:
            now = self._clock()
            if self._tees is not None and now - self._at < self._refresh:
                return self._tees
            try:
                tees = ServiceTees.from_manifest(self._read())
            except (GeodeError, OSError) as exc:
                if self._tees is None:
                    log.warning("no manifest: %s", exc)
                    return ManifestUnavailable(f"the webhook has not read the manifest: {exc}")
                log.warning(
                    "keeping manifest %s, reading it again failed: %s", self._tees.sha256[:12], exc
                )
                self._at = now
                return self._tees
            if self._tees is None or tees.sha256 != self._tees.sha256:
                log.info("manifest %s: %d services", tees.sha256[:12], len(tees.kinds))
            self._tees, self._at = tees, now
            return tees

    def tee_of(self, service: str) -> str:
        return self.current().tee_of(service)


class CoordinatorManifest(_Cached):
    """The manifest in force, from the Coordinator's client API at ``address``, over TLS pinned
    to the root certificate in ``root_file`` (read at each fetch: the ConfigMap may appear or
    change after the webhook started)."""

    def __init__(
        self,
        address: str,
        root_file: Path,
        refresh: float = 30.0,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.root_file = root_file
        self.timeout = timeout
        super().__init__(self._fetch, refresh, clock)

    def _fetch(self) -> bytes:
        from geode.client import CoordinatorClient
        from geode.pki import load_certificate

        try:
            pem = self.root_file.read_bytes()
        except FileNotFoundError:
            raise GeodeError(
                f"no root certificate at {self.root_file} yet: set the chart's "
                "rootCertificate.pem to the root 'geode verify' pinned"
            ) from None
        root = load_certificate(pem, str(self.root_file))
        with CoordinatorClient(self.address, root=root, timeout=self.timeout) as client:
            return client.get_manifest().manifest.encode()


class ManifestFile(_Cached):
    """The manifest from a file (e.g. a ConfigMap the operator keeps equal to the one in
    force), read again after ``refresh`` seconds."""

    def __init__(
        self, path: Path, refresh: float = 30.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        super().__init__(path.read_bytes, refresh, clock)
