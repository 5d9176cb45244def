"""SEV-SNP verification under test roots: every refusal the verifier knows, reached with
synthetic reports and AMD-like certificates (no real hardware, no vectors)."""

from __future__ import annotations

import datetime
import os
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.attestation import ReferenceValues, match_claims
from geode.attestation._snp import verify_snp_evidence, verify_snp_report
from geode.attestation._snp_certs import CERT_TABLE_GUIDS, build_cert_table, parse_cert_table
from geode.attestation._snp_report import SnpProduct, TcbVersion, parse_snp_report
from geode.errors import ClaimsMismatch, EvidenceError
from tests.attestation.support.snp import AT, AmdPki, forge_report, sign_report, tcb_raw

CHIP = os.urandom(64)
TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
TURIN_TCB = {"fmc": 1, "bootloader": 3, "tee": 2, "snp": 5, "microcode": 0x61}


@pytest.fixture(scope="module")
def milan() -> AmdPki:
    return AmdPki.create("Milan")


@pytest.fixture(scope="module")
def turin() -> AmdPki:
    return AmdPki.create("Turin")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def table(*certs: tuple[str, x509.Certificate]) -> bytes:
    return build_cert_table((CERT_TABLE_GUIDS[name], der(cert)) for name, cert in certs)


def milan_evidence(pki: AmdPki, **report: object) -> bytes:
    key, vcek = pki.endorsement(hwid=CHIP, tcb=TCB)
    fields: dict[str, object] = {"tcb": tcb_raw("Milan", **TCB), "chip_id": CHIP, **report}
    data = forge_report(key, **fields)  # type: ignore[arg-type]
    return data + table(("ark", pki.ark), ("ask", pki.ask), ("vcek", vcek))


def test_synthetic_report_verifies_under_its_root(milan: AmdPki) -> None:
    data = milan_evidence(milan, report_data=b"\x07" * 64, vmpl=2, host_data=b"\x09" * 32)
    claims = verify_snp_report(data, at=AT, roots=[milan.ark])
    assert claims.report_data == b"\x07" * 64
    assert claims.vmpl == 2
    assert claims.host_data == b"\x09" * 32
    assert dict(claims.tcb) == TCB
    assert claims.platform == CHIP.hex()
    assert claims.debug is False
    match_claims(claims, ReferenceValues(tee="sev-snp", min_tcb={"snp": 8}, vmpl=2))
    with pytest.raises(ClaimsMismatch, match="vmpl"):
        match_claims(claims, ReferenceValues(tee="sev-snp", vmpl=0))


def test_debug_policy_bit_is_the_debug_claim(milan: AmdPki) -> None:
    claims = verify_snp_report(
        milan_evidence(milan, policy=0x30000 | 1 << 19), at=AT, roots=[milan.ark]
    )
    assert claims.debug is True
    assert claims.details["policy"] == "0x00000000000b0000"


def test_a_chain_to_a_foreign_ark_is_refused_under_the_pinned_roots(milan: AmdPki) -> None:
    # Our test ARK is named ARK-Milan like AMD's, but it is not the pinned one.
    with pytest.raises(EvidenceError, match="is not a pinned AMD root"):
        verify_snp_report(milan_evidence(milan), at=AT)


def test_a_foreign_chain_without_its_ark_fails_at_the_pinned_arks_signature(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="SEV-Milan is not signed by ARK-Milan"):
        verify_snp_report(data + table(("ask", milan.ask), ("vcek", vcek)), at=AT)


def test_a_chain_checked_against_another_test_root_is_refused(milan: AmdPki) -> None:
    other = AmdPki.create("Milan")
    with pytest.raises(EvidenceError, match="not a pinned AMD root"):
        verify_snp_report(milan_evidence(milan), at=AT, roots=[other.ark])
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="not signed by ARK-Milan"):
        verify_snp_report(
            data + table(("ask", milan.ask), ("vcek", vcek)), at=AT, roots=[other.ark]
        )


def test_a_vcek_of_another_chip_is_refused_with_the_reason(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=os.urandom(64), tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="VCEK belongs to another chip") as caught:
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])
    assert caught.value.field == "chip_id"
    assert caught.value.offset == 0x1A0


