"""Real SEV-SNP reports (Milan v2 VCEK, Milan v3 VLEK, Genoa v3 from configfs-tsm with its
auxblob, Turin v5 VCEK) verify to the pinned ARKs with the claims their sources state; every
single-byte change of their signed part and every truncation is refused with an EvidenceError."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Claims, Evidence, EvidenceVerifier, ReferenceValues, match_claims
from geode.attestation._snp import verify_snp_evidence, verify_snp_report
from geode.attestation._snp_certs import AMD_ARK_SHA256, CERT_TABLE_GUIDS, amd_roots
from geode.attestation._snp_report import SNP_REPORT_SIZE, SNP_SIGNED_SIZE, SnpProduct
from geode.errors import ClaimsMismatch, EvidenceError
from tests.attestation.support.vectors import read_vector as vector


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Case:
    name: str
    report: str
    certs: str | None
    auxblob: str | None
    at: datetime.datetime
    product: SnpProduct
    version: int
    signing_key: str
    vmpl: int
    tcb: dict[str, int]
    report_data_prefix: str
    measurement_prefix: str
    debug: bool

    def data(self) -> bytes:
        data = vector(self.report)
        return data + vector(self.auxblob) if self.auxblob else data

    def cert_bytes(self) -> bytes | None:
        return vector(self.certs) if self.certs else None


CASES = [
    # go-sev-guest verify/testdata: report v2, report_data 01..05, VMPL 0 (its policy allows debug).
    Case(
        "milan-v2-vcek",
        "snp_milan_v2_vcek.report.bin",
        "snp_milan_v2_vcek.vcek.der",
        None,
        utc(2026, 1, 1),
        SnpProduct.MILAN,
        2,
        "VCEK",
        0,
        {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 0x44},
        "0102030405" + "00" * 59,
        "b07af962",
        True,
    ),
    # trustee: VLEK-signed v3, VMPL 1, chip id masked; the VLEK expired on 2025-12-10.
    Case(
        "milan-v3-vlek",
        "snp_milan_v3_vlek.report.bin",
        "snp_milan_v3_vlek.vlek.der",
        None,
        utc(2025, 6, 1),
        SnpProduct.MILAN,
        3,
        "VLEK",
        1,
        {"bootloader": 4, "tee": 0, "snp": 0x18, "microcode": 0xD9},
        "819770b7",
        "8922ebbd",
        False,
    ),
    # veraison: configfs-tsm outblob + auxblob (ARK, ASK, VCEK as PEM), Genoa.
    Case(
        "genoa-v3-configfs-tsm",
        "snp_genoa_v3_configfs_tsm.outblob.bin",
        None,
        "snp_genoa_v3_configfs_tsm.auxblob.bin",
        utc(2026, 1, 1),
        SnpProduct.GENOA,
        3,
        "VCEK",
        0,
        {"bootloader": 10, "tee": 0, "snp": 0x17, "microcode": 0x54},
        b"MIDBNH28iioisjPy".hex(),
        "7699e6ac",
        False,
    ),
    # openanolis trustee: Turin v5, TCB fmc=1 bl=3 tee=2 snp=5 ucode=0x61, 8-byte hwID.
    Case(
        "turin-v5-vcek",
        "snp_turin_v5_vcek.report.bin",
        "snp_turin_v5_vcek.vcek.der",
        None,
        utc(2026, 11, 1),
        SnpProduct.TURIN,
        5,
        "VCEK",
        0,
        {"fmc": 1, "bootloader": 3, "tee": 2, "snp": 5, "microcode": 0x61},
        "fce1e3d9",
        "a13039ba",
        False,
    ),
]
IDS = [case.name for case in CASES]


def verify(case: Case, data: bytes | None = None, **kwargs: object) -> Claims:
    return verify_snp_report(
        case.data() if data is None else data,
        certs=case.cert_bytes(),
        at=kwargs.pop("at", case.at),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_shipped_arks_are_the_pinned_ones() -> None:
    pinned = {hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest() for ark in amd_roots()}
    assert pinned == set(AMD_ARK_SHA256.values())
    assert AMD_ARK_SHA256[SnpProduct.MILAN].startswith("69d063b4")
    assert AMD_ARK_SHA256[SnpProduct.GENOA].startswith("4c6598d1")
    assert AMD_ARK_SHA256[SnpProduct.TURIN].startswith("1f084161")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vector_verifies_with_its_claims(case: Case) -> None:
    verified = verify_snp_evidence(case.data(), certs=case.cert_bytes(), at=case.at)
    claims = verified.claims()
    assert verified.chain.product is case.product
    assert claims.tee == "sev-snp"
    assert claims.details["signing_key"] == case.signing_key
    assert claims.details["report_version"] == str(case.version)
    assert claims.details["product"] == case.product.value
    assert claims.vmpl == case.vmpl
    assert dict(claims.tcb) == case.tcb
    assert claims.report_data.hex().startswith(case.report_data_prefix)
    assert len(claims.measurement) == 48
    assert claims.measurement.hex().startswith(case.measurement_prefix)
    assert claims.debug is case.debug
    assert claims.host_data == bytes(32)
    json.dumps(claims.to_json())


def test_chip_ids_are_the_vceks_hwids() -> None:
    milan = verify(CASES[0])
    assert milan.platform.startswith("3ac3fe21e13fb099")
    assert len(milan.platform) == 128
    turin = verify(CASES[3])
    assert turin.platform == "0910b4f884ff4ba9"  # 8 bytes on Turin
    vlek = verify(CASES[1])
    assert vlek.platform == "VLEK CN=cc-us-east-2.amazonaws.com"
    assert vlek.details["chip_id"] == "00" * 64


def test_committed_and_current_tcb_are_reported() -> None:
    claims = verify(CASES[1])
    assert claims.details["committed_tcb"] == "bootloader=4 tee=0 snp=24 microcode=219"
    assert claims.details["current_tcb"] == "bootloader=4 tee=0 snp=24 microcode=220"
    assert claims.details["firmware"] == "1.55.29"
    assert claims.details["policy"] == "0x0000000000030000"


def test_through_the_evidence_verifier_and_a_package() -> None:
    case = CASES[3]
    claims = EvidenceVerifier(clock=lambda: case.at).verify(
        Evidence("sev-snp", case.data()), certs=case.cert_bytes()
    )
    package = ReferenceValues(
        tee="sev-snp",
        measurement=claims.measurement.hex(),
        host_data="00" * 32,
        vmpl=0,
        min_tcb={"fmc": 1, "snp": 5, "microcode": 0x61},
    )
    match_claims(claims, package)
    with pytest.raises(ClaimsMismatch, match="tcb too low"):
        match_claims(claims, ReferenceValues(tee="sev-snp", min_tcb={"microcode": 0x62}))
    debug_report = verify(CASES[0])
    with pytest.raises(ClaimsMismatch, match="debug"):
        match_claims(debug_report, ReferenceValues(tee="sev-snp"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_byte_of_the_signed_part_matters(case: Case) -> None:
    data = case.data()
    certs = case.cert_bytes()
    for offset in range(SNP_SIGNED_SIZE):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_snp_report(bytes(changed), certs=certs, at=case.at)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_byte_of_the_signature_matters(case: Case) -> None:
    data = case.data()
    for offset in range(SNP_SIGNED_SIZE, SNP_SIGNED_SIZE + 144):
        changed = bytearray(data)
        changed[offset] ^= 0x80
        with pytest.raises(EvidenceError, match="signature"):
            verify_snp_report(bytes(changed), certs=case.cert_bytes(), at=case.at)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_truncation_is_a_typed_error(case: Case) -> None:
    data = case.data()
    for length in range(SNP_REPORT_SIZE):
        with pytest.raises(EvidenceError) as caught:
            verify_snp_report(data[:length], certs=case.cert_bytes(), at=case.at)
        assert caught.value.field is not None
        assert caught.value.offset is not None


def test_auxblob_truncations_are_typed_errors() -> None:
    case = CASES[2]
    data = case.data()
    # Inside the table head, at entry boundaries, and into each certificate.
    lengths = {
        *range(SNP_REPORT_SIZE + 1, SNP_REPORT_SIZE + 100),
        *range(SNP_REPORT_SIZE, len(data), 97),
    }
    for length in sorted(lengths):
        with pytest.raises(EvidenceError):
            verify_snp_report(data[:length], at=case.at)


def test_trailing_zero_padding_is_accepted() -> None:
    case = CASES[0]
    verify(case, case.data() + bytes(4000 - SNP_REPORT_SIZE))


def test_the_vlek_outside_its_validity_is_refused() -> None:
    with pytest.raises(EvidenceError, match="VLEK is not valid at 2026-11-27"):
        verify(CASES[1], at=utc(2026, 11, 27))


def test_a_vcek_of_another_chip_is_refused() -> None:
    # The Genoa VCEK (from the configfs-tsm auxblob) offered for the Genoa report is right; the
    # Milan VCEK offered for it chains fine but belongs to another chip (and product).
    genoa = CASES[2]
    with pytest.raises(EvidenceError, match="VCEK"):
        verify_snp_report(vector(genoa.report), certs=vector(CASES[0].certs or ""), at=genoa.at)


def test_the_wrong_product_chain_is_refused_by_name() -> None:
    genoa = CASES[2]
    with pytest.raises(EvidenceError, match="CPUID names Genoa, its VCEK chains to Milan"):
        verify_snp_report(vector(genoa.report), certs=vector(CASES[0].certs or ""), at=genoa.at)


def test_a_vcek_for_a_vlek_report_is_refused() -> None:
    vlek = CASES[1]
    with pytest.raises(EvidenceError, match="no VLEK certificate"):
        verify_snp_report(vector(vlek.report), certs=vector(CASES[0].certs or ""), at=vlek.at)


def test_missing_vcek_is_named() -> None:
    with pytest.raises(EvidenceError, match="no VCEK certificate"):
        verify_snp_report(vector(CASES[0].report), at=CASES[0].at)


def test_the_auxblob_holds_ark_ask_and_vcek() -> None:
    from geode.attestation._snp_certs import parse_cert_table

    entries = parse_cert_table(vector("snp_genoa_v3_configfs_tsm.auxblob.bin"))
    assert [entry.guid for entry in entries] == [
        CERT_TABLE_GUIDS["ark"],
        CERT_TABLE_GUIDS["ask"],
        CERT_TABLE_GUIDS["vcek"],
    ]
    ark = x509.load_pem_x509_certificate(entries[0].data)
    assert (
        hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest()
        == AMD_ARK_SHA256[SnpProduct.GENOA]
    )


def test_the_same_vcek_given_twice_is_one() -> None:
    case = CASES[2]
    table = vector(case.auxblob or "")
    verify_snp_report(case.data(), certs=table, at=case.at)


def test_a_real_chain_checked_against_another_root_is_refused() -> None:
    case = CASES[0]
    wrong = [ark for ark in amd_roots() if "Genoa" in ark.subject.rfc4514_string()]
    with pytest.raises(EvidenceError, match="does not end at a pinned AMD root"):
        verify(case, roots=wrong)


def test_collateral_that_is_not_a_crl_is_refused() -> None:
    # The collateral of SEV-SNP is AMD's CRL (test_snp_crl.py); anything else is refused.
    with pytest.raises(EvidenceError, match="expected AMD's CRL"):
        verify(CASES[0], collateral=b"{}")
