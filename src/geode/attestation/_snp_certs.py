"""AMD's certificates for SEV-SNP: the pinned ARKs, the certificate table that travels with a
report, and the chain VCEK -> ASK -> ARK (VLEK -> ASVK -> ARK).

Every link is RSASSA-PSS with SHA-384 and a 48-byte salt. The three ARKs (Milan, Genoa, Turin)
ship in ``roots/`` and are pinned by the SHA-256 of their DER here, in code; the ASKs and ASVKs
ship beside them for reports that carry only their VCEK or VLEK, and are checked against the ARK
like any intermediate the evidence brings.

The certificate table (the configfs-tsm ``auxblob``, the certificate buffer of
``SNP_GET_EXT_REPORT``, the GHCB's extended guest request) is a list of 24-byte entries — GUID
(16 bytes, in the byte order of its text form), offset (u32, from the start of the table), length
(u32) — ended by an all-zero GUID; each entry points at one certificate, DER or PEM.
"""

from __future__ import annotations

import datetime
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geode.attestation._evidence_certs import (
    check_validity,
    common_name,
    load_certificate_blob,
    load_evidence_certificates,
    public_key,
    verify_rsa_pss_sha384_link,
)
from geode.attestation._reader import ByteReader
from geode.attestation._roots import certificate_sha256, load_pinned_root
from geode.attestation._snp_report import SigningKey, SnpProduct
from geode.errors import EvidenceError

__all__ = [
    "AMD_ARK_SHA256",
    "CERT_TABLE_GUIDS",
    "CertTableEntry",
    "SnpChain",
    "amd_intermediates",
    "amd_roots",
    "build_cert_table",
    "is_cert_table",
    "parse_cert_table",
    "snp_cert_table",
    "snp_certificates",
    "verify_snp_chain",
]

