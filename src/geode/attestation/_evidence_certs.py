"""Certificates that travel with evidence: loading them from PEM or DER, and the checks every
vendor chain needs (a link's signature, a validity window at a given time).

AMD's VCEKs and VLEKs have serial number 0, which RFC 5280 forbids and ``cryptography`` warns
about while loading; that warning is silenced while this module loads evidence certificates
(and nowhere else). They also lack
the key identifiers and basic constraints a path builder wants, so chains are checked link by
link against pinned roots rather than by a generic verifier.
"""

from __future__ import annotations

import datetime
import functools
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
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
    "load_certificate_blob",
    "load_evidence_certificates",
    "public_key",
    "verify_issued_by",
    "verify_rsa_pss_sha384_link",
]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

PublicKey = CertificatePublicKeyTypes


def public_key(cert: x509.Certificate, what: str) -> PublicKey:
    """The certificate's key; a key ``cryptography`` cannot load is an ``EvidenceError``."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceError(f"the {what} has an unusable key ({exc})", field="certs") from None


def decoded(cert: x509.Certificate, field: str, offset: int | None = None) -> x509.Certificate:
    """``cert``, its names and extensions decoded now: ``cryptography`` parses them lazily,
    and a malformed one must be an ``EvidenceError`` here, not a ``ValueError`` later."""
    try:
        _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_hash_algorithm)
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise EvidenceError(f"malformed certificate ({exc})", field=field, offset=offset) from None
    return cert


def _load_der(der: bytes, field: str, offset: int | None) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise EvidenceError(f"not a certificate ({exc})", field=field, offset=offset) from None
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            certs = x509.load_pem_x509_certificates(blob)
        except ValueError as exc:
            raise EvidenceError(
                f"not PEM certificates ({exc})", field=field, offset=offset
            ) from None
        return [decoded(cert, field, offset) for cert in certs]


def load_evidence_certificates(blob: bytes, field: str = "certs") -> list[x509.Certificate]:
    """Certificates from PEM text (any number) or concatenated DER, in order."""
    if _PEM_BEGIN in blob:
        return _load_pem(blob, field, None)
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(blob):
        if not any(blob[offset:]):
            break  # zero padding after the last certificate
        length = der_element_length(blob[offset:], field, offset)
        if offset + length > len(blob):
            raise EvidenceError(
                f"certificate truncated: {length} bytes declared, {len(blob) - offset} present",
                field=field,
                offset=offset,
            )
        certs.append(_load_der(blob[offset : offset + length], field, offset))
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
