"""Encoding helpers for certificates and keys: PEM in and out, fingerprints."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from geode.errors import PKIError

__all__ = [
    "certificate_der",
    "certificate_pem",
    "fingerprint",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "private_key_pem",
    "public_key_der",
]


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lowercase hex."""
    return hashlib.sha256(certificate_der(cert)).hexdigest()


def public_key_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_pem(key: PrivateKeyTypes, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _as_bytes(data: str | bytes, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:
        return data.encode()
    except UnicodeEncodeError:
        raise PKIError(f"{what}: not a valid certificate") from None


def load_certificate(data: str | bytes, what: str = "certificate") -> x509.Certificate:
    raw = _as_bytes(data, what)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise PKIError(f"{what}: not a valid certificate") from None


def load_certificates(data: str | bytes, what: str = "certificates") -> list[x509.Certificate]:
    raw = _as_bytes(data, what)
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise PKIError(f"{what}: not a valid PEM certificate list") from None
    return certs


def load_private_key(data: bytes, what: str = "private key") -> CertificateIssuerPrivateKeyTypes:
    """An unencrypted PEM signing key (ECDSA, Ed25519 or RSA)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PKIError(f"{what}: not an unencrypted PEM private key") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise PKIError(f"{what}: not an ECDSA, Ed25519 or RSA key")
    return key
