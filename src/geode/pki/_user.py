"""Self-signed user certificates: how an operator or relying party is named in a manifest.

A manifest's ``users.<name>.certificate`` pins a client certificate, not a CA: the Coordinator
authenticates a user by that exact certificate, so it is self-signed and needs no chain. Tools
that set up a deployment for someone (``geode up``) make one here rather than by hand.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.pki._ca import Clock, utc_now
from geode.pki._pem import certificate_pem, private_key_pem

__all__ = ["USER_BACKDATE", "USER_LIFETIME", "UserCertificate"]

# Wider than a service's BACKDATE: a user's certificate is made on the user's machine and shown
# to a Coordinator on another, whose clock may lag by more than a mesh peer's.
USER_BACKDATE = datetime.timedelta(minutes=5)
USER_LIFETIME = datetime.timedelta(days=30)


@dataclass(frozen=True)
class UserCertificate:
    """A user's ECDSA P-256 key and the self-signed client certificate (TLS client auth only)
    that names it in a manifest."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(
        cls,
        common_name: str,
        *,
        lifetime: datetime.timedelta = USER_LIFETIME,
        clock: Clock = utc_now,
    ) -> UserCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = clock()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - USER_BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def certificate_pem(self) -> str:
        return certificate_pem(self.certificate)

    @property
    def key_pem(self) -> bytes:
        """The private key, PKCS#8 PEM, unencrypted: write it with mode 0600."""
        return private_key_pem(self.key)
