"""AMD's CRL as the collateral of SEV-SNP: a revoked ASK, ASVK, VCEK or VLEK is refused; a CRL
not signed by the chain's ARK, of the other key kind or product, or out of date, is refused;
without one, the TCB is Unverified. The verdict's status: UpToDate with a CRL and a min_tcb met."""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import (
    Claims,
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    TrustAnchors,
    match_claims,
)
from geode.attestation._snp import verify_snp_report
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from geode.errors import ClaimsMismatch, EvidenceError
from geode.tee import SnpTcb
from tests.attestation.support.snp import AT, AmdPki, forge_report, tcb_raw

CHIP = os.urandom(64)
TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


@pytest.fixture(scope="module")
def pki() -> AmdPki:
    return AmdPki.create("Milan")


@pytest.fixture(scope="module")
def signed(pki: AmdPki) -> tuple[bytes, x509.Certificate]:
    key, vcek = pki.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    table = build_cert_table(
        (CERT_TABLE_GUIDS[n], c.public_bytes(Encoding.DER))
        for n, c in (("ask", pki.ask), ("vcek", vcek))
    )
    return data + table, vcek


def test_without_a_crl_the_tcb_is_unverified(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    claims = verify_snp_report(signed[0], at=AT, roots=[pki.ark])
    assert claims.tcb_status == "Unverified"
    assert "revocation" not in claims.checked
    assert "not checked" in claims.details["revocation"]


@pytest.mark.parametrize("pem", [False, True])
def test_a_current_crl_that_lists_nothing_of_the_chain(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate], pem: bool
) -> None:
    other = pki.endorsement(hwid=os.urandom(64), tcb=TCB)[1]
    crl = pki.crl(revoked=(other,), pem=pem)
    claims = verify_snp_report(signed[0], collateral=crl, at=AT, roots=[pki.ark])
    # A CRL proves the chain is not revoked, nothing about the TCB level: AMD publishes no TCB
    # status for SNP, so the verdict stays Unverified and says what was checked.
    assert claims.tcb_status == "Unverified"
    assert "revocation" in claims.checked
    assert "not revoked" in claims.details["revocation"]


def test_a_revoked_ask_is_refused(pki: AmdPki, signed: tuple[bytes, x509.Certificate]) -> None:
    with pytest.raises(EvidenceError, match=r"SEV-Milan certificate .* is revoked"):
        verify_snp_report(signed[0], collateral=pki.crl(revoked=(pki.ask,)), at=AT, roots=[pki.ark])


def test_a_revoked_vcek_is_refused(pki: AmdPki, signed: tuple[bytes, x509.Certificate]) -> None:
    with pytest.raises(EvidenceError, match=r"SEV-VCEK certificate .* is revoked"):
        verify_snp_report(
            signed[0], collateral=pki.crl(revoked=(signed[1],)), at=AT, roots=[pki.ark]
        )


def test_a_revoked_asvk_is_refused(pki: AmdPki) -> None:
    key, vlek = pki.endorsement(kind="VLEK", tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), signer_info=1 << 2)
    table = build_cert_table(
        (CERT_TABLE_GUIDS[n], c.public_bytes(Encoding.DER))
        for n, c in (("ask", pki.asvk), ("vlek", vlek))
    )
    verify_snp_report(data + table, collateral=pki.crl(kind="VLEK"), at=AT, roots=[pki.ark])
    with pytest.raises(EvidenceError, match=r"SEV-VLEK-Milan certificate .* is revoked"):
        verify_snp_report(
            data + table,
            collateral=pki.crl(revoked=(pki.asvk,), kind="VLEK"),
            at=AT,
            roots=[pki.ark],
        )
    # A CRL of no stated kind that lists the ASVK is the ARK saying it is revoked, all the same.
    with pytest.raises(EvidenceError, match=r"SEV-VLEK-Milan certificate .* is revoked"):
        verify_snp_report(
            data + table, collateral=pki.crl(revoked=(pki.asvk,), kind=None), at=AT, roots=[pki.ark]
        )


@pytest.mark.parametrize("kind", ["VCEK", "VLEK"])
def test_a_crl_of_unstated_kind_does_not_count_as_revocation_checked(
    pki: AmdPki,
    signed: tuple[bytes, x509.Certificate],
    vlek_signed: tuple[bytes, x509.Certificate],
    kind: str,
) -> None:
    # The VCEK CRL (listing the ASKs) given for a VLEK chain, without an issuing distribution
    # point, cannot be told from the VLEK CRL: its not listing a revoked ASVK says nothing.
    data = signed[0] if kind == "VCEK" else vlek_signed[0]
    sibling = pki.crl(revoked=(pki.asvk if kind == "VLEK" else pki.ask,), kind=None)
    other = pki.crl(revoked=(pki.ask if kind == "VLEK" else pki.asvk,), kind=None)
    claims = verify_snp_report(data, collateral=other, at=AT, roots=[pki.ark])
    intermediate = "SEV-VLEK-Milan" if kind == "VLEK" else "SEV-Milan"
    assert claims.checked == {"signature", "chain"}
    assert claims.tcb_reasons == (
        "revocation not checked: the AMD CRL does not state its kind (no issuing distribution "
        f"point), so it is not known to cover {intermediate} (give /{kind.lower()}/v1/Milan/crl "
        "with its distribution point)",
    )
    assert "kind not stated" in claims.details["revocation"]
    with pytest.raises(EvidenceError, match=f"{intermediate} certificate .* is revoked"):
        verify_snp_report(data, collateral=sibling, at=AT, roots=[pki.ark])
    verdict = match_claims(claims, package(claims, min_tcb=SnpTcb(**TCB)))
    assert (verdict.status, verdict.checked) == ("Unverified", {"signature", "chain", "reference"})
    assert verdict.reasons == (
        claims.tcb_reasons[0],
        "revocation not checked (the AMD CRL given is not known to cover the chain)",
    )


