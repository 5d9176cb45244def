"""A second opinion on Intel quotes: Phala's ``dcap-qvl`` (Rust, Python bindings), given the same
quote, the same collateral and the same time as Geode, and both answers in one vocabulary.

dcap-qvl's Python API (0.7): ``verify(quote, QuoteCollateralV3, now_secs)`` checks the quote
against Intel's SGX Root CA, which it pins; ``verify_with_root_ca(quote, collateral, root_der,
now_secs)`` against another root (so the property tests' quotes, which chain to a test root, can
be checked too). Both return a report with ``status`` (Intel's TCB status names) and
``advisory_ids``, or raise ``ValueError`` with the reason. ``QuoteCollateralV3`` takes nine
members: the PCK CRL issuer chain (PEM), the root CA CRL and the PCK CRL (DER), and for the TCB
info and the QE identity their issuer chain (PEM), JSON text as served and raw r||s signature.

Geode's collateral document (``geode.attestation._intel_collateral``) maps onto it member for
member, read here independently of Geode's reader: hex signatures become bytes, CRLs (hex DER or
PEM) become DER, PCS response bodies (``{"tcbInfo": {...}, "signature": "..."}``) give the
``tcbInfo`` text exactly as served and their signature. Geode's document has no PCK CRL issuer
chain (Geode checks the PCK CRL against the intermediate of the quote's own chain): when absent,
it is the quote's chain without its leaf, as dcap-qvl itself reads it from the quote.

One vocabulary (``Opinion``): ``accepted`` with Intel's TCB ``status`` and the advisory ids, or
refused with the reason. Where the two say the same thing differently, ``from_dcap_qvl`` maps:

=========================================== ===================================================
dcap-qvl                                    Geode
=========================================== ===================================================
status ``UpToDate`` ... ``OutOfDate``-       ``Claims.tcb_status``, the same name (the six Intel
``ConfigurationNeeded``                     statuses between them are spelled alike)
refusal "TCB status is invalid: Revoked"    ``tcb_status == "Revoked"`` (Geode reports it and
                                            lets the package refuse; dcap-qvl's ``verify``
                                            refuses it itself): both become refused/Revoked
refusal "No matching TCB level found", or   not mapped: a named exception (``Divergence``
"QE ISVSVN n is below minimum required m"   ``BELOW_EVERY_LEVEL``). Geode reports a platform,
                                            TD or QE below every TCB level ``OutOfDate`` with
                                            the reason "below every TCB level" and the lowest
                                            level's advisories; dcap-qvl refuses. Both refuse
                                            under the default package (``UpToDate`` only)
``TDRelaunchAdvised``,                      no Geode status: a mismatch if ever seen (the vectors
``TDRelaunchAdvisedConfigurationNeeded``    and the test collateral have no TD relaunch levels)
=========================================== ===================================================

``Unverified`` (Geode without collateral) has no dcap-qvl counterpart: dcap-qvl does not verify
without collateral. For a quote without collateral, what both can say is the structure
(``structure_of``: quote version, TEE, FMSPC, measurement, report data).

Shared by the vector and property comparisons: ``agree`` (both opinions, which must be equal),
``below_every_level`` (the named exception, asserted as the difference it is) and the bit flips
in what a quote's signatures cover (``signed_offsets``, ``both_refuse_flips``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, EvidenceVerifier, ReferenceValues, match_claims
from geode.attestation._intel_quote import parse_intel_quote
from geode.errors import ClaimsMismatch, EvidenceError

try:
    import dcap_qvl
except ImportError:  # pragma: no cover - the test extra installs it
    dcap_qvl = None

__all__ = [
    "BELOW_EVERY_LEVEL",
    "HAVE_DCAP_QVL",
    "Divergence",
    "Opinion",
    "Structure",
    "agree",
    "below_every_level",
    "both_refuse_flips",
    "dcap_collateral",
    "dcap_qvl_opinion",
    "flipped",
    "geode_opinion",
    "pem_blocks",
    "requires_dcap_qvl",
    "signed_offsets",
    "structure_by_dcap_qvl",
    "structure_by_geode",
    "utc",
]

HAVE_DCAP_QVL = dcap_qvl is not None
requires_dcap_qvl = pytest.mark.skipif(
    not HAVE_DCAP_QVL and os.environ.get("CI") != "true",
    reason="dcap-qvl is not installed (pip install -e '.[test]')",
)

_REVOKED_LEVEL = "TCB status is invalid: Revoked"


@dataclass(frozen=True)
class Divergence:
    """A documented difference between the verifiers -- an exception, never counted as agreement:
    Geode accepts with ``geode_status`` and a reason containing ``geode_reason``, dcap-qvl refuses
    with one of ``dcap_qvl_refusals``; a package accepting ``UpToDate`` only (the default) refuses
    Geode's claims, so both refuse there."""

    name: str
    geode_status: str
    geode_reason: str
    dcap_qvl_refusals: tuple[str, ...]


