"""geode.pki: the root and mesh CAs, leaf issuance, CSR checks and SPIFFE identities."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import ipaddress
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from geode.errors import GeodeError, PKIError
from geode.pki import (
    BACKDATE,
    CertificateAuthority,
    LeafParams,
    SpiffeId,
    certificate_der,
    certificate_pem,
    fingerprint,
    generate_private_key,
    load_certificate,
    load_certificates,
    load_csr_public_key,
    utc_now,
)
from geode.pki._ca import MESH_CA_LIFETIME, ROOT_LIFETIME
from geode.testing import FakeClock

# Certificates store whole seconds; a fixed clock on a whole second makes times comparable.
T0 = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)
TRUST_DOMAIN = "test.geode.local"
INSTANCE_ID = "3f1c2b9e-8d4a-4c6f-9e1a-2b3c4d5e6f70"


@functools.cache
def authorities() -> tuple[CertificateAuthority, CertificateAuthority]:
    root = CertificateAuthority.create_root()
    return root, root.create_intermediate("Geode Mesh CA")


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def leaf_params(key: CertificateIssuerPrivateKeyTypes, **overrides: Any) -> LeafParams:
    params = LeafParams(
        public_key=key.public_key(),
        common_name=INSTANCE_ID,
        spiffe_id=SpiffeId.for_service(TRUST_DOMAIN, "web"),
        dns_names=("web", "localhost"),
    )
    return dataclasses.replace(params, **overrides)


@functools.cache
def leaf() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    _, mesh = authorities()
    key = p256_key()
    return mesh.issue(leaf_params(key)), key


ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(kind)


def csr_pem(key: CertificateIssuerPrivateKeyTypes, common_name: str = "geode-instance") -> str:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def der_to_pem(der: bytes, label: str) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def csr_der(pem: str) -> bytes:
    return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)


# -- the root CA -------------------------------------------------------------------------------


def test_root_is_a_self_signed_ca_with_path_length_one() -> None:
    root, _ = authorities()
    cert = root.certificate
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 1
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert root.chain == ()


def test_root_key_usage_is_for_signing_certificates() -> None:
    root, _ = authorities()
    usage = ext(root.certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.key_encipherment
    assert not usage.value.key_agreement


def test_root_carries_its_subject_key_identifier() -> None:
    root, _ = authorities()
    ski = ext(root.certificate, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(root.key.public_key())


def test_root_common_name_is_configurable() -> None:
    root = CertificateAuthority.create_root("Bookstore Root")
    names = root.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == ["Bookstore Root"]


def test_root_key_is_p256() -> None:
    root, _ = authorities()
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    assert root.key.curve.name == "secp256r1"


def test_root_honours_the_injected_clock() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    assert root.certificate.not_valid_before_utc == T0 - BACKDATE
    assert root.certificate.not_valid_after_utc == T0 + ROOT_LIFETIME


# -- the mesh CA -------------------------------------------------------------------------------


def test_mesh_ca_is_an_intermediate_with_path_length_zero() -> None:
    root, mesh = authorities()
    constraints = ext(mesh.certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    assert mesh.certificate.issuer == root.certificate.subject
    assert mesh.certificate.subject != root.certificate.subject
    mesh.certificate.verify_directly_issued_by(root.certificate)
    assert mesh.chain == (mesh.certificate,)


def test_mesh_ca_key_usage_and_identifiers() -> None:
    root, mesh = authorities()
    usage = ext(mesh.certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    aki = ext(mesh.certificate, x509.AuthorityKeyIdentifier).value
    root_ski = ext(root.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest


def test_mesh_ca_is_not_self_signed() -> None:
    _, mesh = authorities()
    with pytest.raises(ValueError):
        mesh.certificate.verify_directly_issued_by(mesh.certificate)


def test_mesh_ca_honours_the_injected_clock() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    later = T0 + datetime.timedelta(days=10)
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(later))
    assert mesh.certificate.not_valid_before_utc == later - BACKDATE
    assert mesh.certificate.not_valid_after_utc == later + MESH_CA_LIFETIME


def test_mesh_ca_lifetime_is_capped_to_the_root() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    late = root.certificate.not_valid_after_utc - datetime.timedelta(days=30)
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(late))
    assert mesh.certificate.not_valid_after_utc == root.certificate.not_valid_after_utc


def test_each_intermediate_has_a_fresh_key_and_serial() -> None:
    root, mesh = authorities()
    other = root.create_intermediate("Geode Mesh CA")
    assert other.certificate.serial_number != mesh.certificate.serial_number
    assert other.certificate.public_key() != mesh.certificate.public_key()


# -- leaf certificates -------------------------------------------------------------------------


def test_leaf_identity() -> None:
    cert, key = leaf()
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in names] == [INSTANCE_ID]
    assert cert.public_key() == key.public_key()
    sans = ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TRUST_DOMAIN}/service/web"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["web", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == []


def test_leaf_is_for_both_server_and_client_auth() -> None:
    cert, _ = leaf()
    usages = list(ext(cert, x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_is_not_a_ca() -> None:
    cert, _ = leaf()
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_agreement  # ECDHE-ECDSA
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign


def test_leaf_names_its_issuer() -> None:
    cert, _ = leaf()
    _, mesh = authorities()
    assert cert.issuer == mesh.certificate.subject
    cert.verify_directly_issued_by(mesh.certificate)
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(mesh.certificate, x509.SubjectKeyIdentifier).value.digest


def test_leaf_is_not_issued_by_the_root_directly() -> None:
    cert, _ = leaf()
    root, _ = authorities()
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(root.certificate)


def test_leaf_serials_are_unique() -> None:
    _, mesh = authorities()
    key = p256_key()
    serials = {mesh.issue(leaf_params(key)).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_leaf_is_backdated_and_honours_the_clock() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(T0))
    now = T0 + datetime.timedelta(hours=5)
    lifetime = datetime.timedelta(hours=3)
    cert = mesh.issue(leaf_params(p256_key(), lifetime=lifetime), clock=FakeClock(now))
    assert cert.not_valid_before_utc == now - BACKDATE
    assert cert.not_valid_after_utc == now + lifetime


def test_leaf_default_lifetime_is_a_day() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(T0))
    cert = mesh.issue(leaf_params(p256_key()), clock=FakeClock(T0))
    assert cert.not_valid_after_utc == T0 + datetime.timedelta(hours=24)


def test_leaf_lifetime_is_capped_to_the_issuer() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(T0))
    mesh_end = mesh.certificate.not_valid_after_utc
    now = mesh_end - datetime.timedelta(hours=1)
    cert = mesh.issue(
        leaf_params(p256_key(), lifetime=datetime.timedelta(days=30)), clock=FakeClock(now)
    )
    assert cert.not_valid_after_utc == mesh_end
    assert cert.not_valid_before_utc == now - BACKDATE


def test_leaf_without_a_spiffe_id_has_only_dns_sans() -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), spiffe_id=None))
    sans = ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert sans.get_values_for_type(x509.DNSName) == ["web", "localhost"]


def test_leaf_with_no_names_has_no_san_extension() -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), spiffe_id=None, dns_names=()))
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)


def test_leaf_ip_addresses() -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), ip_addresses=("127.0.0.1", "::1")))
    sans = ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [
        (True, False, [ExtendedKeyUsageOID.SERVER_AUTH]),
        (False, True, [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_leaf_usage_can_be_narrowed(
    server: bool, client: bool, expected: list[x509.ObjectIdentifier]
) -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), server=server, client=client))
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == expected


def test_leaf_without_usages_has_no_eku_extension() -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), server=False, client=False))
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.ExtendedKeyUsage)


def test_leaf_subject_override() -> None:
    _, mesh = authorities()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "bookwarehouse"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Books"),
        ]
    )
    cert = mesh.issue(leaf_params(p256_key(), subject=subject))
    assert cert.subject == subject


@pytest.mark.parametrize(
    ("kind", "bits", "key_encipherment", "key_agreement"),
    [("ed25519", 0, False, False), ("rsa", 2048, True, False), ("ecdsa", 384, False, True)],
)
def test_leaf_key_usage_follows_the_key_type(
    kind: str, bits: int, key_encipherment: bool, key_agreement: bool
) -> None:
    _, mesh = authorities()
    key = generate_private_key(kind, bits)
    cert = mesh.issue(leaf_params(key))
    usage = ext(cert, x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment is key_encipherment
    assert usage.key_agreement is key_agreement
    assert cert.public_key() == key.public_key()


# -- chain verification with cryptography's verifier -------------------------------------------


def store() -> verification.Store:
    root, _ = authorities()
    return verification.Store([root.certificate])


def test_chain_verifies_for_a_server_name() -> None:
    root, mesh = authorities()
    cert, _ = leaf()
    verifier = (
        verification.PolicyBuilder().store(store()).build_server_verifier(x509.DNSName("web"))
    )
    chain = verifier.verify(cert, [mesh.certificate])
    assert chain == [cert, mesh.certificate, root.certificate]


def test_chain_refuses_a_server_name_not_in_the_certificate() -> None:
    _, mesh = authorities()
    cert, _ = leaf()
    verifier = (
        verification.PolicyBuilder().store(store()).build_server_verifier(x509.DNSName("other"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(cert, [mesh.certificate])


def test_chain_verifies_as_a_client_with_the_spiffe_id() -> None:
    _, mesh = authorities()
    cert, _ = leaf()
    verified = verification.PolicyBuilder().store(store()).build_client_verifier()
    result = verified.verify(cert, [mesh.certificate])
    assert x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/service/web") in (
        result.subjects or []
    )


def test_client_only_leaf_is_refused_as_a_server() -> None:
    _, mesh = authorities()
    cert = mesh.issue(leaf_params(p256_key(), server=False))
    verifier = (
        verification.PolicyBuilder().store(store()).build_server_verifier(x509.DNSName("web"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(cert, [mesh.certificate])


def test_chain_refuses_another_root() -> None:
    _, mesh = authorities()
    cert, _ = leaf()
    other = CertificateAuthority.create_root()
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([other.certificate]))
        .build_server_verifier(x509.DNSName("web"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(cert, [mesh.certificate])


def test_chain_refuses_a_leaf_from_a_rotated_mesh_ca_without_its_intermediate() -> None:
    root, _ = authorities()
    rotated = root.create_intermediate("Geode Mesh CA")
    cert = rotated.issue(leaf_params(p256_key()))
    _, mesh = authorities()
    verifier = (
        verification.PolicyBuilder().store(store()).build_server_verifier(x509.DNSName("web"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(cert, [mesh.certificate])


def test_path_length_zero_refuses_a_ca_below_the_mesh_ca() -> None:
    _, mesh = authorities()
    below = mesh.create_intermediate("Rogue CA")
    cert = below.issue(leaf_params(p256_key()))
    verifier = (
        verification.PolicyBuilder().store(store()).build_server_verifier(x509.DNSName("web"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(cert, [below.certificate, mesh.certificate])


def test_leaf_is_not_yet_valid_before_its_backdated_start() -> None:
    root = CertificateAuthority.create_root(clock=FakeClock(T0))
    mesh = root.create_intermediate("Geode Mesh CA", clock=FakeClock(T0))
    cert = mesh.issue(leaf_params(p256_key()), clock=FakeClock(T0))

    def verify_at(moment: datetime.datetime) -> None:
        (
            verification.PolicyBuilder()
            .store(verification.Store([root.certificate]))
            .time(moment)
            .build_server_verifier(x509.DNSName("web"))
            .verify(cert, [mesh.certificate])
        )

    verify_at(T0 - BACKDATE)  # clock skew of up to BACKDATE is tolerated
    with pytest.raises(verification.VerificationError):
        verify_at(T0 - BACKDATE - datetime.timedelta(seconds=1))
    with pytest.raises(verification.VerificationError):
        verify_at(T0 + datetime.timedelta(hours=24, seconds=1))


# -- CSRs --------------------------------------------------------------------------------------


def test_csr_public_key_of_a_p256_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert load_csr_public_key(csr_pem(key)) == key.public_key()


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "\ud800",
    ],
    ids=["empty", "garbage", "bad der", "lone surrogate"],
)
def test_csr_garbage_is_refused(pem: str) -> None:
    with pytest.raises(PKIError, match="not a PEM certificate signing request"):
        load_csr_public_key(pem)


def test_csr_certificate_instead_of_a_request_is_refused() -> None:
    cert, _ = leaf()
    with pytest.raises(PKIError):
        load_csr_public_key(certificate_pem(cert))


def test_csr_with_an_edited_subject_is_refused() -> None:
    der = csr_der(csr_pem(p256_key(), "geode-instance"))
    assert der.count(b"geode-instance") == 1
    tampered = der.replace(b"geode-instance", b"geode-instancf")
    with pytest.raises(PKIError, match="signature does not verify"):
        load_csr_public_key(der_to_pem(tampered, "CERTIFICATE REQUEST"))


def test_csr_with_a_flipped_signature_byte_is_refused() -> None:
    der = bytearray(csr_der(csr_pem(p256_key())))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    with pytest.raises(PKIError, match="signature does not verify"):
        load_csr_public_key(der_to_pem(bytes(der), "CERTIFICATE REQUEST"))


def test_csr_carrying_another_requests_signature_is_refused() -> None:
    # ECDSA signatures vary in DER length; pick two requests whose signatures match in length
    # so that the splice keeps every DER length field valid.
    for _ in range(50):
        first = x509.load_pem_x509_csr(csr_pem(p256_key()).encode())
        second = x509.load_pem_x509_csr(csr_pem(p256_key()).encode())
        if len(first.signature) == len(second.signature):
            break
    else:
        pytest.fail("no two signatures of equal length in 50 tries")
    der = first.public_bytes(serialization.Encoding.DER)
    assert der.endswith(first.signature)
    spliced = der[: -len(first.signature)] + second.signature
    with pytest.raises(PKIError, match="signature does not verify"):
        load_csr_public_key(der_to_pem(spliced, "CERTIFICATE REQUEST"))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ec.generate_private_key(ec.SECP521R1()),
        lambda: ec.generate_private_key(ec.SECP256K1()),
    ],
    ids=["rsa", "ed25519", "p384", "p521", "secp256k1"],
)
def test_csr_with_another_key_type_is_refused(
    make_key: Callable[[], CertificateIssuerPrivateKeyTypes],
) -> None:
    with pytest.raises(PKIError, match="ECDSA P-256"):
        load_csr_public_key(csr_pem(make_key()))


# -- key generation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bits", "check"),
    [
        ("ecdsa", 256, lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.key_size == 256),
        ("ecdsa", 384, lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.key_size == 384),
        ("ed25519", 0, lambda k: isinstance(k, ed25519.Ed25519PrivateKey)),
        ("rsa", 2048, lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
    ],
)
def test_generate_private_key(kind: str, bits: int, check: Callable[[Any], bool]) -> None:
    assert check(generate_private_key(kind, bits))


def test_generate_private_key_refuses_unknown_kinds() -> None:
    with pytest.raises(PKIError, match="unknown key kind 'dsa'"):
        generate_private_key("dsa")


# -- PEM helpers -------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_der() -> None:
    cert, _ = leaf()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(certificate_der(cert))
    assert fingerprint(cert) == digest.finalize().hex()


def test_load_certificate_accepts_pem_and_der() -> None:
    cert, _ = leaf()
    assert load_certificate(certificate_pem(cert)) == cert
    assert load_certificate(certificate_der(cert)) == cert


def test_load_certificate_refuses_garbage_naming_what() -> None:
    with pytest.raises(PKIError, match="root_certificate: not a valid certificate"):
        load_certificate(b"garbage", "root_certificate")


def test_load_certificates_reads_a_chain() -> None:
    root, mesh = authorities()
    cert, _ = leaf()
    chain = "".join(certificate_pem(c) for c in (cert, mesh.certificate, root.certificate))
    assert load_certificates(chain) == [cert, mesh.certificate, root.certificate]


@pytest.mark.parametrize("load", [load_certificate, load_certificates])
def test_certificate_loaders_refuse_text_that_is_not_utf8_encodable(
    load: Callable[[str], object],
) -> None:
    # Bug: the str is encoded outside the try block, so a lone surrogate (which json.loads
    # produces from "\ud800") escapes as UnicodeEncodeError instead of PKIError.
    with pytest.raises(PKIError):
        load("\ud800")


def test_utc_now_is_aware() -> None:
    assert utc_now().tzinfo is not None


# -- SPIFFE ids --------------------------------------------------------------------------------


def test_spiffe_for_service() -> None:
    spiffe = SpiffeId.for_service(TRUST_DOMAIN, "bookstore")
    assert str(spiffe) == f"spiffe://{TRUST_DOMAIN}/service/bookstore"
    assert spiffe.trust_domain == TRUST_DOMAIN
    assert spiffe.path == "/service/bookstore"
    assert spiffe.service == "bookstore"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://test.geode.local/service/web",
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://a/b",
        "spiffe://my-domain_1.example/x.y-z_0",
    ],
)
def test_spiffe_parse_str_round_trip(uri: str) -> None:
    spiffe = SpiffeId.parse(uri)
    assert str(spiffe) == uri
    assert SpiffeId.parse(str(spiffe)) == spiffe


def test_spiffe_service_is_none_for_other_paths() -> None:
    assert SpiffeId.parse("spiffe://example.org/ns/default/sa/web").service is None
    assert SpiffeId.parse("spiffe://example.org/service").service is None
    assert SpiffeId.parse("spiffe://example.org/service/web/extra").service is None


def test_spiffe_ids_are_values() -> None:
    first = SpiffeId.parse("spiffe://test.geode.local/service/web")
    second = SpiffeId.for_service("test.geode.local", "web")
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, SpiffeId.for_service("test.geode.local", "db")}) == 2
    with pytest.raises(AttributeError):
        first.path = "/service/other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "http://test.geode.local/service/web",
        "SPIFFE://test.geode.local/service/web",
        "spiffe://test.geode.local",
        "spiffe:///service/web",
        "spiffe://Test.geode.local/service/web",
        "spiffe://user@test.geode.local/service/web",
        "spiffe://test.geode.local:8443/service/web",
        "spiffe://test.geode.local/",
        "spiffe://test.geode.local/service//web",
        "spiffe://test.geode.local/service/web/",
        "spiffe://test.geode.local/service/../admin",
        "spiffe://test.geode.local/service/./web",
        "spiffe://test.geode.local/service/web?x=1",
        "spiffe://test.geode.local/service/web#frag",
        "spiffe://test.geode.local/service/w%20b",
        "spiffe://test.geode.local/service/wéb",
    ],
)
def test_spiffe_parse_rejects_bad_ids(uri: str) -> None:
    with pytest.raises(PKIError):
        SpiffeId.parse(uri)


@pytest.mark.parametrize(
    ("trust_domain", "service"),
    [("Upper.example", "web"), ("bad domain", "web"), ("", "web"), ("a.b", ".."), ("a.b", "")],
)
def test_spiffe_for_service_rejects_bad_parts(trust_domain: str, service: str) -> None:
    with pytest.raises(PKIError):
        SpiffeId.for_service(trust_domain, service)


def test_spiffe_rejects_a_trailing_newline() -> None:
    # Regression (fixed in 27539ea): the regexes ended in '$', which also matches before a
    # final newline.
    with pytest.raises(PKIError):
        SpiffeId.parse("spiffe://test.geode.local/service/web\n")


def test_pki_errors_are_geode_errors() -> None:
    assert issubclass(PKIError, GeodeError)
