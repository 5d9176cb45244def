"""The deployment's certificate authorities.

The root CA is the deployment's identity and is never rotated. The mesh CA is an intermediate
signed by the root and rotated on every manifest update; it issues the instances' leaf
certificates, so rotating it cuts off everything issued before. Every certificate is backdated by
``BACKDATE`` against clock skew, and no certificate outlives its issuer.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.errors import PKIError
from geode.pki._spiffe import SpiffeId

__all__ = [
    "BACKDATE",
    "CertificateAuthority",
    "Clock",
    "LeafParams",
    "generate_private_key",
    "load_csr_public_key",
    "utc_now",
]

Clock = Callable[[], datetime.datetime]
BACKDATE = datetime.timedelta(minutes=1)
ROOT_LIFETIME = datetime.timedelta(days=20 * 365)
MESH_CA_LIFETIME = datetime.timedelta(days=5 * 365)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def generate_private_key(kind: str = "ecdsa", bits: int = 256) -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key: ``ecdsa`` (256 or 384 bits), ``ed25519`` or ``rsa``."""
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP384R1() if bits == 384 else ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise PKIError(f"unknown key kind {kind!r}")


def _hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def load_csr_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """The public key of a mesh CSR, after checking its self-signature and that it is P-256."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise PKIError("csr: not a PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except Exception:
        valid = False
    if not valid:
        raise PKIError("csr: signature does not verify")
    key = csr.public_key()
    # DESIGN: instance keys are ECDSA P-256; one curve keeps every mesh peer interoperable.
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PKIError("csr: the key must be ECDSA P-256")
    return key


@dataclass(frozen=True)
class LeafParams:
    """What goes into one leaf certificate."""

    public_key: CertificatePublicKeyTypes
    common_name: str
    spiffe_id: SpiffeId | None = None
    uris: Sequence[str] = ()
    dns_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()
    lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    server: bool = True
    client: bool = True
    subject: x509.Name | None = None


@dataclass(frozen=True)
class CertificateAuthority:
    """A signing key with its certificate (and the chain up to, excluding, the root)."""

    key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def create_root(
        cls, common_name: str = "Geode Root CA", *, clock: Clock = utc_now
    ) -> CertificateAuthority:
        key = generate_private_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Geode"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = clock()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        return cls(key, builder.sign(key, _hash_for(key)))

    def create_intermediate(
        self, common_name: str, *, clock: Clock = utc_now
    ) -> CertificateAuthority:
        key = generate_private_key()
        now = clock()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Geode"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(self._capped(now + MESH_CA_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(self._authority_key_id, critical=False)
        )
        cert = builder.sign(self.key, _hash_for(self.key))
        return CertificateAuthority(key, cert, (cert, *self.chain))

    def issue(self, params: LeafParams, *, clock: Clock = utc_now) -> x509.Certificate:
        """Issue a leaf certificate; its lifetime is capped to this CA's."""
        now = clock()
        subject = params.subject or x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, params.common_name)]
        )
        sans: list[x509.GeneralName] = []
        if params.spiffe_id is not None:
            sans.append(x509.UniformResourceIdentifier(str(params.spiffe_id)))
        sans += [x509.UniformResourceIdentifier(uri) for uri in params.uris]
        sans += [x509.DNSName(name) for name in params.dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in params.ip_addresses]
        usages = []
        if params.server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if params.client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        ed = isinstance(params.public_key, ed25519.Ed25519PublicKey)
        rsa_key = isinstance(params.public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(params.public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(self._capped(now + params.lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=rsa_key,
                    data_encipherment=False,
                    key_agreement=not (ed or rsa_key),
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(self._authority_key_id, critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if sans:
            # RFC 5280: the SAN extension is critical when the subject is empty; keep it simple.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, _hash_for(self.key))

    def _capped(self, not_after: datetime.datetime) -> datetime.datetime:
        return min(not_after, self.certificate.not_valid_after_utc)

    @functools.cached_property
    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        public = self.key.public_key()
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
