"""Real Intel SGX and TDX quotes (../shared/vectors): what their sources say, what we parse, and
that no byte of what is signed can change unnoticed."""

from __future__ import annotations

import base64
import datetime
import json
import re
from dataclasses import dataclass

import pytest
from cryptography import x509

from geode.attestation import (
    Claims,
    Evidence,
    EvidenceVerifier,
    detect_kind,
    verify_sgx_quote,
    verify_tdx_quote,
)
from geode.attestation._evidence_certs import common_name
from geode.attestation._intel_collateral import parse_collateral, verify_signed_json
from geode.attestation._intel_pck import intel_roots, verify_pck_chain
from geode.attestation._intel_quote import parse_intel_quote, parse_sgx_report, parse_td_report
from geode.attestation._intel_tcb import QeIdentity, TcbInfo, tcb_verdict
from geode.attestation._roots import INTEL_SGX_ROOT_SHA256, certificate_sha256
from geode.errors import EvidenceError
from tests.attestation.support import intel
from tests.attestation.support.vectors import gotdx_collateral, read_vector, requires_vectors

pytestmark = requires_vectors


def utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Vector:
    name: str
    tee: str
    at: datetime.datetime  # inside the windows of the chain and of the collateral, if any
    collateral: bool
    version: int
    fmspc: str
    measurement: str  # MRENCLAVE or MRTD, as we parse it
    report_data_prefix: str
    debug: bool
    size: int  # bytes the quote occupies; the rest of the file is trailing data
    pck_ca: str


VECTORS = [
    Vector(
        "sgx_v3_dcapqvl", "sgx", utc("2025-07-01"), True, 3, "00a067110000",
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
        b"Hello, world!".hex(), False, 4600, "Intel SGX PCK Processor CA",
    ),
    Vector(
        "sgx_v3_occlum", "sgx", utc("2025-07-01"), False, 3, "00606a000000",
        "8f173e4613ff05c52aaf04162d234eda",
        b"test".hex(), True, 4733, "Intel SGX PCK Platform CA",
    ),
    Vector(
        "tdx_v4_dcapqvl", "tdx", utc("2025-07-01"), True, 4, "b0c06f000000",
        "91eb2b44d141d4ece09f0c75c2c53d24",
        "9a9d48e7f6799642d3d1b34e1e5e1742", False, 4936, "Intel SGX PCK Platform CA",
    ),
    Vector(
        "tdx_v5_dcapqvl_outdated", "tdx", utc("2026-03-01"), True, 5, "90c06f000000",
        "273828c46252fcbdd8ad2dd907130222",
        "d2142b643598eb5fae2bc8529dd79a55", False, 5006, "Intel SGX PCK Platform CA",
    ),
    Vector(
        "tdx_v4_gotdx_spr_trailing", "tdx", utc("2023-07-01"), False, 4, "50806f000000",
        "6363b8043668a3ad953278e10389574d",
        "6c62dec1b8191749a31dab490be532a3", False, 4935, "Intel SGX PCK Platform CA",
    ),
]  # fmt: skip
IDS = [v.name for v in VECTORS]


def quote(v: Vector) -> bytes:
    return read_vector(f"{v.name}.quote.bin")


def collateral(v: Vector) -> bytes:
    return read_vector(f"{v.name}.collateral.json")


def verify(
    v: Vector,
    data: bytes | None = None,
    *,
    at: datetime.datetime | None = None,
    collateral: bytes | None = None,
    roots: list[x509.Certificate] | None = None,
) -> Claims:
    fn = verify_tdx_quote if v.tee == "tdx" else verify_sgx_quote
    raw = quote(v) if data is None else data
    return fn(raw, at=at or v.at, collateral=collateral, roots=roots)


def test_the_shipped_root_is_the_one_the_sources_name() -> None:
    root = intel_roots()[0]
    assert certificate_sha256(root) == INTEL_SGX_ROOT_SHA256
    assert root == x509.load_pem_x509_certificate(read_vector("intel_sgx_root_ca.pem"))


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_verifies_with_the_claims_we_and_its_source_agree_on(v: Vector) -> None:
    claims = verify(v)
    assert claims.tee == v.tee
    assert claims.measurement.hex().startswith(v.measurement)
    assert claims.report_data.hex().startswith(v.report_data_prefix)
    assert claims.debug is v.debug
    assert claims.platform == v.fmspc
    assert claims.tcb_status == "Unverified"
    details = claims.details
    assert details["quote_version"] == str(v.version)
    parsed = parse_intel_quote(quote(v))
    assert parsed.size == v.size
    chain = verify_pck_chain(parsed.cert_data, 0, at=v.at, roots=intel_roots())
    assert common_name(chain.intermediate) == v.pck_ca
    assert detect_kind(quote(v)) == v.tee
    assert EvidenceVerifier(clock=lambda: v.at).verify(Evidence(v.tee, quote(v))) == claims