BELOW_EVERY_LEVEL = Divergence(
    "below every TCB level",
    geode_status="OutOfDate",
    geode_reason="below every TCB level",
    dcap_qvl_refusals=("No matching TCB level found", "below minimum required"),
)


@dataclass(frozen=True)
class Opinion:
    """A verifier's verdict on a quote: accepted with a TCB status and advisories, or refused
    (``status`` then names a refusal both verifiers know by name: ``Revoked``). ``reason``: why
    it was refused, or what qualifies the status (Geode's ``tcb_reasons``)."""

    accepted: bool
    status: str = ""
    advisories: tuple[str, ...] = ()
    reason: str = field(default="", compare=False)

    def __str__(self) -> str:
        if self.accepted:
            return f"{self.status} {list(self.advisories)}".rstrip(" []")
        return f"refused{f' ({self.status})' if self.status else ''}: {self.reason}"


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", re.S)


def _crl_der(value: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return x509.load_pem_x509_crl(value.encode()).public_bytes(Encoding.DER)
    return bytes.fromhex(value)


def _served(doc: dict[str, str], name: str, member: str) -> tuple[str, bytes]:
    """The JSON text as served and its signature, from either form of Geode's document."""
    text = doc[name]
    if f"{name}_signature" in doc:
        return text, bytes.fromhex(doc[f"{name}_signature"])
    decoder = json.JSONDecoder()
    start = text.index(f'"{member}"') + len(member) + 2
    start = text.index(":", start) + 1
    while text[start] in " \t\r\n":
        start += 1
    _, end = decoder.raw_decode(text, start)
    return text[start:end], bytes.fromhex(json.loads(text)["signature"])


def _pick(raw: bytes, fmspc: str) -> dict[str, str]:
    doc = json.loads(raw)
    documents = doc if isinstance(doc, list) else [doc]
    for candidate in documents:
        info = json.loads(_served(candidate, "tcb_info", "tcbInfo")[0])
        if str(info.get("fmspc", "")).lower() == fmspc.lower():
            return dict(candidate)
    return dict(documents[0])


def dcap_collateral(quote: bytes, collateral: bytes) -> object:
    """Geode's collateral document for ``quote``, as dcap-qvl's ``QuoteCollateralV3``."""
    assert dcap_qvl is not None
    parsed = dcap_qvl.parse_quote(quote)
    doc = _pick(collateral, parsed.fmspc())
    issuers = doc.get("pck_crl_issuer_chain")
    if issuers is None:  # the quote's chain after its leaf, as the text it is
        blocks = _PEM_BLOCK.findall((parsed.cert_chain_pem_bytes() or b"").decode())
        issuers = "".join(blocks[1:])
    tcb_info, tcb_info_signature = _served(doc, "tcb_info", "tcbInfo")
    qe_identity, qe_identity_signature = _served(doc, "qe_identity", "enclaveIdentity")
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=issuers,
        root_ca_crl=_crl_der(doc["root_ca_crl"]),
        pck_crl=_crl_der(doc["pck_crl"]),
        tcb_info_issuer_chain=doc["tcb_info_issuer_chain"],
        tcb_info=tcb_info,
        tcb_info_signature=tcb_info_signature,
        qe_identity_issuer_chain=doc["qe_identity_issuer_chain"],
        qe_identity=qe_identity,
        qe_identity_signature=qe_identity_signature,
    )


