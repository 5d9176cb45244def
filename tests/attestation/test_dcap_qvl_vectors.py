"""A second opinion on the real quotes: every Intel quote in ``../shared/vectors`` is also verified
by dcap-qvl (Phala's independent Rust DCAP verifier, PyPI ``dcap-qvl``) with the same collateral
at the same time, and the two must agree: accepted or refused, the TCB status and the advisory
ids (``tests/attestation/support/dcap_qvl.py`` maps Geode's collateral document onto dcap-qvl's
and documents how the two vocabularies map). The quotes Geode makes under a test root are
compared in ``test_dcap_qvl_properties.py``.

What is compared: the vectors with their collateral (SGX v3 and TDX v4 from dcap-qvl's samples;
go-tdx-guest's TDX quote with its PCS responses), inside and outside the collateral's windows;
the quotes without collateral (Occlum's SGX v3, go-tdx-guest's TDX): dcap-qvl does not verify
without collateral, so there the two parses are compared (version, TEE, FMSPC, measurement,
report data) and Geode's status is ``Unverified``; bit flips in what is signed: both must refuse
every one.

Named exceptions, not agreement (``VECTOR_EXCEPTIONS``): dcap-qvl's outdated TDX v5 sample inside
its window is below every TCB level (``BELOW_EVERY_LEVEL``): Geode reports ``OutOfDate`` with the
reason and the lowest level's advisories, dcap-qvl refuses; both refuse under the default package
(``UpToDate`` only). Where Geode refuses more than dcap-qvl (a changed root certificate inside the
quote, which dcap-qvl does not read; PEM line breaks; the outer certification data type and size
fields), a test asserts the difference.

Without ``../shared/vectors`` or without dcap-qvl the tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from geode.attestation._intel_collateral import parse_collateral
from geode.attestation._intel_quote import parse_intel_quote
from tests.attestation.support.dcap_qvl import (
    BELOW_EVERY_LEVEL,
    Divergence,
    Opinion,
    agree,
    below_every_level,
    both_refuse_flips,
    dcap_collateral,
    dcap_qvl_opinion,
    flipped,
    geode_opinion,
    pem_blocks,
    requires_dcap_qvl,
    structure_by_dcap_qvl,
    structure_by_geode,
    utc,
)
from tests.attestation.support.vectors import (
    VECTORS,
    gotdx_collateral,
    read_vector,
    requires_vectors,
)

pytestmark = requires_dcap_qvl


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


# -- named exceptions: where the two differ by design, never counted as agreement ----------------


@dataclass(frozen=True)
class NamedException:
    name: str
    tee: str
    quote: str
    at: str
    divergence: Divergence


VECTOR_EXCEPTIONS = [
    # Its PCK certificate's SEAMLDR ACM SVN (component 8) is 3, every TCB level asks for 5.
    NamedException("tdx_v5_dcapqvl_outdated", "tdx", "tdx_v5_dcapqvl_outdated", "2026-03-01",
               BELOW_EVERY_LEVEL),
]  # fmt: skip


@requires_vectors
@pytest.mark.parametrize("case", VECTOR_EXCEPTIONS, ids=[c.name for c in VECTOR_EXCEPTIONS])
def test_the_named_exceptions_on_the_vectors(case: NamedException) -> None:
    assert case.divergence is BELOW_EVERY_LEVEL  # the only kind of exception there is
    quote = read_vector(f"{case.quote}.quote.bin")
    collateral = read_vector(f"{case.quote}.collateral.json")
    ours, theirs = below_every_level(case.tee, quote, collateral, utc(case.at), None)
    assert ours != theirs
    # Below every level, Geode carries the lowest level's advisories (it is exposed to at least
    # those): the vector's lowest TCB level lists some.
    fmspc = structure_by_geode(case.tee, quote, at=utc(case.at))
    assert not isinstance(fmspc, str)
    info = json.loads(parse_collateral(collateral, bytes.fromhex(fmspc.fmspc)).tcb_info.text)
    lowest = set(info["tcbLevels"][-1].get("advisoryIDs", []))
    assert lowest
    assert lowest <= set(ours.advisories)


@requires_vectors
def test_every_vector_with_collateral_is_accepted_alike_or_a_named_exception() -> None:
    # Each quote with its own collateral, inside its window, is either in VECTOR_CASES with both
    # accepting alike, or a named exception -- never both, never neither.
    assert VECTORS is not None, "the vectors are needed"
    with_collateral = {
        p.name.removesuffix(".collateral.json") for p in VECTORS.glob("*.collateral.json")
    }
    agreed = {c.quote for c in VECTOR_CASES if c.collateral == c.quote and c.expected.accepted}
    excepted = {c.quote for c in VECTOR_EXCEPTIONS}
    assert agreed.isdisjoint(excepted)
    assert agreed | excepted == with_collateral


# -- bit flips in what is signed -------------------------------------------------------------------


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
    blocks = pem_blocks(quote)
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