def test_sgx_dcapqvl_tcb_status_and_advisories_are_the_upstream_ones() -> None:
    v = VECTORS[0]
    claims = verify(v, collateral=collateral(v))
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert claims.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert claims.details["qe_tcb_status"] == "UpToDate"


def test_tdx_v4_dcapqvl_is_up_to_date() -> None:
    v = VECTORS[2]
    claims = verify(v, collateral=collateral(v))
    assert claims.tcb_status == "UpToDate"
    assert claims.advisory_ids == ()


def test_tdx_v5_outdated_fixture_is_below_every_level_so_out_of_date() -> None:
    # Its PCK certificate's SEAMLDR ACM SVN (component 8) is 3, every TCB level asks for 5:
    # upstream verifies it only after inserting a permissive level.
    v = VECTORS[3]
    body = parse_td_report(parse_intel_quote(quote(v)).body)
    assert len(body.mrservicetd) == 48
    claims = verify(v, collateral=collateral(v))
    assert claims.tcb_status == "OutOfDate"
    assert claims.tcb_reasons == ("below every TCB level: the platform's TCB",)


def test_gotdx_pck_certificate_says_what_go_tdx_guest_expects() -> None:
    v = VECTORS[4]
    claims = verify(v)
    assert claims.details["ppid"] == "089ddfdb9c0359c82a3bc7719239574e"
    assert claims.details["pck_cpu_svn"] == "03030202020100020000000000000000"
    assert claims.details["pck_pce_svn"] == "11"
    # The PCK certificate expires on 2029-09-20.
    with pytest.raises(EvidenceError, match="not valid at 2053"):
        verify(v, at=utc("2053-07-01"))


def test_trailing_bytes_are_not_part_of_the_quote() -> None:
    v = VECTORS[4]
    data = quote(v)
    assert data[v.size :] == b"\nextra bytes(only for testing purpose)\n"
    assert verify(v, data[: v.size]) == verify(v)
    padded = VECTORS[2]
    assert quote(padded)[padded.size :] == bytes(70)


def test_gotdx_pcs_responses_are_signed_over_the_text_as_served() -> None:
    v = VECTORS[4]
    parsed = parse_intel_quote(quote(v))
    chain = verify_pck_chain(parsed.cert_data, 0, at=v.at, roots=intel_roots())
    docs = parse_collateral(gotdx_collateral(), chain.tcb.fmspc)
    assert docs.tcb_info.text.startswith('{"id":"TDX","version":3,"issueDate":"2023-06-18')
    root_crl = x509.load_der_x509_crl(
        bytes.fromhex(json.loads(collateral(VECTORS[0]))["root_ca_crl"])
    )
    # The signing certificate among the vectors is valid from 2025 on; the key is the same.
    when = utc("2025-07-01")
    for signed, what in ((docs.tcb_info, "tcb_info"), (docs.qe_identity, "qe_identity")):
        verify_signed_json(signed, what, roots=intel_roots(), root_crl=root_crl, at=when)
        reserialised = json.dumps(json.loads(signed.text))
        altered = type(signed)(reserialised, signed.signature, signed.chain)
        with pytest.raises(EvidenceError, match="does not verify"):
            verify_signed_json(altered, what, roots=intel_roots(), root_crl=root_crl, at=when)
    # go-tdx-guest: "due to updated SVN values in the sample response, it will result in TCB
    # status failure" -- this platform is below both of the sample's TCB levels.
    assert tcb_verdict(
        TcbInfo.model_validate_json(docs.tcb_info.text),
        QeIdentity.model_validate_json(docs.qe_identity.text),
        chain=chain,
        qe=parse_sgx_report(parsed.qe_report),
        td=parse_td_report(parsed.body),
        quote_version=4,
    ).reasons == ("below every TCB level: the platform's TCB",)


def test_gotdx_collateral_is_refused_outside_its_windows() -> None:
    v = VECTORS[4]
    with pytest.raises(EvidenceError, match="not valid at") as info:
        verify(v, collateral=gotdx_collateral(), at=utc("2024-06-01"))
    assert str(info.value.field).startswith("collateral.")


@pytest.mark.parametrize(
    ("v", "when", "field"),
    [
        (VECTORS[0], "2025-07-20", "collateral.tcb_info"),
        (VECTORS[0], "2025-06-19T10:00:00", "collateral.tcb_info"),
        (VECTORS[2], "2025-07-20", "collateral.tcb_info"),
        (VECTORS[3], "2026-03-21", "collateral.tcb_info"),
    ],
)
def test_collateral_outside_its_window_is_refused_with_the_reason(
    v: Vector, when: str, field: str
) -> None:
    with pytest.raises(EvidenceError, match="not valid at") as info:
        verify(v, collateral=collateral(v), at=utc(when))
    assert str(info.value.field).startswith("collateral.")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_a_quote_checked_against_the_wrong_root_is_refused(v: Vector) -> None:
    other = intel.make_pki(root_name="Intel SGX Root CA").root
    with pytest.raises(EvidenceError, match="does not end at a trusted root"):
        verify(v, roots=[other])