def test_a_masked_chip_id_cannot_bind_a_vcek(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=bytes(64))
    with pytest.raises(EvidenceError, match="chip id is masked"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_a_vcek_without_hwid_is_refused(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=None, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="no hwID"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_a_vcek_for_another_tcb_is_refused(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb={**TCB, "microcode": 116})
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="microcode 116, the report's reported TCB has 115"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_a_vlek_for_another_tcb_is_refused(milan: AmdPki) -> None:
    key, vlek = milan.endorsement(kind="VLEK", tcb={**TCB, "snp": 9})
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), signer_info=1 << 2)
    with pytest.raises(EvidenceError, match="VLEK is for snp 9, the report's reported TCB has 8"):
        verify_snp_report(data, certs=der(vlek) + der(milan.asvk), at=AT, roots=[milan.ark])


def test_a_vcek_without_a_tcb_extension_is_refused(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb={"bootloader": 3, "tee": 0, "snp": 8})
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="no readable microcode TCB extension"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_turin_reads_its_own_tcb_layout(turin: AmdPki) -> None:
    key, vcek = turin.endorsement(hwid=CHIP[:8], tcb=TURIN_TCB)
    raw = tcb_raw("Turin", **TURIN_TCB)
    data = forge_report(key, product="Turin", version=5, tcb=raw, chip_id=CHIP[:8])
    claims = verify_snp_report(data, certs=der(vcek) + der(turin.ask), at=AT, roots=[turin.ark])
    assert dict(claims.tcb) == TURIN_TCB
    assert claims.platform == CHIP[:8].hex()
    # The same bytes read as Milan would be another TCB altogether.
    assert TcbVersion.decode(raw, turin=False).components() != TURIN_TCB


def test_turin_chip_id_beyond_eight_bytes_is_another_chip(turin: AmdPki) -> None:
    key, vcek = turin.endorsement(hwid=CHIP[:8], tcb=TURIN_TCB)
    data = forge_report(key, product="Turin", tcb=tcb_raw("Turin", **TURIN_TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="another chip"):
        verify_snp_report(data, certs=der(vcek) + der(turin.ask), at=AT, roots=[turin.ark])


def test_cpuid_must_name_the_chains_product(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP, cpuid=(0x1A, 0x02, 0))
    with pytest.raises(EvidenceError, match="CPUID names Turin"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_product_name_must_be_the_chains(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB, product_name="Genoa")
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="for product 'Genoa'"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


def test_vlek_chains_through_the_asvk(milan: AmdPki) -> None:
    key, vlek = milan.endorsement(kind="VLEK", tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), signer_info=1 << 2, vmpl=1)
    claims = verify_snp_report(data, certs=der(vlek) + der(milan.asvk), at=AT, roots=[milan.ark])
    assert claims.details["signing_key"] == "VLEK"
    assert claims.platform == "VLEK CN=csp.example"


def test_a_vcek_under_the_asvk_is_refused(milan: AmdPki) -> None:
    key, vlek = milan.endorsement(kind="VLEK", tcb=TCB)
    # Same key, but the report claims a VCEK: a VLEK-chain certificate renamed would not verify,
    # and a VLEK offered for a VCEK report is not found at all.
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="no VCEK certificate"):
        verify_snp_report(data, certs=der(vlek) + der(milan.asvk), at=AT, roots=[milan.ark])


def test_validity_windows_are_checked(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(
        hwid=CHIP,
        tcb=TCB,
        not_before=datetime.datetime(2026, 7, 1, tzinfo=datetime.UTC),
    )
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    with pytest.raises(EvidenceError, match="VCEK is not valid at 2026-06-01"):
        verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])
    with pytest.raises(ValueError, match="aware"):
        verify_snp_report(
            data, certs=der(vcek), at=datetime.datetime(2026, 6, 1), roots=[milan.ark]
        )


def test_two_different_vceks_are_refused(milan: AmdPki) -> None:
    _, first = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = milan_evidence(milan)
    with pytest.raises(EvidenceError, match="2 different VCEK"):
        verify_snp_report(data, certs=der(first), at=AT, roots=[milan.ark])


