"""Generating the manifest's secrets, taking the values users set, and turning stored secrets into
template values."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from geode.coordinator._state import StoredSecret
from geode.errors import PKIError, SecretRejected
from geode.manifest import CertificateSecret, SecretSpec
from geode.pki import (
    CertificateAuthority,
    Clock,
    LeafParams,
    certificate_pem,
    generate_private_key,
    load_certificate,
    load_certificates,
    load_private_key,
    private_key_pem,
    public_key_der,
    utc_now,
)

__all__ = [
    "MAX_USER_SECRET_BYTES",
    "exported_secret",
    "generate_secret",
    "is_set",
    "secret_from_user",
    "template_value",
]

MAX_USER_SECRET_BYTES = 32 * 1024

_KEY_KINDS = {"cert-ecdsa": "ecdsa", "cert-ed25519": "ed25519", "cert-rsa": "rsa"}


def _subject(spec: SecretSpec, name: str) -> x509.Name:
    if spec.subject is None:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, spec.subject.common_name)]
    if spec.subject.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.subject.organization))
    if spec.subject.organizational_unit:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, spec.subject.organizational_unit)
        )
    if spec.subject.country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, spec.subject.country))
    return x509.Name(attrs)


def generate_secret(
    name: str, spec: SecretSpec, issuer: CertificateAuthority, *, clock: Clock = utc_now
) -> StoredSecret:
    """A fresh value for ``spec``; user-defined secrets start empty until a user sets them."""
    if spec.is_user_defined:
        return StoredSecret()
    if not spec.is_certificate:
        return StoredSecret(value=os.urandom(spec.bits // 8))
    key = generate_private_key(_KEY_KINDS[spec.type], spec.bits)
    cert = issuer.issue(
        LeafParams(
            public_key=key.public_key(),
            common_name=name,
            subject=_subject(spec, name),
            dns_names=spec.dns_names,
            lifetime=datetime.timedelta(days=spec.validity_days),
        ),
        clock=clock,
    )
    return StoredSecret(
        certificate=certificate_pem(cert).encode(), private_key=private_key_pem(key)
    )


def template_value(secret: StoredSecret) -> bytes | CertificateSecret:
    if not secret.certificate:
        return secret.value
    key = load_private_key(secret.private_key)
    cert = load_certificate(secret.certificate)
    return CertificateSecret(cert, key)


def is_set(secret: StoredSecret) -> bool:
    return bool(secret.value or secret.certificate)


def _key_fits(spec: SecretSpec, key: object) -> bool:
    if spec.type == "cert-ecdsa":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == spec.bits
    if spec.type == "cert-rsa":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == spec.bits
    return isinstance(key, ed25519.Ed25519PrivateKey)


def secret_from_user(name: str, spec: SecretSpec, value: bytes) -> StoredSecret:
    """A user-defined secret's new value, checked against its type. Errors never quote it.

    ``plain``: any bytes; ``symmetric-key``: exactly ``size`` bits; certificates: PEM holding
    the certificate and its unencrypted private key, of the type and size the manifest says.
    """
    if len(value) > MAX_USER_SECRET_BYTES:
        raise SecretRejected(f"secret {name!r}: larger than {MAX_USER_SECRET_BYTES} bytes")
    if spec.type == "plain":
        return StoredSecret(value=value)
    if spec.type == "symmetric-key":
        if len(value) != spec.bits // 8:
            raise SecretRejected(
                f"secret {name!r} takes exactly {spec.bits // 8} bytes ({spec.bits} bits), "
                f"not {len(value)}"
            )
        return StoredSecret(value=value)
    try:
        certs = load_certificates(value, f"secret {name!r}")
        if not certs:
            raise PKIError(f"secret {name!r}: no certificate")
        cert = certs[0]
        key = load_private_key(value, f"secret {name!r}")
    except PKIError as exc:
        raise SecretRejected(f"{exc}: give the certificate and its private key in PEM") from None
    if not _key_fits(spec, key):
        size = "" if spec.type == "cert-ed25519" else f" of {spec.bits} bits"
        raise SecretRejected(f"secret {name!r} takes a {spec.type} key{size}")
    if public_key_der(cert.public_key()) != public_key_der(key.public_key()):
        raise SecretRejected(f"secret {name!r}: the private key does not match the certificate")
    return StoredSecret(
        certificate=certificate_pem(cert).encode(), private_key=private_key_pem(key)
    )


def exported_secret(secret: StoredSecret) -> bytes:
    """What a user reading a secret gets: its bytes, or a certificate and its key in PEM."""
    if secret.certificate:
        return secret.certificate + secret.private_key
    return secret.value