@pytest.mark.parametrize("v", [v for v in VECTORS if v.collateral], ids=lambda v: v.name)
@pytest.mark.parametrize("member", ["tcb_info", "qe_identity"])
def test_collateral_altered_after_signing_is_refused(v: Vector, member: str) -> None:
    doc = json.loads(collateral(v))
    doc[member] = doc[member].replace('"version":', '"version": ', 1)
    with pytest.raises(EvidenceError, match="does not verify"):
        verify(v, collateral=json.dumps(doc).encode())
    doc = json.loads(collateral(v))
    signature = bytearray.fromhex(doc[f"{member}_signature"])
    signature[5] ^= 1
    doc[f"{member}_signature"] = signature.hex()
    with pytest.raises(EvidenceError, match="does not verify"):
        verify(v, collateral=json.dumps(doc).encode())


@pytest.mark.parametrize("v", [v for v in VECTORS if v.collateral], ids=lambda v: v.name)
@pytest.mark.parametrize("member", ["root_ca_crl", "pck_crl"])
def test_altered_crls_are_refused(v: Vector, member: str) -> None:
    doc = json.loads(collateral(v))
    der = bytearray.fromhex(doc[member])
    for index in range(0, len(der), max(1, len(der) // 40)):
        changed = bytearray(der)
        changed[index] ^= 1
        doc[member] = changed.hex()
        with pytest.raises(EvidenceError):
            verify(v, collateral=json.dumps(doc).encode())


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_single_byte_change_in_the_signed_part_is_refused(v: Vector) -> None:
    data = quote(v)
    accepted = []
    for index in range(v.size):
        changed = bytearray(data)
        changed[index] ^= 0x01
        try:
            verify(v, bytes(changed))
        except EvidenceError:
            continue
        accepted.append(index)
    assert accepted == []


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_every_truncation_is_a_typed_error(v: Vector) -> None:
    data = quote(v)
    for length in range(len(data)):
        if length >= v.size:
            verify(v, data[:length])  # only trailing bytes are gone
            continue
        with pytest.raises(EvidenceError) as info:
            verify(v, data[:length])
        assert info.value.field


def test_an_sgx_quote_is_not_a_tdx_quote() -> None:
    with pytest.raises(EvidenceError, match="a SGX quote, not tdx") as info:
        verify_tdx_quote(quote(VECTORS[0]), at=VECTORS[0].at)
    assert (info.value.field, info.value.offset) == ("header.tee_type", 4)
    with pytest.raises(EvidenceError, match="a TDX quote, not sgx"):
        verify_sgx_quote(quote(VECTORS[2]), at=VECTORS[2].at)


def _with_unused_signature_bits(data: bytes, index: int) -> tuple[bytes, bool]:
    """``data`` with certificate ``index`` of its PEM chain re-encoded saying its signature BIT
    STRING has unused bits (the same bytes; the PEM keeps its length and line breaks), and
    whether that is DER at all (unused bits must be zero bits of the last byte)."""
    blocks = list(re.finditer(rb"-----BEGIN CERTIFICATE-----\n(.*?)\n-----END", data, re.S))
    body = blocks[index]
    der = bytearray(base64.b64decode(body.group(1).replace(b"\n", b"")))
    signature = x509.load_der_x509_certificate(bytes(der)).signature
    last = signature[-1]
    unused = min(7, (last & -last).bit_length() - 1) if last else 7
    der[-len(signature) - 1] = max(unused, 1)
    encoded = base64.b64encode(bytes(der))
    lines = b"\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    assert len(lines) == len(body.group(1))
    return data[: body.start(1)] + lines + data[body.end(1) :], unused > 0


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
@pytest.mark.parametrize("index", [0, 1], ids=["pck", "pck_ca"])
def test_a_second_encoding_of_a_chain_certificate_is_refused(v: Vector, index: int) -> None:
    # A signature BIT STRING declaring unused bits gives the same signature bytes: the quote
    # would verify with a certificate that is not Intel's encoding (dcap-qvl refuses it too).
    changed, is_der = _with_unused_signature_bits(quote(v), index)
    assert changed != quote(v)
    problem = "not a whole number of bytes" if is_der else "not PEM certificates"
    with pytest.raises(EvidenceError, match=problem) as info:
        verify(v, changed)
    assert info.value.field == "pck_certification_data"