def test_signer_info_refusals(milan: AmdPki) -> None:
    key, vcek = milan.endorsement(hwid=CHIP, tcb=TCB)
    tcb = tcb_raw("Milan", **TCB)
    for signer_info, message in [
        (0b10, "MASK_CHIP_KEY"),
        (7 << 2, "not signed"),
        (3 << 2, "reserved signing key selector 3"),
    ]:
        data = forge_report(key, tcb=tcb, chip_id=CHIP, signer_info=signer_info)
        with pytest.raises(EvidenceError, match=message):
            verify_snp_report(data, certs=der(vcek) + der(milan.ask), at=AT, roots=[milan.ark])


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"version": 6}, "unsupported report version 6"), ({"signature_algo": 2}, "algorithm 2")],
)
def test_header_refusals(milan: AmdPki, fields: dict[str, int], message: str) -> None:
    key, _ = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP, **fields)  # type: ignore[arg-type]
    with pytest.raises(EvidenceError, match=message):
        parse_snp_report(data)


def test_a_resigned_report_with_another_key_is_refused(milan: AmdPki) -> None:
    other, _ = milan.endorsement(hwid=CHIP, tcb=TCB)
    data = bytearray(milan_evidence(milan))
    sign_report(data, other)
    with pytest.raises(EvidenceError, match="signature does not verify") as caught:
        verify_snp_report(bytes(data), at=AT, roots=[milan.ark])
    assert caught.value.offset == 0x2A0


def test_version_2_has_no_cpuid_and_reads_the_chains_product(milan: AmdPki) -> None:
    verified = verify_snp_evidence(milan_evidence(milan, version=2), at=AT, roots=[milan.ark])
    assert verified.report.cpuid is None
    assert verified.chain.product is SnpProduct.MILAN


def test_cert_table_errors_name_the_entry() -> None:
    vcek = CERT_TABLE_GUIDS["vcek"]
    good = build_cert_table([(vcek, b"\x30\x03\x02\x01\x00")])
    assert [entry.guid for entry in parse_cert_table(good)] == [vcek]
    past_end = bytearray(good)
    past_end[20:24] = (1000).to_bytes(4, "little")
    with pytest.raises(EvidenceError) as caught:
        parse_cert_table(bytes(past_end))
    assert caught.value.field == "cert_table[0].length"
    twice = build_cert_table([(vcek, b"a"), (vcek, b"b")])
    with pytest.raises(EvidenceError, match="appears twice"):
        parse_cert_table(twice)
    with pytest.raises(EvidenceError, match="truncated") as caught:
        parse_cert_table(good[:20])
    assert caught.value.field == "cert_table[0].length"
    assert caught.value.offset == 20
    unknown = build_cert_table([(uuid.uuid4(), b"x"), (vcek, b"y")])
    assert len(parse_cert_table(unknown)) == 2


def test_garbage_certificates_in_the_table_are_typed_errors(milan: AmdPki) -> None:
    key, _ = milan.endorsement(hwid=CHIP, tcb=TCB)
    report = forge_report(key, tcb=tcb_raw("Milan", **TCB), chip_id=CHIP)
    for blob in (
        b"\x30\x82\xff\xff",
        b"\x31\x00",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        b"\x30\x03abc",
    ):
        evidence = report + build_cert_table([(CERT_TABLE_GUIDS["vcek"], blob)])
        with pytest.raises(EvidenceError):
            verify_snp_report(evidence, at=AT, roots=[milan.ark])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(max_size=3000))
def test_garbage_is_a_typed_error(garbage: bytes) -> None:
    with pytest.raises(EvidenceError) as caught:
        verify_snp_report(garbage, at=AT)
    assert caught.value.field is not None


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_evidence_is_a_typed_error_or_verifies(data: st.DataObject) -> None:
    evidence = bytearray(_FIXED_EVIDENCE)
    for _ in range(data.draw(st.integers(1, 6))):
        offset = data.draw(st.integers(0, len(evidence) - 1))
        evidence[offset] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(evidence)))
    failure: EvidenceError | None = None
    try:
        verify_snp_report(bytes(evidence[:cut]), at=AT, roots=[_FIXED_PKI.ark])
    except EvidenceError as exc:
        failure = exc
    assert failure is None or failure.field is not None


_FIXED_PKI = AmdPki.create("Genoa")
_FIXED_KEY, _FIXED_VCEK = _FIXED_PKI.endorsement(hwid=CHIP, tcb=TCB)
_FIXED_EVIDENCE = forge_report(
    _FIXED_KEY, product="Genoa", tcb=tcb_raw("Genoa", **TCB), chip_id=CHIP
) + table(("ask", _FIXED_PKI.ask), ("vcek", _FIXED_VCEK))