@pytest.mark.parametrize(
    ("extension", "critical", "message"),
    [
        (x509.DeltaCRLIndicator(1), True, "the CRL is a delta CRL"),
        (x509.CRLNumber(7), True, "critical extension 2.5.29.20 that is not understood"),
    ],
)
def test_a_delta_crl_or_an_unknown_critical_extension_is_refused(
    pki: AmdPki,
    signed: tuple[bytes, x509.Certificate],
    extension: x509.ExtensionType,
    critical: bool,
    message: str,
) -> None:
    crl = pki.crl(extensions=((extension, critical),))
    with pytest.raises(EvidenceError, match=message):
        verify_snp_report(signed[0], collateral=crl, at=AT, roots=[pki.ark])
    plain = pki.crl(extensions=((x509.CRLNumber(7), False),))
    assert (
        "revocation"
        in verify_snp_report(signed[0], collateral=plain, at=AT, roots=[pki.ark]).checked
    )


def test_a_crl_of_another_ark_is_refused(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    other = AmdPki.create("Milan")
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_snp_report(signed[0], collateral=other.crl(), at=AT, roots=[pki.ark])


def test_a_crl_signed_with_pkcs1_is_refused(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    crl = pki.crl(rsa_padding=padding.PKCS1v15())
    with pytest.raises(EvidenceError, match="RSASSA-PSS"):
        verify_snp_report(signed[0], collateral=crl, at=AT, roots=[pki.ark])


def test_an_out_of_date_crl_is_refused(pki: AmdPki, signed: tuple[bytes, x509.Certificate]) -> None:
    crl = pki.crl(
        issued=AT - datetime.timedelta(days=30), next_update=AT - datetime.timedelta(days=1)
    )
    with pytest.raises(EvidenceError, match="not current"):
        verify_snp_report(signed[0], collateral=crl, at=AT, roots=[pki.ark])


def test_garbage_collateral_is_refused(pki: AmdPki, signed: tuple[bytes, x509.Certificate]) -> None:
    with pytest.raises(EvidenceError) as caught:
        verify_snp_report(signed[0], collateral=b"not a crl", at=AT, roots=[pki.ark])
    assert caught.value.field == "collateral"


def test_the_verifier_takes_the_crl_from_its_trust_anchors(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    trust = (
        TrustAnchors()
        .with_roots("sev-snp", [pki.ark])
        .with_collateral("sev-snp", pki.crl(revoked=(pki.ask,)))
        .with_clock(lambda: AT)
    )
    with pytest.raises(EvidenceError, match="revoked"):
        EvidenceVerifier(trust=trust).verify(Evidence("sev-snp", signed[0]))


# -- what the verdict says -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlek_signed(pki: AmdPki) -> tuple[bytes, x509.Certificate]:
    key, vlek = pki.endorsement(kind="VLEK", tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), signer_info=1 << 2)
    table = build_cert_table(
        (CERT_TABLE_GUIDS[n], c.public_bytes(Encoding.DER))
        for n, c in (("ask", pki.asvk), ("vlek", vlek))
    )
    return data + table, vlek


def package(claims: Claims, **fields: object) -> ReferenceValues:
    return ReferenceValues(tee="sev-snp", measurement=claims.measurement.hex(), **fields)


def test_checked_says_signature_and_chain_and_revocation_with_a_crl(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    assert verify_snp_report(signed[0], at=AT, roots=[pki.ark]).checked == {"signature", "chain"}
    claims = verify_snp_report(signed[0], collateral=pki.crl(), at=AT, roots=[pki.ark])
    assert claims.checked == {"signature", "chain", "revocation"}


def test_snp_with_a_revoked_certificate_in_the_given_crl_is_refused(
    pki: AmdPki,
    signed: tuple[bytes, x509.Certificate],
    vlek_signed: tuple[bytes, x509.Certificate],
) -> None:
    for (data, leaf), intermediate, kind in (
        (signed, pki.ask, "VCEK"),
        (vlek_signed, pki.asvk, "VLEK"),
    ):
        for revoked in (intermediate, leaf):
            crl = pki.crl(revoked=(revoked,), kind=kind)
            with pytest.raises(EvidenceError, match="is revoked") as caught:
                verify_snp_report(data, collateral=crl, at=AT, roots=[pki.ark])
            assert f"serial {revoked.serial_number:x}" in str(caught.value)
            assert caught.value.field == "collateral"


@pytest.mark.parametrize("kind", ["VCEK", "VLEK"])
def test_a_crl_stating_the_chains_kind_is_checked(
    pki: AmdPki,
    signed: tuple[bytes, x509.Certificate],
    vlek_signed: tuple[bytes, x509.Certificate],
    kind: str,
) -> None:
    data = signed[0] if kind == "VCEK" else vlek_signed[0]
    url = f"https://kdsintf.amd.com/{kind.lower()}/v1/Milan/crl"
    crl = pki.crl(distribution_point=url)
    claims = verify_snp_report(data, collateral=crl, at=AT, roots=[pki.ark])
    assert "revocation" in claims.checked
    assert f"AMD {kind} CRL" in claims.details["revocation"]


@pytest.mark.parametrize(
    ("kind", "url", "message"),
    [
        ("VCEK", "vlek/v1/Milan/crl", "the CRL is the VLEK CRL of Milan, the chain is a VCEK"),
        ("VLEK", "vcek/v1/Milan/crl", "the CRL is the VCEK CRL of Milan, the chain is a VLEK"),
        ("VCEK", "vcek/v1/Genoa/crl", "the CRL is the VCEK CRL of Genoa, the chain is a VCEK"),
    ],
)
def test_a_crl_of_the_other_kind_or_product_is_refused(
    pki: AmdPki,
    signed: tuple[bytes, x509.Certificate],
    vlek_signed: tuple[bytes, x509.Certificate],
    kind: str,
    url: str,
    message: str,
) -> None:
    data = signed[0] if kind == "VCEK" else vlek_signed[0]
    crl = pki.crl(distribution_point=f"https://kdsintf.amd.com/{url}")
    with pytest.raises(EvidenceError, match=message):
        verify_snp_report(data, collateral=crl, at=AT, roots=[pki.ark])


def test_a_crl_of_another_products_ark_is_refused_naming_both(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    genoa = AmdPki.create("Genoa")
    with pytest.raises(EvidenceError, match="the CRL is AMD's for Genoa, the VCEK chain is Milan"):
        verify_snp_report(signed[0], collateral=genoa.crl(), at=AT, roots=[pki.ark])


def test_the_verdict_is_up_to_date_with_a_crl_and_a_min_tcb_met(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    claims = verify_snp_report(signed[0], collateral=pki.crl(), at=AT, roots=[pki.ark])
    assert claims.tcb_status == "Unverified"  # the verifier does not know the package
    assert claims.tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    every = SnpTcb(bootloader=3, tee=0, snp=8, microcode=115)
    verdict = match_claims(claims, package(claims, min_tcb=every))
    assert verdict.status == "UpToDate"
    assert verdict.checked == {"signature", "chain", "revocation", "tcb", "reference"}
    assert "every component of the reported TCB meets the package's min_tcb" in verdict.reasons[-1]
    with pytest.raises(ClaimsMismatch, match=r"tcb too low \(microcode 115 < 116\)"):
        match_claims(claims, package(claims, min_tcb=SnpTcb(microcode=116)))


@pytest.mark.parametrize(
    ("minimum", "unset"),
    [
        (SnpTcb(bootloader=0), "tee, snp, microcode"),
        (SnpTcb(snp=8, microcode=115), "bootloader, tee"),
        (SnpTcb(bootloader=3, snp=8, microcode=115), "tee"),
    ],
)
def test_a_min_tcb_leaving_a_reported_component_out_is_not_up_to_date(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate], minimum: SnpTcb, unset: str
) -> None:
    # A trivial min_tcb ({bootloader: 0}) must not make the verdict say UpToDate: the TCB was
    # held against part of its components only.
    claims = verify_snp_report(signed[0], collateral=pki.crl(), at=AT, roots=[pki.ark])
    verdict = match_claims(claims, package(claims, min_tcb=minimum))
    assert (verdict.status, verdict.checked) == (
        "Unverified",
        {"signature", "chain", "revocation", "reference"},
    )
    assert verdict.reasons == (
        f"the package's min_tcb does not set {unset}: those components of the reported TCB "
        "were held against nothing",
    )


def test_the_verdict_stays_unverified_without_a_min_tcb_or_without_a_crl(
    pki: AmdPki, signed: tuple[bytes, x509.Certificate]
) -> None:
    with_crl = verify_snp_report(signed[0], collateral=pki.crl(), at=AT, roots=[pki.ark])
    verdict = match_claims(with_crl, package(with_crl))
    assert (verdict.status, verdict.checked) == (
        "Unverified",
        {"signature", "chain", "revocation", "reference"},
    )
    assert verdict.reasons == (
        "the package sets no min_tcb: the reported TCB was held against nothing",
    )
    without = verify_snp_report(signed[0], at=AT, roots=[pki.ark])
    verdict = match_claims(without, package(without, min_tcb=SnpTcb(snp=8)))
    assert (verdict.status, verdict.checked) == ("Unverified", {"signature", "chain", "reference"})
    assert "no AMD CRL" in verdict.reasons[0]
