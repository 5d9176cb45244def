"""AMD's CRL as the collateral of SEV-SNP: a revoked ASK, ASVK or VCEK is refused; a CRL not
signed by the chain's ARK, or out of date, is refused; without one, the TCB is Unverified."""

from __future__ import annotations

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Evidence, EvidenceVerifier, TrustAnchors
from geode.attestation._snp import verify_snp_report
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table
from geode.errors import EvidenceError
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
    assert claims.revocation_checked is False
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
    assert claims.revocation_checked is True
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
    verify_snp_report(data + table, collateral=pki.crl(), at=AT, roots=[pki.ark])
    with pytest.raises(EvidenceError, match=r"SEV-VLEK-Milan certificate .* is revoked"):
        verify_snp_report(
            data + table, collateral=pki.crl(revoked=(pki.asvk,)), at=AT, roots=[pki.ark]
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
