"""A second opinion: every Intel quote Geode is tested on is also verified by dcap-qvl (Phala's
independent Rust DCAP verifier, PyPI ``dcap-qvl``), with the same collateral at the same time, and
the two must agree: accepted or refused, the TCB status and the advisory ids
(``tests/attestation/support/dcap_qvl.py`` maps Geode's collateral document onto dcap-qvl's and
documents how the two vocabularies map).

What is compared, on what:

- the real quotes in ``../shared/vectors`` with their collateral (SGX v3 and TDX v4 from dcap-qvl's
  samples; go-tdx-guest's TDX quote with its PCS responses), inside and outside the collateral's
  windows; the quotes without collateral (Occlum's SGX v3, go-tdx-guest's TDX): dcap-qvl does not
  verify without collateral, so there the two parses are compared (version, TEE, FMSPC,
  measurement, report data) and Geode's status is ``Unverified``;
- the property tests' quotes (``support/intel.py``, under a test root: dcap-qvl takes another
  root through ``verify_with_root_ca``): every TCB status, QE identity and TDX module convergence,
  revoked certificates, forged or stale collateral, broken QE bindings, and TCB levels drawn by
  hypothesis;
- bit flips in what is signed (header and body, signature and attestation key, QE report and its
  signature, QE authentication data, the PCK and intermediate certificates), in the real quotes
  and in the property tests' quotes: both must refuse every one.

Where they differ by design, a test says so and asserts the difference (nothing is marked xfail):
Geode refuses more than dcap-qvl (a changed root certificate inside the quote, which dcap-qvl
does not read; PEM line breaks; the outer certification data type and size fields); dcap-qvl
verifies SGX quotes in version 3 only; dcap-qvl refuses a CRL without extensions, which Geode
accepts. A platform, TD or QE below every TCB level is refused by dcap-qvl ("No matching TCB level
found", "QE ISVSVN n is below minimum required m"); Geode reports it ``OutOfDate`` with the reason
and lets the package decide: with the default package (``UpToDate`` only) both refuse.
dcap-qvl's ``verify`` also applies a policy of its own that Geode leaves to the package (debug
enclaves and TDs) or only reports (a bound service TD, MRSERVICETD): asserted below too.

Without ``../shared/vectors`` or without dcap-qvl the tests skip locally and fail in CI.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.attestation import Evidence, EvidenceVerifier, ReferenceValues, match_claims
from geode.attestation._intel_collateral import parse_collateral
from geode.attestation._intel_quote import parse_intel_quote
from geode.errors import ClaimsMismatch
from tests.attestation.support import intel as kit
from tests.attestation.support.dcap_qvl import (
    BELOW_EVERY_LEVEL,
    Opinion,
    dcap_collateral,
    dcap_qvl_opinion,
    geode_opinion,
    requires_dcap_qvl,
    structure_by_dcap_qvl,
    structure_by_geode,
)
from tests.attestation.support.intel import QuoteSpec, build_quote, collateral_bytes
from tests.attestation.support.vectors import gotdx_collateral, read_vector, requires_vectors

pytestmark = requires_dcap_qvl


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


# -- the real vectors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    tee: str
    quote: str
    collateral: str  # a vector's file, or "gotdx" for go-tdx-guest's PCS responses
    at: str
    expected: Opinion


SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
REFUSED = Opinion(False)
VECTOR_CASES = [
    Case("sgx_v3_dcapqvl", "sgx", "sgx_v3_dcapqvl", "sgx_v3_dcapqvl", "2025-07-01",
         Opinion(True, "ConfigurationAndSWHardeningNeeded", SGX_ADVISORIES)),
    Case("sgx_v3_dcapqvl-before", "sgx", "sgx_v3_dcapqvl", "sgx_v3_dcapqvl", "2025-06-19T10:00",
         REFUSED),
    Case("sgx_v3_dcapqvl-after", "sgx", "sgx_v3_dcapqvl", "sgx_v3_dcapqvl", "2025-07-20",
         REFUSED),
    Case("tdx_v4_dcapqvl", "tdx", "tdx_v4_dcapqvl", "tdx_v4_dcapqvl", "2025-07-01",
         Opinion(True, "UpToDate")),
    Case("tdx_v4_dcapqvl-after", "tdx", "tdx_v4_dcapqvl", "tdx_v4_dcapqvl", "2025-07-20",
         REFUSED),
    Case("tdx_v5_dcapqvl_outdated-after", "tdx", "tdx_v5_dcapqvl_outdated",
         "tdx_v5_dcapqvl_outdated", "2026-03-21", REFUSED),
    # go-tdx-guest's PCS responses with the TCB signing chain of the dcap-qvl samples, valid from
    # 2025: in 2023 the signing certificate is not yet valid, in 2025 the CRLs have expired.
    Case("tdx_v4_gotdx_spr-2023", "tdx", "tdx_v4_gotdx_spr_trailing", "gotdx", "2023-07-01",
         REFUSED),
    Case("tdx_v4_gotdx_spr-2025", "tdx", "tdx_v4_gotdx_spr_trailing", "gotdx", "2025-07-01",
         REFUSED),
    # The Intel collateral of another platform (FMSPC 00a067110000 for a TDX quote).
    Case("tdx_v4_dcapqvl-sgx-collateral", "tdx", "tdx_v4_dcapqvl", "sgx_v3_dcapqvl",
         "2025-07-01", REFUSED),
]  # fmt: skip


def collateral_of(name: str) -> bytes:
    return gotdx_collateral() if name == "gotdx" else read_vector(f"{name}.collateral.json")


@requires_vectors
@pytest.mark.parametrize("case", VECTOR_CASES, ids=[c.name for c in VECTOR_CASES])
def test_geode_and_dcap_qvl_agree_on_the_vectors(case: Case) -> None:
    quote = read_vector(f"{case.quote}.quote.bin")
    opinion = agree(case.tee, quote, collateral_of(case.collateral), utc(case.at))
    assert opinion == case.expected


@requires_vectors
def test_the_adapter_hands_dcap_qvl_the_texts_geode_checks() -> None:
    # go-tdx-guest's collateral comes as PCS response bodies: the texts and signatures handed to
    # dcap-qvl are the ones Geode verifies, byte for byte (no acceptance shows it: the TCB
    # signing chain among the vectors is not valid while those responses are).
    quote = read_vector("tdx_v4_gotdx_spr_trailing.quote.bin")
    theirs = dcap_collateral(quote, gotdx_collateral())
    ours = parse_collateral(gotdx_collateral(), bytes.fromhex("50806f000000"))
    assert (theirs.tcb_info, theirs.tcb_info_signature) == (
        ours.tcb_info.text,
        ours.tcb_info.signature,
    )
    assert (theirs.qe_identity, theirs.qe_identity_signature) == (
        ours.qe_identity.text,
        ours.qe_identity.signature,
    )
    assert theirs.pck_crl == ours.pck_crl.public_bytes(serialization.Encoding.DER)
    chain = x509.load_pem_x509_certificates(theirs.pck_crl_issuer_chain.encode())
    assert [c.subject.rfc4514_string() for c in chain] == [
        ours.pck_crl.issuer.rfc4514_string(),
        ours.root_crl.issuer.rfc4514_string(),
    ]


@requires_vectors
@pytest.mark.parametrize(
    ("tee", "name", "at", "fmspc"),
    [
        ("sgx", "sgx_v3_occlum", "2025-07-01", "00606a000000"),
        ("tdx", "tdx_v4_gotdx_spr_trailing", "2023-07-01", "50806f000000"),
        ("sgx", "sgx_v3_dcapqvl", "2025-07-01", "00a067110000"),
        ("tdx", "tdx_v4_dcapqvl", "2025-07-01", "b0c06f000000"),
        ("tdx", "tdx_v5_dcapqvl_outdated", "2026-03-01", "90c06f000000"),
    ],
)
def test_without_collateral_both_parse_the_same_quote(
    tee: str, name: str, at: str, fmspc: str
) -> None:
    # dcap-qvl verifies nothing without collateral; what both can say is what the quote says.
    quote = read_vector(f"{name}.quote.bin")
    ours = structure_by_geode(tee, quote, at=utc(at))
    assert ours == structure_by_dcap_qvl(quote)
    assert not isinstance(ours, str)
    assert (ours.tee, ours.fmspc) == (tee, fmspc)
    assert geode_opinion(tee, quote, None, at=utc(at)) == Opinion(True, "Unverified")


def below_every_level(
    tee: str, quote: bytes, collateral: bytes, at: datetime.datetime, root: x509.Certificate | None
) -> None:
    """dcap-qvl refuses; Geode reports ``OutOfDate`` with the reason, and a package accepting
    ``UpToDate`` only (the default) refuses it: the verdicts agree, the statuses map."""
    theirs = dcap_qvl_opinion(quote, collateral, at=at, root=root)
    assert not theirs.accepted
    assert any(message in theirs.reason for message in BELOW_EVERY_LEVEL[0]), theirs.reason
    ours = geode_opinion(tee, quote, collateral, at=at, root=root)
    assert (ours.accepted, ours.status) == (True, "OutOfDate")
    assert BELOW_EVERY_LEVEL[1] in ours.reason
    roots = {tee: [root]} if root is not None else None
    claims = EvidenceVerifier(roots=roots, clock=lambda: at).verify(
        Evidence(tee, quote), collateral=collateral
    )
    field = "mrtd" if tee == "tdx" else "measurement"
    package = ReferenceValues.model_validate({"tee": tee, field: claims.measurement.hex()})
    with pytest.raises(ClaimsMismatch, match=BELOW_EVERY_LEVEL[1]):
        match_claims(claims, package)


@requires_vectors
def test_a_platform_below_every_tcb_level_on_the_outdated_vector() -> None:
    # Its SEAMLDR ACM SVN is 3, every TCB level asks for 5.
    quote = read_vector("tdx_v5_dcapqvl_outdated.quote.bin")
    collateral = read_vector("tdx_v5_dcapqvl_outdated.collateral.json")
    below_every_level("tdx", quote, collateral, utc("2026-03-01"), None)


# -- bit flips in what is signed -------------------------------------------------------------------

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n(.*?)\n-----END CERTIFICATE-----", re.S)


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
    blocks = list(_PEM.finditer(parsed.cert_data))[:2]  # the root is the verifier's own
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


@requires_vectors
@pytest.mark.parametrize(
    ("tee", "name", "at"),
    [("sgx", "sgx_v3_dcapqvl", "2025-07-01"), ("tdx", "tdx_v4_dcapqvl", "2025-07-01")],
)
def test_both_refuse_bit_flips_in_the_signed_parts_of_the_vectors(
    tee: str, name: str, at: str
) -> None:
    quote = read_vector(f"{name}.quote.bin")
    collateral = read_vector(f"{name}.collateral.json")
    assert agree(tee, quote, collateral, utc(at)).accepted  # the unflipped quote is accepted
    assert both_refuse_flips(tee, quote, collateral, utc(at), stride=3) > 1000


@requires_vectors
def test_where_geode_refuses_what_dcap_qvl_accepts() -> None:
    """Outside what is signed, Geode refuses more: each of these leaves dcap-qvl's answer as it
    was. Found by flipping every bit of the vectors; none the other way round."""
    quote = read_vector("tdx_v4_dcapqvl.quote.bin")
    collateral = read_vector("tdx_v4_dcapqvl.collateral.json")
    at = utc("2025-07-01")
    parsed = parse_intel_quote(quote)
    blocks = list(_PEM.finditer(parsed.cert_data))
    root_body = parsed.cert_data_offset + blocks[2].start(1) + 20  # inside the root's base64
    line_break = parsed.cert_data_offset + blocks[0].start(1) + 64
    assert quote[line_break] == 0x0A
    changes = {
        # dcap-qvl checks the chain up to its own copy of the root and never reads the quote's
        "the quote's root certificate": (root_body, 0x01, "does not end at a trusted root"),
        "a PEM line break": (line_break, 0x01, "not a plain PEM certificate chain"),
        "the certification data type (6)": (parsed.qe_report_offset - 6, 0x01, "expected type 6"),
        "the signature data length": (len(parsed.signed), 0x01, "bytes declared"),
    }
    for what, (offset, mask, refusal) in changes.items():
        changed = flipped(quote, offset, mask)
        ours = geode_opinion("tdx", changed, collateral, at=at)
        theirs = dcap_qvl_opinion(changed, collateral, at=at)
        assert (ours.accepted, theirs) == (False, Opinion(True, "UpToDate")), what
        assert refusal in ours.reason, what


# -- the property tests' quotes, under their test root ---------------------------------------------

TDX_SVN = bytes([3, 0, 5] + [0] * 13)


def sgx(**spec: object) -> bytes:
    return build_quote(QuoteSpec(**spec))  # type: ignore[arg-type]


def tdx(version: int = 4, **spec: object) -> bytes:
    return build_quote(QuoteSpec(version=version, tee="tdx", **spec))  # type: ignore[arg-type]


def td15(mrservicetd: bytes = bytes(48)) -> bytes:
    """A TDX 1.5 body; no service TD bound unless ``mrservicetd`` says so."""
    return kit.td_report() + TDX_SVN + mrservicetd


def tdx_collateral(**kwargs: object) -> bytes:
    kwargs.setdefault("info", kit.tcb_info(tdx=True))
    kwargs.setdefault("identity", kit.qe_identity(tdx=True))
    return collateral_bytes(**kwargs)


def platform(status: str, advisories: tuple[str, ...] = ("INTEL-SA-00001",)) -> bytes:
    return collateral_bytes(
        info=kit.tcb_info(levels=[kit.tcb_level(status, tdx=None, advisories=advisories)])
    )


def converging(platform_status: str, qe_status: str) -> bytes:
    info = kit.tcb_info(levels=[kit.tcb_level(platform_status, tdx=None, advisories=["SA-P"])])
    identity = kit.qe_identity(
        levels=[kit.identity_level(9, "UpToDate"), kit.identity_level(8, qe_status, ["SA-Q"])]
    )
    return collateral_bytes(info=info, identity=identity)


def tdx_module_collateral() -> bytes:
    module = {
        "id": "TDX_03",
        "mrsigner": "00" * 48,
        "attributes": "00" * 8,
        "attributesMask": "FF" * 8,
        "tcbLevels": [
            kit.identity_level(4, "UpToDate"),
            kit.identity_level(2, "OutOfDate", ["INTEL-SA-M"]),
        ],
    }
    levels = [kit.tcb_level("ConfigurationNeeded", tdx=bytes([99, 99, 5] + [0] * 13))]
    info = kit.tcb_info(tdx=True, levels=levels, module_identities=[module])
    return collateral_bytes(info=info, identity=kit.qe_identity(tdx=True))


def window(part: str, side: str) -> bytes:
    moved = (
        {"issued": kit.NOW + datetime.timedelta(hours=1)}
        if side == "before"
        else {"next_update": kit.NOW - datetime.timedelta(hours=1)}
    )
    p = kit.pki()
    if part == "tcb_info":
        return collateral_bytes(info=kit.tcb_info(**moved))  # type: ignore[arg-type]
    if part == "qe_identity":
        return collateral_bytes(identity=kit.qe_identity(**moved))  # type: ignore[arg-type]
    if part == "root_ca_crl":
        return collateral_bytes(root_crl=kit.crl(p.root, p.root_key, **moved))  # type: ignore[arg-type]
    return collateral_bytes(pck_crl=kit.crl(p.ca, p.ca_key, **moved))  # type: ignore[arg-type]


def revoked(which: str) -> bytes:
    p = kit.pki()
    if which == "pck":
        return collateral_bytes(pck_crl=kit.crl(p.ca, p.ca_key, revoked=[p.pck.serial_number]))
    serial = p.ca.serial_number if which == "ca" else p.tcb_signer.serial_number
    return collateral_bytes(root_crl=kit.crl(p.root, p.root_key, revoked=[serial]))


def foreign_signature() -> bytes:
    doc = kit.collateral()
    doc["tcb_info_signature"] = kit.collateral(pki=kit.make_pki())["tcb_info_signature"]
    return json.dumps(doc).encode()


def up(status: str, *advisories: str) -> Opinion:
    return Opinion(True, status, tuple(sorted(advisories)))


SA = "INTEL-SA-00001"
# (name, tee, quote, collateral, the opinion both must give)
PROPERTY_CASES: list[tuple[str, str, object, object, Opinion]] = [
    ("sgx-v3", "sgx", sgx, collateral_bytes, up("UpToDate")),
    ("tdx-v4", "tdx", tdx, tdx_collateral, up("UpToDate")),
    ("tdx-v5", "tdx", lambda: tdx(5), tdx_collateral, up("UpToDate")),
    ("tdx-v5-tdx15", "tdx", lambda: tdx(5, body=td15()), tdx_collateral, up("UpToDate")),
    *[
        (f"platform-{s}", "sgx", sgx, lambda s=s: platform(s), up(s, SA))
        for s in ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                  "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded")
    ],
    ("platform-Revoked", "sgx", sgx, lambda: platform("Revoked"), Opinion(False, "Revoked")),
    ("first-level-reached-wins", "sgx", sgx, lambda: collateral_bytes(info=kit.tcb_info(levels=[
        kit.tcb_level("UpToDate", cpu_svn=bytes([9] * 16), tdx=None),
        kit.tcb_level("UpToDate", pce_svn=99, tdx=None),
        kit.tcb_level("SWHardeningNeeded", tdx=None, advisories=["INTEL-SA-2"]),
        kit.tcb_level("OutOfDate", cpu_svn=bytes(16), pce_svn=0, tdx=None),
    ])), up("SWHardeningNeeded", "INTEL-SA-2")),
    *[
        (f"qe-{p}-{q}", "sgx", sgx, lambda p=p, q=q: converging(p, q), expected)
        for p, q, expected in [
            ("UpToDate", "OutOfDate", up("OutOfDate", "SA-P", "SA-Q")),
            ("SWHardeningNeeded", "OutOfDate", up("OutOfDate", "SA-P", "SA-Q")),
            ("ConfigurationNeeded", "OutOfDate",
             up("OutOfDateConfigurationNeeded", "SA-P", "SA-Q")),
            ("ConfigurationAndSWHardeningNeeded", "OutOfDate",
             up("OutOfDateConfigurationNeeded", "SA-P", "SA-Q")),
            ("OutOfDate", "OutOfDate", up("OutOfDate", "SA-P", "SA-Q")),
            ("UpToDate", "Revoked", Opinion(False, "Revoked")),
            ("ConfigurationNeeded", "UpToDate", up("ConfigurationNeeded", "SA-P", "SA-Q")),
        ]
    ],
    *[
        (f"qe-identity-{key}", "sgx", sgx,
         lambda c=change: collateral_bytes(identity={**kit.qe_identity(), **c}), REFUSED)
        for key, change in [("mrsigner", {"mrsigner": "00" * 32}), ("isvprodid", {"isvprodid": 5}),
                            ("miscselect", {"miscselect": "00000001"}),
                            ("attributes", {"attributes": "31" + "00" * 15}),
                            ("id", {"id": "TD_QE"})]
    ],
    ("tdx-tee-tcb-svn", "tdx", tdx, lambda: tdx_collateral(info=kit.tcb_info(tdx=True, levels=[
        kit.tcb_level("UpToDate", tdx=bytes([4, 0, 5] + [0] * 13)),
        kit.tcb_level("OutOfDate", tdx=TDX_SVN, advisories=["INTEL-SA-T"]),
    ])), up("OutOfDate", "INTEL-SA-T")),
    ("tdx-module-identity", "tdx",
     lambda: tdx(body=kit.td_report(tee_tcb_svn=bytes([2, 3, 5] + [0] * 13))),
     tdx_module_collateral, up("OutOfDateConfigurationNeeded", "INTEL-SA-M")),
    ("tdx-module-of-another-signer", "tdx", lambda: tdx(body=kit.td_report(
        mrsignerseam=b"\x01" * 48)), tdx_collateral, REFUSED),
    ("tcb-info-of-another-fmspc", "sgx", sgx,
     lambda: collateral_bytes(info=kit.tcb_info(fmspc=bytes(6))), REFUSED),
    ("tcb-info-of-tdx-for-sgx", "sgx", sgx, lambda: tdx_collateral(), REFUSED),
    *[(f"revoked-{w}", "sgx", sgx, lambda w=w: revoked(w), REFUSED) for w in ("pck", "ca", "tcb")],
    ("pck-crl-signed-by-the-root", "sgx", sgx, lambda: collateral_bytes(
        pck_crl=kit.crl(kit.pki().ca, kit.pki().root_key)), REFUSED),
    ("pck-crl-of-the-root", "sgx", sgx, lambda: collateral_bytes(
        pck_crl=kit.crl(kit.pki().root, kit.pki().root_key)), REFUSED),
    *[
        (f"{part}-{side}-its-window", "sgx", sgx, lambda p=part, s=side: window(p, s), REFUSED)
        for part, side in [("tcb_info", "before"), ("tcb_info", "after"),
                           ("qe_identity", "before"), ("qe_identity", "after"),
                           ("root_ca_crl", "after"), ("pck_crl", "after")]
    ],
    ("tcb-info-signed-by-another-key", "sgx", sgx, foreign_signature, REFUSED),
    ("tcb-info-altered-after-signing", "sgx", sgx,
     lambda: collateral_bytes(tamper="tcb_info"), REFUSED),
    ("qe-report-not-binding-the-key", "sgx", lambda: sgx(qe_report_data=bytes(64)),
     collateral_bytes, REFUSED),
    ("debug-quoting-enclave", "sgx", lambda: sgx(qe_attributes=bytes.fromhex("13" + "00" * 15)),
     collateral_bytes, REFUSED),
    ("chain-of-another-root", "sgx", lambda: sgx(pki=kit.make_pki()), collateral_bytes, REFUSED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tee", "make_quote", "make_collateral", "expected"),
    [case[1:] for case in PROPERTY_CASES],
    ids=[case[0] for case in PROPERTY_CASES],
)
def test_geode_and_dcap_qvl_agree_on_the_property_tests_quotes(
    tee: str, make_quote: object, make_collateral: object, expected: Opinion
) -> None:
    quote = make_quote()  # type: ignore[operator]
    collateral = make_collateral()  # type: ignore[operator]
    assert agree(tee, quote, collateral, kit.NOW, kit.pki().root) == expected


@pytest.mark.parametrize("what", ["platform", "td", "qe"])
def test_below_every_tcb_level_under_the_test_root(what: str) -> None:
    high = bytes([9] * 16)
    if what == "platform":
        info = kit.tcb_info(levels=[kit.tcb_level("UpToDate", cpu_svn=high, tdx=None)])
        quote, collateral = sgx(), collateral_bytes(info=info)
    elif what == "td":
        info = kit.tcb_info(tdx=True, levels=[kit.tcb_level("UpToDate", tdx=high)])
        quote, collateral = tdx(), tdx_collateral(info=info)
    else:
        identity = kit.qe_identity(levels=[kit.identity_level(9, "UpToDate")])
        quote, collateral = sgx(), collateral_bytes(identity=identity)
    below_every_level("tdx" if what == "td" else "sgx", quote, collateral, kit.NOW, kit.pki().root)


STATUSES = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
]
_SVN = st.integers(min_value=0, max_value=6)


@st.composite
def tcb_levels(draw: st.DrawFn, tdx: bool) -> list[dict[str, object]]:
    """One to four TCB levels around the test platform's SVNs, the last one always reached (a
    platform below every level is the case above)."""
    levels = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        cpu = bytes(draw(st.lists(_SVN, min_size=16, max_size=16)))
        tee_tcb = bytes(draw(st.lists(_SVN, min_size=16, max_size=16))) if tdx else None
        advisories = draw(st.lists(st.sampled_from(["INTEL-SA-00001", "INTEL-SA-00002"])))
        status = draw(st.sampled_from(STATUSES))
        pce = draw(st.integers(min_value=11, max_value=15))
        levels.append(kit.tcb_level(status, cpu_svn=cpu, pce_svn=pce, tdx=tee_tcb,
                                    advisories=sorted(set(advisories))))  # fmt: skip
    floor = draw(st.sampled_from(STATUSES))
    levels.append(
        kit.tcb_level(floor, cpu_svn=bytes(16), pce_svn=0, tdx=bytes(16) if tdx else None)
    )
    return levels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data(), st.integers(min_value=0, max_value=12))
def test_geode_and_dcap_qvl_agree_on_drawn_tcb_levels(
    is_tdx: bool, data: st.DataObject, qe_floor: int
) -> None:
    levels = data.draw(tcb_levels(is_tdx))
    identity = kit.qe_identity(
        tdx=is_tdx,
        levels=[
            kit.identity_level(qe_floor, "UpToDate"),
            kit.identity_level(0, data.draw(st.sampled_from(["OutOfDate", "Revoked"])), ["SA-Q"]),
        ],
    )
    collateral = collateral_bytes(info=kit.tcb_info(tdx=is_tdx, levels=levels), identity=identity)
    quote = tdx() if is_tdx else sgx()
    agree("tdx" if is_tdx else "sgx", quote, collateral, kit.NOW, kit.pki().root)


@pytest.mark.parametrize(
    ("tee", "make_quote", "make_collateral"),
    [("sgx", sgx, collateral_bytes), ("tdx", tdx, tdx_collateral),
     ("tdx", lambda: tdx(5, body=td15()), tdx_collateral)],
    ids=["sgx-v3", "tdx-v4", "tdx-v5-tdx15"],
)  # fmt: skip
def test_both_refuse_bit_flips_in_the_signed_parts_of_the_property_tests_quotes(
    tee: str, make_quote: object, make_collateral: object
) -> None:
    quote = make_quote()  # type: ignore[operator]
    collateral = make_collateral()  # type: ignore[operator]
    root = kit.pki().root
    assert agree(tee, quote, collateral, kit.NOW, root).accepted
    assert both_refuse_flips(tee, quote, collateral, kit.NOW, stride=5, root=root) > 300


# -- where the two differ by design ----------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_dcap_qvl_verifies_sgx_quotes_of_version_3_only(version: int) -> None:
    # Intel's quote formats 4 and 5 carry SGX enclaves too (TEE type 0, v5 body type 1); Geode
    # verifies them, dcap-qvl refuses them by version.
    quote, collateral, root = sgx(version=version), collateral_bytes(), kit.pki().root
    assert geode_opinion("sgx", quote, collateral, at=kit.NOW, root=root) == up("UpToDate")
    theirs = dcap_qvl_opinion(quote, collateral, at=kit.NOW, root=root)
    assert not theirs.accepted
    assert "SGX TEE quote must have version 3" in theirs.reason


def test_dcap_qvl_refuses_a_crl_without_extensions() -> None:
    # RFC 5280 asks CRL issuers for a CRL number; Intel's CRLs have one and so do the test's.
    # dcap-qvl (webpki) refuses a CRL with none; Geode checks the issuer, signature and window
    # only. Not a weakness: the CRL is still signed by its issuer.
    p = kit.pki()
    bare = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(p.ca.subject)
        .last_update(kit.ISSUED)
        .next_update(kit.NEXT)
        .sign(p.ca_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    collateral = collateral_bytes(pck_crl=bare)
    assert geode_opinion("sgx", sgx(), collateral, at=kit.NOW, root=p.root) == up("UpToDate")
    theirs = dcap_qvl_opinion(sgx(), collateral, at=kit.NOW, root=p.root)
    assert not theirs.accepted
    assert "Failed to parse PCK CRL" in theirs.reason


@pytest.mark.parametrize("crl", ["root_ca_crl", "pck_crl"])
def test_geode_refuses_a_crl_issued_after_the_verification_time(crl: str) -> None:
    # Geode holds a CRL to its whole window; dcap-qvl (webpki) checks its next update only.
    collateral, root = window(crl, "before"), kit.pki().root
    ours = geode_opinion("sgx", sgx(), collateral, at=kit.NOW, root=root)
    assert not ours.accepted
    assert "not valid at" in ours.reason
    assert dcap_qvl_opinion(sgx(), collateral, at=kit.NOW, root=root) == up("UpToDate")


def test_a_bound_service_td_is_refused_by_dcap_qvl_and_reported_by_geode() -> None:
    # dcap-qvl's verify adds a policy to DCAP: no debug TD or enclave, SEPT_VE_DISABLE set, no
    # reserved TD attribute bits, and MRSERVICETD zero (no service TD, such as a migration TD,
    # bound). Geode leaves the first three to the package (``debug``, ``sept_ve_disable``);
    # MRSERVICETD it only reports, in the claims' details: no package field checks it yet.
    bound = b"\x05" * 48
    quote, collateral, root = tdx(5, body=td15(bound)), tdx_collateral(), kit.pki().root
    theirs = dcap_qvl_opinion(quote, collateral, at=kit.NOW, root=root)
    assert not theirs.accepted
    assert "Invalid MR service TD" in theirs.reason
    assert geode_opinion("tdx", quote, collateral, at=kit.NOW, root=root) == up("UpToDate")
    claims = EvidenceVerifier(roots={"tdx": [root]}, clock=lambda: kit.NOW).verify(
        Evidence("tdx", quote), collateral=collateral
    )
    assert claims.details["mrservicetd"] == bound.hex()


@pytest.mark.parametrize("tee", ["sgx", "tdx"])
def test_a_debug_enclave_or_td_is_refused_by_dcap_qvl_and_left_to_the_package_by_geode(
    tee: str,
) -> None:
    root = kit.pki().root
    if tee == "sgx":
        quote, collateral = sgx(body=kit.sgx_report(debug=True)), collateral_bytes()
    else:
        quote, collateral = tdx(body=kit.td_report(debug=True)), tdx_collateral()
    theirs = dcap_qvl_opinion(quote, collateral, at=kit.NOW, root=root)
    assert not theirs.accepted
    assert "Debug mode" in theirs.reason
    assert geode_opinion(tee, quote, collateral, at=kit.NOW, root=root) == up("UpToDate")
