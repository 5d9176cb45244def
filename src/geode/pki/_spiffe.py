"""SPIFFE identities: ``spiffe://<trust-domain>/service/<name>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

from geode.errors import PKIError

__all__ = ["COORDINATOR_URI", "SpiffeId", "peer_spiffe_id", "uri_sans"]

# The URI SAN of the Coordinator's own TLS certificate. The root issues it to the Coordinator
# only: mesh leaves carry spiffe:// ids and certificate secrets carry DNS names, so a client that
# requires this URI cannot be fooled by a service or a secret holder with a matching DNS name.
COORDINATOR_URI = "urn:geode:coordinator"

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A validated SPIFFE id; hashable, compares by value."""

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise PKIError(f"invalid SPIFFE trust domain {self.trust_domain!r}")
        segments = self.path.split("/")
        if not self.path.startswith("/") or not all(
            _SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments[1:]
        ):
            raise PKIError(f"invalid SPIFFE path {self.path!r}")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith("spiffe://"):
            raise PKIError(f"not a SPIFFE id: {uri!r}")
        rest = uri[len("spiffe://") :]
        domain, slash, path = rest.partition("/")
        if not slash:
            raise PKIError(f"SPIFFE id without a path: {uri!r}")
        return cls(domain, "/" + path)

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeId:
        return cls(trust_domain, f"/service/{service}")

    @property
    def service(self) -> str | None:
        """The service name for ``/service/<name>`` ids, else ``None``."""
        parts = self.path.split("/")
        return parts[2] if len(parts) == 3 and parts[1] == "service" else None

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The URI subject alternative names of ``cert``."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def peer_spiffe_id(cert: x509.Certificate | bytes | None) -> SpiffeId | None:
    """The SPIFFE id of a certificate (DER or parsed), or ``None`` if it has none or several.

    A peer's certificate arrives as DER from ``getpeercert(True)``; one that carries two ids
    names no single identity, and a malformed one names none."""
    if cert is None:
        return None
    if isinstance(cert, bytes):
        try:
            cert = x509.load_der_x509_certificate(cert)
        except ValueError:
            return None
    ids = [uri for uri in uri_sans(cert) if uri.startswith("spiffe://")]
    if len(ids) != 1:
        return None
    try:
        return SpiffeId.parse(ids[0])
    except PKIError:  # a malformed id is no id
        return None
