"""Certificates that travel with evidence: loading them from PEM or DER, and the checks every
vendor chain needs (a link's signature, a validity window at a given time).

AMD's VCEKs and VLEKs have serial number 0, which RFC 5280 forbids and ``cryptography`` warns
about while loading; that warning is silenced while this module loads evidence certificates
(and nowhere else). Every other complaint of ``cryptography`` about what it reads -- an
exception (``ValueError``, ``TypeError``, ``InvalidVersion``, ``DuplicateExtension``,
``UnsupportedGeneralNameType``, ``UnsupportedAlgorithm``) or a warning (a name attribute of the
wrong length) -- is an ``EvidenceError`` naming the field (``x509_errors``). They also lack
the key identifiers and basic constraints a path builder wants, so chains are checked link by
link against pinned roots rather than by a generic verifier.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import warnings
from collections.abc import Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from geode.attestation._reader import ByteReader
from geode.errors import EvidenceError

__all__ = [
    "PublicKey",
    "check_validity",
    "common_name",
    "decoded",
    "der_element_length",
    "fully_decoded",
    "load_certificate_blob",
    "load_evidence_certificates",
    "public_key",
    "verify_issued_by",
    "verify_rsa_pss_sha384_link",
    "x509_errors",
]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

PublicKey = CertificatePublicKeyTypes


def public_key(cert: x509.Certificate, what: str) -> PublicKey:
    """The certificate's key; a key ``cryptography`` cannot load is an ``EvidenceError``."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceError(f"the {what} has an unusable key ({exc})", field="certs") from None


# What ``cryptography`` raises on malformed X.509, while loading or, since it decodes lazily, on
# the first use of a field. A warning it gives about what it reads (a name attribute of the wrong
# length) is turned into an exception too: such a certificate is malformed.
MALFORMED_X509: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UserWarning,
)


