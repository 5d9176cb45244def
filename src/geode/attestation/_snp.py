"""Verification of AMD SEV-SNP attestation reports, signed by a VCEK or a VLEK.

Evidence of kind ``sev-snp`` is the 1184-byte report, optionally followed by the certificate
table the guest received with it (configfs-tsm ``auxblob``, ``SNP_GET_EXT_REPORT``). Verification:

1. parse the report (``_snp_report``);
2. find the VCEK or VLEK the report names among the table's certificates and ``certs``, and
   verify it to a trusted ARK (``_snp_certs``) at the given time;
3. bind the key to the report: a VCEK's hwID extension is the report's chip id (8 bytes on
   Turin), and the key's TCB extensions are the report's reported TCB, read in the product's
   layout; the CPUID family and model (report v3+) must name the chain's product;
4. check the ECDSA P-384 signature over bytes 0..0x29F.

The claims carry the measurement, host data, report data, debug (policy bit 19), the guest
policy, VMPL and the reported TCB by component; committed / current / launch TCBs, chip id and
key kind are in ``details``. Package matching (minimum TCB, VMPL, host data, the policy's
migration bit) is ``match_claims``'s.

The claims' ``checked`` say ``signature`` and ``chain``. The collateral of SEV-SNP is AMD's CRL
for the product and key kind (``_snp_crl``): with it, a revoked ASK, ASVK, VCEK or VLEK is
refused, naming it, and ``checked`` gains ``revocation`` when the CRL states the chain's kind
(otherwise it is not known to cover the chain: ``tcb_reasons`` say so). A CRL proves only that
the chain is not revoked; AMD publishes no TCB status for SNP, so the claims' ``tcb_status``
stays ``Unverified`` either way: ``match_claims`` derives the verdict's status from the CRL
check and the package's ``min_tcb``, which the verifier does not know.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from geode.attestation._evidence import TCB_UNVERIFIED, Claims
from geode.attestation._evidence_certs import public_key
from geode.attestation._snp_certs import (
    CERT_TABLE_GUIDS,
    SnpChain,
    is_cert_table,
    parse_cert_table,
    snp_certificates,
    verify_snp_chain,
)
from geode.attestation._snp_crl import check_amd_crl, load_amd_crl
from geode.attestation._snp_report import (
    SNP_REPORT_SIZE,
    SNP_SIGNED_SIZE,
    SigningKey,
    SnpProduct,
    SnpReport,
    TcbVersion,
    parse_snp_report,
)
from geode.errors import EvidenceError

__all__ = [
    "AMD_KDS",
    "SnpEndorsementQuery",
    "SnpVerified",
    "snp_endorsement_query",
    "verify_snp_evidence",
    "verify_snp_report",
]

_AMD_OID = "1.3.6.1.4.1.3704.1"
_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD_OID}.2")
_HWID = x509.ObjectIdentifier(f"{_AMD_OID}.4")
_CSP_ID = x509.ObjectIdentifier(f"{_AMD_OID}.5")
_TCB_OIDS = {
    "bootloader": x509.ObjectIdentifier(f"{_AMD_OID}.3.1"),
    "tee": x509.ObjectIdentifier(f"{_AMD_OID}.3.2"),
    "snp": x509.ObjectIdentifier(f"{_AMD_OID}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{_AMD_OID}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{_AMD_OID}.3.9"),
}


@dataclass(frozen=True)
class SnpVerified:
    """A verified report with the chain that vouches for it."""

    report: SnpReport
    chain: SnpChain

    @property
    def reported_tcb(self) -> TcbVersion:
        return self.tcb(self.report.reported_tcb)

    def tcb(self, raw: int) -> TcbVersion:
        return self.report.decode_tcb(raw, self.chain.product)

    @property
    def chip_id(self) -> bytes:
        """The chip id as the VCEK names it: 8 bytes on Turin, 64 before."""
        size = 8 if self.chain.product is SnpProduct.TURIN else 64
        return self.report.chip_id[:size]

    def claims(self) -> Claims:
        report, chain = self.report, self.chain
        key = report.signing_key.name
        csp = _extension_text(chain.endorsement, _CSP_ID)
        if report.signing_key is SigningKey.VCEK:
            platform = self.chip_id.hex()
        else:
            platform = f"{key} {csp}" if csp else key
        details = {
            "product": chain.product.value,
            "report_version": str(report.version),
            "signing_key": key,
            "policy": f"0x{report.policy:016x}",
            "guest_svn": str(report.guest_svn),
            "reported_tcb": str(self.reported_tcb),
            "committed_tcb": str(self.tcb(report.committed_tcb)),
            "current_tcb": str(self.tcb(report.current_tcb)),
            "launch_tcb": str(self.tcb(report.launch_tcb)),
            "chip_id": report.chip_id.hex(),
            "family_id": report.family_id.hex(),
            "image_id": report.image_id.hex(),
            "id_key_digest": report.id_key_digest.hex(),
            "author_key_digest": report.author_key_digest.hex(),
            "report_id": report.report_id.hex(),
            "platform_info": f"0x{report.platform_info:x}",
            "firmware": ".".join(map(str, report.current_version)),
            "committed_firmware": ".".join(map(str, report.committed_version)),
        }
        if report.cpuid is not None:
            family, model, stepping = report.cpuid
            details["cpuid"] = f"family 0x{family:x} model 0x{model:x} stepping {stepping}"
        if csp:
            details["csp_id"] = csp
        return Claims(
            tee="sev-snp",
            measurement=report.measurement,
            report_data=report.report_data,
            debug=report.debug,
            svn=report.guest_svn,
            tcb_status=TCB_UNVERIFIED,
            platform=platform,
            host_data=report.host_data,
            vmpl=report.vmpl,
            tcb=self.reported_tcb.components(),
            policy=report.policy,
            checked=frozenset({"signature", "chain"}),
            details=details,
        )


def verify_snp_evidence(
    data: bytes,
    *,
    certs: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> SnpVerified:
    """Verify a report (optionally followed by its certificate table) and return it with its
    chain. ``certs``: more certificates (PEM, DER or a certificate table); ``roots``: the ARKs to
    trust instead of the pinned ones."""
    if at.tzinfo is None:
        raise ValueError("at must be an aware datetime")
    report = parse_snp_report(data)
    found: list[x509.Certificate] = []
    if certs:
        found += snp_certificates(certs, field="certs")
    tail = data[SNP_REPORT_SIZE:]
    if any(tail):
        found += snp_certificates(tail, field="cert_table", base=SNP_REPORT_SIZE)
    if report.signing_key is SigningKey.NONE:
        raise EvidenceError("the report is not signed (no signing key)", field="signer_info")
    if report.mask_chip_key:
        raise EvidenceError(
            "MASK_CHIP_KEY is set: the firmware did not sign the report", field="signer_info"
        )
    chain = verify_snp_chain(report.signing_key, found, roots=roots, at=at)
    verified = SnpVerified(report, chain)
    _bind(verified)
    _check_signature(report, chain)
    return verified


def verify_snp_report(
    data: bytes,
    *,
    certs: bytes | None = None,
    collateral: bytes | None = None,
    at: datetime.datetime,
    roots: Sequence[x509.Certificate] | None = None,
) -> Claims:
    """The ``sev-snp`` verifier of ``EvidenceVerifier`` (see ``_verifier``): claims of a verified
    report. ``collateral``: AMD's CRL for the product and key kind (DER or PEM); with one that
    states the chain's kind ``checked`` says ``revocation`` (else ``tcb_reasons`` say why
    not). ``tcb_status`` is ``Unverified`` either way: a CRL says nothing of the TCB level (the
    package's ``min_tcb`` does, in ``match_claims``)."""
    crl = load_amd_crl(collateral) if collateral is not None else None
    verified = verify_snp_evidence(data, certs=certs, at=at, roots=roots)
    claims = verified.claims()
    if crl is None:
        details = {**claims.details, "revocation": "not checked (no AMD CRL given)"}
        return dataclasses.replace(claims, details=details)
    check = check_amd_crl(crl, verified.chain, verified.report.signing_key.name, at)
    details = {**claims.details, "revocation": check.summary}
    if not check.covers:
        reasons = (*claims.tcb_reasons, check.reason)
        return dataclasses.replace(claims, details=details, tcb_reasons=reasons)
    return dataclasses.replace(claims, checked=claims.checked | {"revocation"}, details=details)


# AMD's key distribution service: the VCEKs (``SnpEndorsementQuery.vcek_path``) and the CRLs.
AMD_KDS = "https://kdsintf.amd.com"


@dataclass(frozen=True)
class SnpEndorsementQuery:
    """What AMD's key distribution service needs to hand out the key that signed a report, read
    from the report alone (nothing verified yet: what is fetched is verified afterwards)."""

    product: str  # Milan, Genoa, Turin
    signing_key: str  # VCEK or VLEK
    chip_id: bytes  # as the VCEK's hwID: 8 bytes on Turin, 64 before
    tcb: Mapping[str, int]  # the reported TCB by component
    carried: bool  # the report's certificate table brings the key's certificate

    @property
    def vcek_path(self) -> str:
        """Where AMD's KDS serves this VCEK (path and query, after the KDS's base URL):
        ``vcek/v1/{product}/{chip id}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..[&fmcSPL=..]``."""
        spl = {
            "blSPL": self.tcb["bootloader"],
            "teeSPL": self.tcb["tee"],
            "snpSPL": self.tcb["snp"],
            "ucodeSPL": self.tcb["microcode"],
        }
        if "fmc" in self.tcb:
            spl["fmcSPL"] = self.tcb["fmc"]
        query = "&".join(f"{name}={value}" for name, value in spl.items())
        return f"vcek/v1/{self.product}/{self.chip_id.hex()}?{query}"


def snp_endorsement_query(data: bytes, product: str | None = None) -> SnpEndorsementQuery:
    """Which VCEK (or VLEK) signed this report and where AMD lists its revocations.
    ``product``: when the report (version 2) does not name it by its CPUID."""
    report = parse_snp_report(data)
    named = report.cpuid_product
    if named is None:
        if product is None:
            raise EvidenceError(
                "the report does not name its product (CPUID): give it", field="cpuid"
            )
        named = SnpProduct(product)
    size = 8 if named is SnpProduct.TURIN else 64
    tcb = report.decode_tcb(report.reported_tcb, named).components()
    tail = data[SNP_REPORT_SIZE:]
    guid = CERT_TABLE_GUIDS["vcek" if report.signing_key is SigningKey.VCEK else "vlek"]
    carried = (
        any(tail)
        and is_cert_table(tail)
        and any(entry.guid == guid for entry in parse_cert_table(tail, base=SNP_REPORT_SIZE))
    )
    return SnpEndorsementQuery(
        named.value, report.signing_key.name, report.chip_id[:size], tcb, carried
    )


def _bind(verified: SnpVerified) -> None:
    report, chain = verified.report, verified.chain
    kind = report.signing_key.name
    hinted = report.cpuid_product
    if hinted is not None and hinted is not chain.product:
        raise EvidenceError(
            f"the report's CPUID names {hinted.value}, its {kind} chains to {chain.product.value}",
            field="cpuid",
            offset=0x188,
        )
    name = _extension_text(chain.endorsement, _PRODUCT_NAME)
    if name is not None and name.split("-")[0] != chain.product.value:
        raise EvidenceError(
            f"the {kind} is for product {name!r}, its chain for {chain.product.value}",
            field="certs",
        )
    if report.signing_key is SigningKey.VCEK:
        _bind_chip(verified)
    for component, value in verified.reported_tcb.components().items():
        certified = _extension_int(chain.endorsement, _TCB_OIDS[component], kind, component)
        if certified != value:
            raise EvidenceError(
                f"the {kind} is for {component} {certified}, the report's reported TCB has "
                f"{value} ({verified.reported_tcb})",
                field="reported_tcb",
                offset=0x180,
            )


def _bind_chip(verified: SnpVerified) -> None:
    report, chain = verified.report, verified.chain
    extension = _extension_value(chain.endorsement, _HWID)
    if extension is None:
        raise EvidenceError("the VCEK has no hwID extension", field="certs")
    hwid = _unwrap_octets(extension)
    if not any(report.chip_id):
        raise EvidenceError(
            "the chip id is masked: the VCEK cannot be bound to the report", field="chip_id"
        )
    if hwid != verified.chip_id or any(report.chip_id[len(hwid) :]):
        raise EvidenceError(
            f"the VCEK belongs to another chip (its hwID {hwid.hex()[:16]}…, "
            f"the report's chip id {report.chip_id.hex()[:16]}…)",
            field="chip_id",
            offset=0x1A0,
        )


def _check_signature(report: SnpReport, chain: SnpChain) -> None:
    kind = report.signing_key.name
    key = public_key(chain.endorsement, kind)
    if not isinstance(key, ec.EllipticCurvePublicKey):  # _snp_certs checked it; for mypy
        raise EvidenceError(f"the {kind} key is not an ECDSA key", field="certs")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.raw[:SNP_SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            f"the report's signature does not verify with its {kind}",
            field="signature",
            offset=SNP_SIGNED_SIZE,
        ) from None


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise EvidenceError(f"unreadable certificate extensions ({exc})", field="certs") from None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _extension_int(
    cert: x509.Certificate, oid: x509.ObjectIdentifier, kind: str, component: str
) -> int:
    raw = _extension_value(cert, oid)
    # A DER INTEGER: tag 2, a short length, big-endian two's complement (non-negative here).
    if raw is None or len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[2] & 0x80:
        raise EvidenceError(f"the {kind} has no readable {component} TCB extension", field="certs")
    return int.from_bytes(raw[2:], "big")


def _extension_text(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    raw = _extension_value(cert, oid)
    # An IA5String (tag 22) with a short length.
    if raw is None or len(raw) < 2 or raw[0] != 0x16 or raw[1] != len(raw) - 2:
        return None
    return raw[2:].decode("ascii", errors="replace")


def _unwrap_octets(raw: bytes) -> bytes:
    """AMD puts the hwID's bytes in the extension as they are; accept a DER OCTET STRING too."""
    if len(raw) in (8, 64):
        return raw
    if len(raw) >= 2 and raw[0] == 0x04 and raw[1] == len(raw) - 2:
        return raw[2:]
    return raw
