"""Generating the manifest's secrets, and turning stored secrets into template values."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.x509.oid import NameOID

from geode.coordinator._state import StoredSecret
from geode.manifest import CertificateSecret, SecretSpec
from geode.pki import (
    CertificateAuthority,
    Clock,
    LeafParams,
    certificate_pem,
    generate_private_key,
    load_certificate,
    load_private_key,
    private_key_pem,
    utc_now,
)

__all__ = ["generate_secret", "template_value"]

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
