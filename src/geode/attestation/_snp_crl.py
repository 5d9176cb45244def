"""AMD's certificate revocation list for an SEV-SNP product: the collateral of ``sev-snp``.

AMD publishes one CRL per product and key kind (KDS ``/vcek/v1/<product>/crl``,
``/vlek/v1/<product>/crl``), signed by the product's ARK with RSASSA-PSS, SHA-384, salt 48 --
the parameters of every link of the chain, and the only ones accepted. With it, the verifier
refuses a report whose ASK / ASVK, or VCEK / VLEK, is listed and the claims say
``revocation_checked``; without it, nothing is known of revocation. Either way the TCB status
is ``Unverified`` (a CRL says nothing of the TCB level; AMD publishes no TCB status): the
verdict never claims more than was checked.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from geode.attestation._evidence_certs import common_name, public_key, x509_errors
from geode.attestation._snp_certs import SnpChain
from geode.errors import EvidenceError

__all__ = ["check_amd_crl", "load_amd_crl"]

_FIELD = "collateral"


def load_amd_crl(blob: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM, every field decoded now (``cryptography`` decodes lazily)."""
    with x509_errors(_FIELD, problem="expected AMD's CRL, DER or PEM"):
        if blob.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(blob)
        else:
            crl = x509.load_der_x509_crl(blob)
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, list(crl.extensions))
        _ = (crl.signature_algorithm_oid, crl.tbs_certlist_bytes, crl.signature)
        _ = [(entry.serial_number, entry.revocation_date_utc) for entry in crl]
    return crl


def check_amd_crl(
    crl: x509.CertificateRevocationList, chain: SnpChain, at: datetime.datetime
) -> str:
    """Raise ``EvidenceError`` unless ``crl`` is the chain's ARK's, current at ``at``, and lists
    neither the intermediate nor the endorsement key; returns what was checked, for details."""
    ark = chain.ark
    if crl.issuer.public_bytes() != ark.subject.public_bytes():
        raise EvidenceError(
            f"the CRL is issued by {crl.issuer.rfc4514_string()!r}, not by the chain's "
            f"{common_name(ark)!r}",
            field=_FIELD,
        )
    _check_signature(crl, ark)
    next_update = crl.next_update_utc
    if next_update is None:
        raise EvidenceError("the CRL has no next update", field=_FIELD)
    if not crl.last_update_utc <= at <= next_update:
        raise EvidenceError(
            f"the CRL is not current at {at.isoformat(timespec='seconds')} (issued "
            f"{crl.last_update_utc.date()}, next update {next_update.date()})",
            field=_FIELD,
        )
    for cert in (chain.intermediate, chain.endorsement):
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise EvidenceError(
                f"the {common_name(cert)} certificate (serial {cert.serial_number:x}) is revoked "
                f"since {entry.revocation_date_utc.date()}",
                field=_FIELD,
            )
    return f"not revoked (AMD CRL of {crl.last_update_utc.date()}, {len(list(crl))} entries)"


def _check_signature(crl: x509.CertificateRevocationList, ark: x509.Certificate) -> None:
    try:
        digest = crl.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    if crl.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        digest, hashes.SHA384
    ):
        raise EvidenceError("the CRL is not signed with RSASSA-PSS SHA-384", field=_FIELD)
    key = public_key(ark, common_name(ark))
    if not isinstance(key, rsa.RSAPublicKey):  # _snp_certs checked it; for mypy
        raise EvidenceError(f"{common_name(ark)!r} has no RSA key", field=_FIELD)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, pss, hashes.SHA384())
    except InvalidSignature:
        raise EvidenceError(
            f"the CRL's signature does not verify with {common_name(ark)!r}", field=_FIELD
        ) from None
