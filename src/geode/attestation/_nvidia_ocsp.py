"""Revocation of NVIDIA's certificates from OCSP responses given as collateral.

NVIDIA answers OCSP for its device chains and its RIM signing chains (``ocsp.ndis.nvidia.com``,
named in the certificates' authority information access). Geode stays offline: whoever calls it
fetches the responses and passes them in (DER, base64 in the collateral document, see
``_nvidia``). A certificate is checked by a response that

- was answered successfully and holds a single response for it (issuer name and key hash, with
  the response's own hash algorithm, and serial number);
- is signed by the certificate's issuer or by a responder certificate the response carries,
  issued by that issuer, with the OCSP signing extended key usage, valid at ``at``;
- is fresh at ``at`` (``thisUpdate <= at <= nextUpdate``; a response without ``nextUpdate``
  is refused: its freshness is unknown);
- says ``good``. ``revoked`` refuses naming the certificate and the reason; ``unknown`` refuses.

The collateral comes from whoever presents the evidence, so it may hold several responses for one
certificate (an older ``good`` one still inside its nextUpdate next to a newer ``revoked`` one).
Every response naming the certificate must be properly signed; any that says ``revoked`` refuses,
whatever its date; of the rest, the one with the latest ``thisUpdate`` decides (it must be fresh
and ``good``). Responses carry no nonce (NVIDIA's responder's are pre-signed), so freshness is
only ``thisUpdate``/``nextUpdate``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from geode.attestation._evidence_certs import check_validity, common_name
from geode.errors import EvidenceError

__all__ = ["FIELD", "OcspResponses", "check_revocation"]

FIELD = "collateral.ocsp"
_MAX_RESPONSES = 64


@dataclass(frozen=True)
class OcspResponses:
    """The OCSP responses of the collateral, parsed."""

    responses: tuple[ocsp.OCSPResponse, ...]

    @classmethod
    def from_base64(cls, items: Sequence[object]) -> OcspResponses:
        if len(items) > _MAX_RESPONSES:
            raise EvidenceError(f"more than {_MAX_RESPONSES} OCSP responses", field=FIELD)
        parsed = []
        for position, item in enumerate(items):
            try:
                if not isinstance(item, str):
                    raise ValueError("not a string")
                der = base64.b64decode(item, validate=True)
                response = ocsp.load_der_ocsp_response(der)
            except (binascii.Error, ValueError):
                raise EvidenceError(
                    f"OCSP response {position} is not base64 DER", field=f"{FIELD}[{position}]"
                ) from None
            if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                raise EvidenceError(
                    f"OCSP response {position} is {response.response_status.name.lower()}",
                    field=f"{FIELD}[{position}]",
                )
            parsed.append(response)
        return cls(tuple(parsed))


def _cert_id(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> ocsp.OCSPRequest:
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()


def _matching(
    responses: OcspResponses, cert: x509.Certificate, issuer: x509.Certificate
) -> list[tuple[ocsp.OCSPResponse, ocsp.OCSPSingleResponse]]:
    """Every single response, in every response, that names ``cert`` (issued by ``issuer``)."""
    found = []
    for response in responses.responses:
        for single in response.responses:
            if single.serial_number != cert.serial_number:
                continue
            try:
                wanted = _cert_id(cert, issuer, single.hash_algorithm)
            except (UnsupportedAlgorithm, ValueError, TypeError):
                continue  # a hash the builder does not take (or none): not a match
            if (single.issuer_name_hash, single.issuer_key_hash) == (
                wanted.issuer_name_hash,
                wanted.issuer_key_hash,
            ):
                found.append((response, single))
    return found


def _verify_with(key: object, response: ocsp.OCSPResponse) -> None:
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise InvalidSignature
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    else:
        raise InvalidSignature


def _check_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime.datetime, name: str
) -> None:
    signers = [issuer]
    for responder in response.certificates:
        try:
            responder.verify_directly_issued_by(issuer)
            usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in usage:
            try:
                check_validity(responder, at, f"the OCSP responder for {name!r}")
            except EvidenceError as exc:
                raise EvidenceError(exc.reason, field=FIELD) from None
            signers.append(responder)
    for signer in signers:
        try:
            _verify_with(signer.public_key(), response)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return
    raise EvidenceError(
        f"the OCSP response for {name!r} is not signed by its issuer or a delegated responder",
        field=FIELD,
    )


def check_revocation(
    certs: Sequence[tuple[x509.Certificate, x509.Certificate]],
    responses: OcspResponses,
    at: datetime.datetime,
) -> None:
    """Each ``(certificate, issuer)`` has a good, fresh, properly signed OCSP response and no
    response saying it is revoked (see the module docstring)."""
    for cert, issuer in certs:
        name = common_name(cert)
        found = _matching(responses, cert, issuer)
        if not found:
            raise EvidenceError(f"no OCSP response for certificate {name!r}", field=FIELD)
        for response, _ in found:
            _check_signer(response, issuer, at, name)
        for _, single in found:
            if single.certificate_status is ocsp.OCSPCertStatus.REVOKED:
                reason = single.revocation_reason
                raise EvidenceError(
                    f"certificate {name!r} is revoked (OCSP"
                    + (f", {reason.value}" if reason is not None else "")
                    + ")",
                    field=FIELD,
                )
        single = max((s for _, s in found), key=lambda s: s.this_update_utc)
        _check_fresh(single, name, at)
        if single.certificate_status is not ocsp.OCSPCertStatus.GOOD:
            raise EvidenceError(f"the OCSP status of certificate {name!r} is unknown", field=FIELD)


def _check_fresh(single: ocsp.OCSPSingleResponse, name: str, at: datetime.datetime) -> None:
    next_update = single.next_update_utc
    if next_update is None:
        raise EvidenceError(
            f"the OCSP response for {name!r} has no nextUpdate: its freshness is unknown",
            field=FIELD,
        )
    if not single.this_update_utc <= at <= next_update:
        raise EvidenceError(
            f"the OCSP response for {name!r} is not current at {at.isoformat()} "
            f"(thisUpdate {single.this_update_utc.isoformat()}, "
            f"nextUpdate {next_update.isoformat()})",
            field=FIELD,
        )
