"""Certificate authorities, SPIFFE identities and certificate helpers. Pure; no I/O."""

from __future__ import annotations

from geode.pki._ca import (
    BACKDATE,
    CertificateAuthority,
    Clock,
    LeafParams,
    generate_private_key,
    load_csr_public_key,
    utc_now,
)
from geode.pki._pem import (
    certificate_der,
    certificate_pem,
    fingerprint,
    load_certificate,
    load_certificates,
    load_private_key,
    private_key_pem,
    public_key_der,
)
from geode.pki._spiffe import COORDINATOR_URI, SpiffeId, peer_spiffe_id, uri_sans
from geode.pki._user import UserCertificate

__all__ = [
    "BACKDATE",
    "COORDINATOR_URI",
    "CertificateAuthority",
    "Clock",
    "LeafParams",
    "SpiffeId",
    "UserCertificate",
    "certificate_der",
    "certificate_pem",
    "fingerprint",
    "generate_private_key",
    "load_certificate",
    "load_certificates",
    "load_csr_public_key",
    "load_private_key",
    "peer_spiffe_id",
    "private_key_pem",
    "public_key_der",
    "uri_sans",
    "utc_now",
]