AMD_ARK_SHA256 = {
    SnpProduct.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    SnpProduct.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    SnpProduct.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

CERT_TABLE_GUIDS = {
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "crl": uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
}
_CERT_GUIDS = {CERT_TABLE_GUIDS[name] for name in ("ark", "ask", "vcek", "vlek")}
_ENTRY_SIZE = 24
_KEY_ROLES = {"vcek", "vlek"}


@functools.cache
def amd_roots() -> tuple[x509.Certificate, ...]:
    """The pinned ARKs shipped with Geode (Milan, Genoa, Turin)."""
    return tuple(
        load_pinned_root(f"amd_{product.value.lower()}_ark.pem", sha256)
        for product, sha256 in AMD_ARK_SHA256.items()
    )


@functools.cache
def amd_intermediates() -> tuple[x509.Certificate, ...]:
    """The ASKs and ASVKs shipped with Geode: a convenience, checked against the ARKs on use."""
    out: list[x509.Certificate] = []
    for product in SnpProduct:
        name = f"amd_{product.value.lower()}_intermediates.pem"
        pem = resources.files("geode.attestation").joinpath("roots", name).read_bytes()
        out.extend(x509.load_pem_x509_certificates(pem))
    return tuple(out)


@dataclass(frozen=True)
class CertTableEntry:
    guid: uuid.UUID
    offset: int
    data: bytes


def is_cert_table(blob: bytes) -> bool:
    """Whether ``blob`` starts like a certificate table (a known GUID first)."""
    return len(blob) >= 16 and uuid.UUID(bytes=bytes(blob[:16])) in CERT_TABLE_GUIDS.values()


def parse_cert_table(blob: bytes, *, base: int = 0) -> list[CertTableEntry]:
    """The entries of a certificate table; ``base`` is its offset in the evidence (for errors)."""
    r = ByteReader(blob, "certificate table", base=base)
    entries: list[CertTableEntry] = []
    seen: set[uuid.UUID] = set()
    while True:
        index = len(entries)
        guid = uuid.UUID(bytes=r.bytes(f"cert_table[{index}].guid", 16))
        offset = r.u32(f"cert_table[{index}].offset")
        length = r.u32(f"cert_table[{index}].length")
        if guid.int == 0:
            return entries
        if guid in seen:
            raise r.error(f"cert_table[{index}].guid", f"GUID {guid} appears twice", r.offset - 24)
        seen.add(guid)
        if offset + length > len(blob):
            raise r.error(
                f"cert_table[{index}].length",
                f"entry {guid} runs to {offset + length}, past the table's end ({len(blob)})",
                r.offset - 4,
            )
        entries.append(CertTableEntry(guid, offset, bytes(blob[offset : offset + length])))


def build_cert_table(entries: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """A certificate table holding ``entries`` (GUID, certificate bytes), as a host provides it."""
    items = list(entries)
    offset = _ENTRY_SIZE * (len(items) + 1)
    head, body = b"", b""
    for guid, data in items:
        head += guid.bytes + (offset + len(body)).to_bytes(4, "little")
        head += len(data).to_bytes(4, "little")
        body += data
    return head + bytes(_ENTRY_SIZE) + body


def snp_certificates(blob: bytes, *, field: str, base: int | None = None) -> list[x509.Certificate]:
    """The certificates of a table, or of PEM / DER text (``--certs``); ``base``: where ``blob``
    starts in the evidence (``None``: a separate file)."""
    if not is_cert_table(blob):
        return load_evidence_certificates(blob, field, base)
    start = base or 0
    certs = []
    for index, entry in enumerate(parse_cert_table(blob, base=start)):
        if entry.guid in _CERT_GUIDS:
            where = start + entry.offset
            certs.append(load_certificate_blob(entry.data, f"cert_table[{index}]", where))
    return certs


def snp_cert_table(blob: bytes, *, field: str = "certs") -> bytes:
    """The certificate table a host would give with a report, made of the certificates in
    ``blob`` (PEM or DER, or a table): a VCEK or a VLEK, and optionally its ASK or ASVK and the
    ARK. For a host whose interface gives no certificates (``SNP_GET_REPORT``, configfs-tsm
    without an ``auxblob``). Nothing is verified here: the table is checked with the report it
    travels with. ``EvidenceError`` for a certificate of no such role, a role given twice, or no
    VCEK or VLEK."""
    roles: dict[str, x509.Certificate] = {}
    for cert in snp_certificates(blob, field=field):
        name = common_name(cert)
        if name in ("SEV-VCEK", "SEV-VLEK"):
            role = name.removeprefix("SEV-").lower()
        elif _is_self_signed_name(cert):
            role = "ark"
        elif name.startswith("SEV-"):
            role = "ask"  # an ASK or an ASVK: the table has one entry for either
        else:
            raise EvidenceError(f"{name!r} is none of VCEK, VLEK, ASK, ASVK or ARK", field=field)
        if role in roles:
            raise EvidenceError(f"two {role.upper()} certificates", field=field)
        if role in _KEY_ROLES and _KEY_ROLES & set(roles):
            raise EvidenceError(
                "a VCEK and a VLEK: give the one that signs the reports", field=field
            )
        roles[role] = cert
    if "vcek" not in roles and "vlek" not in roles:
        raise EvidenceError("no VCEK or VLEK certificate", field=field)
    return build_cert_table(
        (CERT_TABLE_GUIDS[role], cert.public_bytes(serialization.Encoding.DER))
        for role, cert in roles.items()
    )


@dataclass(frozen=True)
class SnpChain:
    """A verified chain: the endorsement key's certificate, its intermediate, the ARK."""

    product: SnpProduct
    endorsement: x509.Certificate
    intermediate: x509.Certificate
    ark: x509.Certificate


def _product_of_ark(ark: x509.Certificate) -> SnpProduct:
    for product, sha256 in AMD_ARK_SHA256.items():
        if certificate_sha256(ark) == sha256:
            return product
    name = common_name(ark)
    for product in SnpProduct:
        if name == f"ARK-{product.value}":
            return product
    raise EvidenceError(f"root {name!r} is not an AMD ARK of a known product", field="certs")


def _name(name: x509.Name) -> bytes:
    # DER comparison: exact, and much cheaper than comparing Name objects.
    return name.public_bytes()


def _is_self_signed_name(cert: x509.Certificate) -> bool:
    return _name(cert.subject) == _name(cert.issuer)


def _endorsement_candidates(
    certs: Sequence[x509.Certificate], key: SigningKey
) -> list[x509.Certificate]:
    want = "SEV-VCEK" if key is SigningKey.VCEK else "SEV-VLEK"
    found: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        if common_name(cert) == want:
            found.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)
    return list(found.values())


def verify_snp_chain(
    key: SigningKey,
    certs: Sequence[x509.Certificate],
    *,
    roots: Sequence[x509.Certificate] | None,
    at: datetime.datetime,
) -> SnpChain:
    """Find the VCEK (or VLEK) among ``certs`` and verify it up to a trusted ARK.

    ``roots`` are the trusted ARKs (``None``: the pinned ones). An ARK the evidence brings that is
    not trusted is refused outright; ASKs and ASVKs come from the evidence first, then from the
    ones shipped with Geode.
    """
    kind = key.name
    trusted = tuple(amd_roots() if roots is None else roots)
    trusted_der = {certificate_sha256(ark) for ark in trusted}
    for cert in certs:
        if _is_self_signed_name(cert) and certificate_sha256(cert) not in trusted_der:
            raise EvidenceError(
                f"the evidence's root {common_name(cert)!r} (SHA-256 {certificate_sha256(cert)}) "
                "is not a pinned AMD root",
                field="certs",
            )
    candidates = _endorsement_candidates(certs, key)
    if not candidates:
        raise EvidenceError(
            f"no {kind} certificate: pass it with the certificates, or send the report with its "
            "certificate table",
            field="certs",
        )
    if len(candidates) > 1:
        raise EvidenceError(f"{len(candidates)} different {kind} certificates given", field="certs")
    endorsement = candidates[0]
    intermediates = [c for c in certs if not _is_self_signed_name(c)]
    intermediates += [c for c in amd_intermediates() if c not in intermediates]
    named = [c for c in intermediates if _name(c.subject) == _name(endorsement.issuer)]
    if not named:
        raise EvidenceError(
            f"no certificate of the {kind}'s issuer {endorsement.issuer.rfc4514_string()!r}",
            field="certs",
        )
    errors: list[EvidenceError] = []
    for intermediate in named:
        arks = [ark for ark in trusted if _name(ark.subject) == _name(intermediate.issuer)]
        if not arks:
            errors.append(
                EvidenceError(
                    f"the chain does not end at a pinned AMD root: {common_name(intermediate)!r} "
                    f"is issued by {intermediate.issuer.rfc4514_string()!r}",
                    field="certs",
                )
            )
        for ark in arks:
            try:
                verify_rsa_pss_sha384_link(intermediate, ark, common_name(intermediate))
                verify_rsa_pss_sha384_link(endorsement, intermediate, kind)
            except EvidenceError as exc:
                errors.append(exc)
                continue
            product = _product_of_ark(ark)
            _check_names(key, product, intermediate)
            check_validity(endorsement, at, kind)
            check_validity(intermediate, at, common_name(intermediate))
            check_validity(ark, at, common_name(ark))
            _check_keys(endorsement, intermediate, ark, kind)
            return SnpChain(product, endorsement, intermediate, ark)
    raise errors[0]


def _check_names(key: SigningKey, product: SnpProduct, intermediate: x509.Certificate) -> None:
    # A VCEK chains through the ASK (SEV-<product>), a VLEK through the ASVK (SEV-VLEK-<product>):
    # a key of one kind signed under the other's intermediate is not what AMD issues.
    middle = f"SEV-{product.value}" if key is SigningKey.VCEK else f"SEV-VLEK-{product.value}"
    if common_name(intermediate) != middle:
        raise EvidenceError(
            f"a {key.name} must chain through {middle}, not {common_name(intermediate)!r}",
            field="certs",
        )


def _check_keys(
    endorsement: x509.Certificate,
    intermediate: x509.Certificate,
    ark: x509.Certificate,
    kind: str,
) -> None:
    key = public_key(endorsement, kind)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise EvidenceError(f"the {kind} key is not an ECDSA P-384 key", field="certs")
    for cert in (intermediate, ark):
        if not isinstance(public_key(cert, common_name(cert)), rsa.RSAPublicKey):
            raise EvidenceError(f"{common_name(cert)!r} has no RSA key", field="certs")
