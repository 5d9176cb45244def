"""AMD's certificate revocation list for an SEV-SNP product: the collateral of ``sev-snp``.

AMD publishes one CRL per product and key kind, both signed by the product's ARK with
RSASSA-PSS, SHA-384, salt 48 -- the parameters of every link of the chain, and the only ones
accepted:

- KDS ``/vcek/v1/<product>/crl``: the revoked ASKs (and VCEKs, where listed), for a VCEK chain;
- KDS ``/vlek/v1/<product>/crl``: the revoked ASVKs (and VLEKs, where listed), for a VLEK chain.

Facts this rests on: AMD's intermediates name their CRL in their CRL distribution points
extension -- ``SEV-<product>`` (the ASK) ``/vcek/v1/<product>/crl``, ``SEV-VLEK-<product>``
(the ASVK) ``/vlek/v1/<product>/crl`` (the certificates shipped in ``roots/`` say so). The two
CRLs have the same issuer (the ARK), the same signature algorithm and the same extensions
otherwise; only an issuing distribution point (IDP) naming the KDS URL says which one a CRL is.
Whether AMD's published CRLs carry an IDP was not established here.

The CRL must be the chain's: issued by its ARK (a CRL of another product is refused, naming both
products), signed by it, current at the verification time, neither a delta CRL nor carrying a
critical extension other than the IDP (its scope would be something this module does not read),
and, when its IDP names a KDS URL, of the chain's key kind and product -- a VLEK CRL given for a
VCEK chain is refused. A listed intermediate (ASK / ASVK) or endorsement key (VCEK / VLEK) is
refused, naming it, whatever the CRL's kind: the ARK says it is revoked.

Revocation counts as checked (``AmdCrlCheck.covers``; the claims' ``checked`` gains
``revocation``) only when the CRL states the chain's kind: only then is it known to cover the
chain's intermediate. A CRL that does not state its kind could be its sibling (the VCEK CRL
given for a VLEK chain does not list a revoked ASVK), so its not listing the chain says nothing;
the check's ``reason`` says why revocation was not counted. The claims' TCB status is
``Unverified`` either way (a CRL says nothing of the TCB level; AMD publishes no TCB status):
``match_claims`` derives the verdict's status from the CRL check and the package's ``min_tcb``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from geode.attestation._evidence_certs import common_name, public_key, x509_errors
from geode.attestation._snp_certs import SnpChain
from geode.attestation._snp_report import SnpProduct
from geode.errors import EvidenceError

__all__ = ["AmdCrlCheck", "check_amd_crl", "load_amd_crl"]

_FIELD = "collateral"
# The extensions whose meaning this module knows; any other one marked critical is refused.
_KNOWN_CRITICAL = (x509.IssuingDistributionPoint.oid,)


@dataclass(frozen=True)
class AmdCrlCheck:
    """What a CRL check found: ``summary`` for details, whether the CRL is known to cover the
    chain (``covers``: revocation counts as checked) and, when it is not, ``reason``."""

    summary: str
    covers: bool
    reason: str = ""


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
    crl: x509.CertificateRevocationList, chain: SnpChain, key: str, at: datetime.datetime
) -> AmdCrlCheck:
    """Raise ``EvidenceError`` unless ``crl`` is a CRL of the chain's ARK, not of another kind
    than ``key``'s (``VCEK`` or ``VLEK``), current at ``at``, and lists neither the intermediate
    nor the endorsement key; returns what was checked and whether it covers the chain."""
    ark = chain.ark
    if crl.issuer.public_bytes() != ark.subject.public_bytes():
        issuer = _issuer_name(crl)
        product = _product_named(issuer)
        mine = chain.product.value
        raise EvidenceError(
            f"the CRL is AMD's for {product.value}, the {key} chain is {mine}'s"
            if product is not None and product is not chain.product
            else f"the CRL is issued by {issuer!r}, not by the chain's {common_name(ark)!r}",
            field=_FIELD,
        )
    _check_signature(crl, ark)
    _check_scope(crl)
    stated = _stated_kind(crl)
    if stated is not None:
        kind, product = stated
        if kind != key or product not in (None, chain.product):
            named = f"{kind} CRL" + (f" of {product.value}" if product is not None else "")
            raise EvidenceError(
                f"the CRL is the {named}, the chain is a {key} chain of {chain.product.value} "
                f"(give /{key.lower()}/v1/{chain.product.value}/crl)",
                field=_FIELD,
            )
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
    checked = f"checked: {common_name(chain.intermediate)}, {common_name(chain.endorsement)}"
    if stated is None:
        intermediate = common_name(chain.intermediate)
        return AmdCrlCheck(
            f"not listed (AMD CRL of kind not stated, of {crl.last_update_utc.date()}, "
            f"{len(list(crl))} entries, {checked})",
            covers=False,
            reason=(
                "revocation not checked: the AMD CRL does not state its kind (no issuing "
                f"distribution point), so it is not known to cover {intermediate} (give "
                f"/{key.lower()}/v1/{chain.product.value}/crl with its distribution point)"
            ),
        )
    return AmdCrlCheck(
        f"not revoked (AMD {key} CRL of {crl.last_update_utc.date()}, {len(list(crl))} "
        f"entries, {checked})",
        covers=True,
    )


def _check_scope(crl: x509.CertificateRevocationList) -> None:
    """Refuse a delta CRL (it lists changes only) and a critical extension this module does not
    read (it would narrow or change the CRL's scope)."""
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            raise EvidenceError("the CRL is a delta CRL: give AMD's full CRL", field=_FIELD)
        if extension.critical and extension.oid not in _KNOWN_CRITICAL:
            raise EvidenceError(
                f"the CRL has a critical extension {extension.oid.dotted_string} "
                "that is not understood",
                field=_FIELD,
            )


def _issuer_name(crl: x509.CertificateRevocationList) -> str:
    names = crl.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else crl.issuer.rfc4514_string()
    return value if isinstance(value, str) else value.decode("latin-1")


def _product_named(name: str) -> SnpProduct | None:
    """The product an ARK's common name (``ARK-Milan``) or a KDS path segment names."""
    for product in SnpProduct:
        if name in (f"ARK-{product.value}", product.value):
            return product
    return None


def _stated_kind(crl: x509.CertificateRevocationList) -> tuple[str, SnpProduct | None] | None:
    """The key kind (``VCEK``/``VLEK``) and product the CRL's issuing distribution point names
    (a KDS URL ``.../vcek/v1/<product>/crl``); ``None`` when it names none."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None
    for name in idp.full_name or ():
        if not isinstance(name, x509.UniformResourceIdentifier):
            continue
        parts = [p for p in urlsplit(name.value).path.split("/") if p]
        for index, part in enumerate(parts):
            if part.lower() in ("vcek", "vlek"):
                rest = parts[index + 2 : index + 3]  # <kind>/v1/<product>/crl
                return part.upper(), _product_named(rest[0]) if rest else None
    return None


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