def dcap_qvl_opinion(
    quote: bytes,
    collateral: bytes,
    *,
    at: datetime.datetime,
    root: x509.Certificate | None = None,
) -> Opinion:
    """dcap-qvl's verdict on ``quote`` with Geode's ``collateral`` at ``at``, under Intel's root
    or ``root``."""
    if dcap_qvl is None:
        pytest.fail("dcap-qvl is not installed (pip install -e '.[test]')")
    now = int(at.timestamp())
    try:
        theirs = dcap_collateral(quote, collateral)
        if root is None:
            report = dcap_qvl.verify(quote, theirs, now)
        else:
            der = root.public_bytes(Encoding.DER)
            report = dcap_qvl.verify_with_root_ca(quote, theirs, der, now)
    except (ValueError, KeyError, IndexError) as exc:
        reason = " ".join(str(exc).split())
        return Opinion(False, "Revoked" if _REVOKED_LEVEL in reason else "", reason=reason)
    return Opinion(True, report.status, tuple(sorted(report.advisory_ids)))


def geode_opinion(
    tee: str,
    quote: bytes,
    collateral: bytes | None,
    *,
    at: datetime.datetime,
    root: x509.Certificate | None = None,
) -> Opinion:
    """Geode's verdict on the same, through ``EvidenceVerifier`` as the Coordinator calls it."""
    roots = {tee: [root]} if root is not None else None
    verifier = EvidenceVerifier(roots=roots, clock=lambda: at)
    try:
        claims = verifier.verify(Evidence(tee, quote), collateral=collateral)
    except EvidenceError as exc:
        return Opinion(False, reason=str(exc))
    if claims.tcb_status == "Revoked":
        return Opinion(False, "Revoked", reason="the TCB level is Revoked")
    reason = "; ".join(claims.tcb_reasons)
    return Opinion(True, claims.tcb_status, tuple(sorted(claims.advisory_ids)), reason)


@dataclass(frozen=True)
class Structure:
    """What a quote says of itself, as each verifier parses it (no collateral needed)."""

    version: int
    tee: str
    fmspc: str
    measurement: str
    report_data: str


def structure_by_dcap_qvl(quote: bytes) -> Structure | str:
    """dcap-qvl's parse of ``quote``, or why it refused it."""
    assert dcap_qvl is not None
    try:
        parsed = dcap_qvl.parse_quote(quote)
        report = parsed.report
        measurement = report.mr_td if parsed.is_tdx() else report.mr_enclave
        return Structure(
            parsed.header.version,
            "tdx" if parsed.is_tdx() else "sgx",
            parsed.fmspc().lower(),
            measurement.hex(),
            report.report_data.hex(),
        )
    except ValueError as exc:
        return f"refused: {exc}"


def structure_by_geode(tee: str, quote: bytes, *, at: datetime.datetime) -> Structure | str:
    """Geode's verified claims of ``quote`` without collateral, or why it refused it."""
    try:
        claims = EvidenceVerifier(clock=lambda: at).verify(Evidence(tee, quote))
    except EvidenceError as exc:
        return f"refused: {exc}"
    return Structure(
        int(claims.details["quote_version"]),
        claims.tee,
        claims.platform,
        claims.measurement.hex(),
        claims.report_data.hex(),
    )


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


def agree(
    tee: str,
    quote: bytes,
    collateral: bytes,
    at: datetime.datetime,
    root: x509.Certificate | None = None,
) -> Opinion:
    """Both opinions, which must be equal; the common one."""
    ours = geode_opinion(tee, quote, collateral, at=at, root=root)
    theirs = dcap_qvl_opinion(quote, collateral, at=at, root=root)
    assert ours == theirs, f"Geode: {ours}; dcap-qvl: {theirs}"
    return ours


