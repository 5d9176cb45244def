"""geode.pki.UserCertificate: the self-signed client certificate that names a user in a manifest
(``geode up`` makes its operator's with it)."""

from __future__ import annotations

import datetime
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.manifest import load_manifest
from geode.pki import UserCertificate, load_certificate, load_private_key, public_key_der
from geode.pki._user import USER_BACKDATE, USER_LIFETIME

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def test_a_user_certificate_is_self_signed_for_client_auth_only() -> None:
    user = UserCertificate.create("geode up operator", clock=lambda: NOW)
    cert = user.certificate
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geode up operator")])
    assert cert.subject == cert.issuer == name
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not usage.critical
    assert isinstance(user.key, ec.EllipticCurvePrivateKey)
    assert user.key.curve.name == "secp256r1"


def test_validity_comes_from_the_injected_clock() -> None:
    cert = UserCertificate.create("u", clock=lambda: NOW).certificate
    assert cert.not_valid_before_utc == NOW - USER_BACKDATE
    assert cert.not_valid_after_utc == NOW + USER_LIFETIME
    assert datetime.timedelta(minutes=5) == USER_BACKDATE
    assert datetime.timedelta(days=30) == USER_LIFETIME
    short = UserCertificate.create("u", lifetime=datetime.timedelta(hours=1), clock=lambda: NOW)
    assert short.certificate.not_valid_after_utc == NOW + datetime.timedelta(hours=1)


def test_pem_forms_load_back_as_the_same_pair() -> None:
    user = UserCertificate.create("u")
    assert load_certificate(user.certificate_pem) == user.certificate
    key = load_private_key(user.key_pem)
    assert public_key_der(key.public_key()) == public_key_der(user.certificate.public_key())
    assert b"ENCRYPTED" not in user.key_pem


def test_a_manifest_accepts_it_as_a_user() -> None:
    user = UserCertificate.create("operator")
    document = {
        "version": 1,
        "trust_domain": "t.example",
        "users": {"operator": {"certificate": user.certificate_pem, "roles": []}},
    }
    manifest = load_manifest(json.dumps(document).encode()).manifest
    assert manifest.users["operator"].certificate == user.certificate_pem