@contextlib.contextmanager
def x509_errors(
    field: str, offset: int | None = None, problem: str = "malformed certificate"
) -> Iterator[None]:
    """Turns what ``cryptography`` raises (or warns) about malformed X.509 read in the block into
    an ``EvidenceError`` naming ``field``; AMD's serial number 0 stays accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            yield
        except MALFORMED_X509 as exc:
            raise EvidenceError(f"{problem} ({exc})", field=field, offset=offset) from None


def decoded(cert: x509.Certificate, field: str, offset: int | None = None) -> x509.Certificate:
    """``cert``, its names and extensions decoded now: ``cryptography`` parses them lazily,
    and a malformed one must be an ``EvidenceError`` here, not a ``ValueError`` later."""
    with x509_errors(field, offset):
        _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_hash_algorithm)
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    # The signature is the certificate's last element, a BIT STRING: its first content octet
    # counts the unused bits. ``cryptography`` hands out the signature bytes whatever it says, so
    # a certificate saying 1..7 would verify like the original: a second encoding of one
    # certificate, which other verifiers (dcap-qvl, webpki) refuse.
    der = cert.public_bytes(Encoding.DER)
    if der[-len(cert.signature) - 1] != 0:
        raise EvidenceError(
            "malformed certificate (its signature is not a whole number of bytes)",
            field=field,
            offset=offset,
        )
    return cert


def fully_decoded(
    cert: x509.Certificate, field: str, offset: int | None = None
) -> x509.Certificate:
    """``decoded``, and the value of every extension and the public key decoded too."""
    with x509_errors(field, offset):
        decoded(cert, field, offset)
        _ = [extension.value for extension in cert.extensions]
        cert.public_key()
    return cert


def _load_der(der: bytes, field: str, offset: int | None) -> x509.Certificate:
    with x509_errors(field, offset, "not a certificate"):
        cert = x509.load_der_x509_certificate(der)
    return decoded(cert, field, offset)


def der_element_length(data: bytes, field: str, offset: int = 0) -> int:
    """The total length (header and content) of the DER SEQUENCE at the start of ``data``."""
    r = ByteReader(data, "DER element", base=offset)
    if r.u8(field) != 0x30:
        raise r.error(field, "not a DER SEQUENCE", 0)
    first = r.u8(field)
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise r.error(field, "unsupported DER length encoding", 1)
    length = int.from_bytes(r.bytes(field, count), "big")
    return 2 + count + length


def load_certificate_blob(blob: bytes, field: str, offset: int | None = None) -> x509.Certificate:
    """One certificate, PEM or DER; DER is cut at its own length (tables pad their entries)."""
    if blob.lstrip().startswith(_PEM_BEGIN):
        certs = _load_pem(blob, field, offset)
        if len(certs) != 1:
            raise EvidenceError(
                f"expected one certificate, found {len(certs)}", field=field, offset=offset
            )
        return certs[0]
    length = der_element_length(blob, field, offset or 0)
    if length > len(blob):
        raise EvidenceError(
            f"certificate truncated: {length} bytes declared, {len(blob)} present",
            field=field,
            offset=offset,
        )
    return _load_der(blob[:length], field, offset)


def _load_pem(blob: bytes, field: str, offset: int | None) -> list[x509.Certificate]:
    with x509_errors(field, offset, "not PEM certificates"):
        certs = x509.load_pem_x509_certificates(blob)
    return [decoded(cert, field, offset) for cert in certs]


def load_evidence_certificates(
    blob: bytes, field: str = "certs", base: int | None = None
) -> list[x509.Certificate]:
    """Certificates from PEM text (any number) or concatenated DER, in order. ``base``: where
    ``blob`` starts in the evidence, for the offsets of errors (``None``: a separate file)."""
    if _PEM_BEGIN in blob:
        return _load_pem(blob, field, base)
    start = base or 0
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(blob):
        if not any(blob[offset:]):
            break  # zero padding after the last certificate
        length = der_element_length(blob[offset:], field, start + offset)
        if offset + length > len(blob):
            raise EvidenceError(
                f"certificate truncated: {length} bytes declared, {len(blob) - offset} present",
                field=field,
                offset=start + offset,
            )
        certs.append(_load_der(blob[offset : offset + length], field, start + offset))
        offset += length
    return certs


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def check_validity(cert: x509.Certificate, at: datetime.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise EvidenceError(
            f"{what} is not valid at {at.isoformat(timespec='seconds')} "
            f"(valid {cert.not_valid_before_utc.date()} to {cert.not_valid_after_utc.date()})",
            field="certs",
        )


# Links already verified (certificate, issuer), compared by DER: a platform's chain is the same
# at every activation and renewal, and its signatures are most of a verification's cost. Only
# successes are remembered (a failure raises), and validity windows are checked on every use.
_VERIFIED_LINKS = 256


@functools.lru_cache(maxsize=_VERIFIED_LINKS)
def verify_rsa_pss_sha384_link(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """``cert`` is signed by ``issuer`` with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48: AMD's
    certificates use exactly these parameters, so nothing else is accepted."""
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        digest, hashes.SHA384
    ):
        raise EvidenceError(f"the {what} is not signed with RSASSA-PSS SHA-384", field="certs")
    key = public_key(issuer, common_name(issuer))
    if not isinstance(key, rsa.RSAPublicKey):
        raise EvidenceError(f"the issuer of the {what} has no RSA key", field="certs")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, pss, hashes.SHA384())
    except InvalidSignature:
        raise EvidenceError(
            f"the {what} is not signed by {common_name(issuer)}", field="certs"
        ) from None


@functools.lru_cache(maxsize=_VERIFIED_LINKS)
def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """``cert`` names ``issuer`` as its issuer and carries its valid signature (any algorithm
    ``cryptography`` verifies: ECDSA, RSA PKCS#1 v1.5 or PSS)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise EvidenceError(
            f"the {what} is not issued by {common_name(issuer)} ({str(exc) or 'bad signature'})",
            field="certs",
        ) from None