def below_every_level(
    tee: str, quote: bytes, collateral: bytes, at: datetime.datetime, root: x509.Certificate | None
) -> tuple[Opinion, Opinion]:
    """The named exception ``BELOW_EVERY_LEVEL``, asserted as the difference it is: the opinions
    differ (Geode ``OutOfDate`` with the reason, dcap-qvl refuses), and under the default package
    Geode refuses too. Returns (Geode's, dcap-qvl's)."""
    divergence = BELOW_EVERY_LEVEL
    theirs = dcap_qvl_opinion(quote, collateral, at=at, root=root)
    ours = geode_opinion(tee, quote, collateral, at=at, root=root)
    assert ours != theirs, divergence.name
    assert not theirs.accepted
    assert any(message in theirs.reason for message in divergence.dcap_qvl_refusals), theirs.reason
    assert (ours.accepted, ours.status) == (True, divergence.geode_status)
    assert divergence.geode_reason in ours.reason
    roots = {tee: [root]} if root is not None else None
    claims = EvidenceVerifier(roots=roots, clock=lambda: at).verify(
        Evidence(tee, quote), collateral=collateral
    )
    measured = "mrtd" if tee == "tdx" else "measurement"
    package = ReferenceValues.model_validate({"tee": tee, measured: claims.measurement.hex()})
    with pytest.raises(ClaimsMismatch, match=divergence.geode_reason):
        match_claims(claims, package)
    return ours, theirs


_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n(.*?)\n-----END CERTIFICATE-----", re.S)


def pem_blocks(quote: bytes) -> list[re.Match[bytes]]:
    """The PEM certificates of the quote's certification data (offsets within it)."""
    return list(_PEM.finditer(parse_intel_quote(quote).cert_data))


def signed_offsets(quote: bytes) -> Iterator[tuple[str, int]]:
    """Offsets of the bytes a signature covers, directly or through a certificate: header and
    body, quote signature and attestation key, QE report and its signature, QE authentication
    data, and the base64 of the PCK and intermediate certificates (not their line breaks)."""
    parsed = parse_intel_quote(quote)
    auth = parsed.qe_report_signature_offset + 64 + 2
    spans = [
        ("header and body", 0, len(parsed.signed)),
        ("signature and attestation key", parsed.signature_offset, parsed.signature_offset + 128),
        ("QE report", parsed.qe_report_offset, parsed.qe_report_offset + 384),
        ("QE report signature", parsed.qe_report_signature_offset, auth - 2),
        ("QE authentication data", auth, auth + len(parsed.qe_auth_data)),
    ]
    yield from ((name, i) for name, start, end in spans for i in range(start, end))
    blocks = pem_blocks(quote)[:2]  # the root is the verifier's own
    for name, block in zip(("PCK certificate", "PCK CA certificate"), blocks, strict=True):
        start = parsed.cert_data_offset + block.start(1)
        for i in range(start, start + len(block.group(1))):
            if quote[i] != 0x0A:
                yield name, i


def flipped(quote: bytes, offset: int, mask: int) -> bytes:
    changed = bytearray(quote)
    changed[offset] ^= mask
    return bytes(changed)


def both_refuse_flips(
    tee: str,
    quote: bytes,
    collateral: bytes,
    at: datetime.datetime,
    *,
    stride: int,
    root: x509.Certificate | None = None,
) -> int:
    """Flip one bit in every ``stride``-th signed byte: both must refuse each; how many."""
    accepted = []
    count = 0
    for index, (region, offset) in enumerate(signed_offsets(quote)):
        if index % stride:
            continue
        mask = 1 << (index // stride % 8)
        changed = flipped(quote, offset, mask)
        ours = geode_opinion(tee, changed, collateral, at=at, root=root)
        theirs = dcap_qvl_opinion(changed, collateral, at=at, root=root)
        if ours.accepted or theirs.accepted:
            accepted.append(f"{region} at {offset} ^ {mask:#x}: Geode {ours}; dcap-qvl {theirs}")
        count += 1
    assert accepted == []
    return count
