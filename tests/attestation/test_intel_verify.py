"""Intel SGX and TDX verification on synthetic evidence under a test root: every layout, every
TCB status path, every refusal, and property-based garbage."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.attestation import (
    Claims,
    Evidence,
    EvidenceVerifier,
    ReferenceValues,
    detect_kind,
    match_claims,
    verify_sgx_quote,
    verify_tdx_quote,
)
from geode.attestation._intel_quote import parse_intel_quote
from geode.errors import ClaimsMismatch, EvidenceError
from tests.attestation.support import intel as kit
from tests.attestation.support.intel import QuoteSpec, build_quote, collateral_bytes

NOW = kit.NOW
TDX_SVN = bytes([3, 0, 5] + [0] * 13)


def verify(data: bytes, tee: str = "sgx", **kwargs: object) -> Claims:
    fn = verify_tdx_quote if tee == "tdx" else verify_sgx_quote
    kwargs.setdefault("at", NOW)
    kwargs.setdefault("roots", [kit.pki().root])
    return fn(data, **kwargs)  # type: ignore[arg-type]


def sgx(**spec: object) -> bytes:
    return build_quote(QuoteSpec(**spec))  # type: ignore[arg-type]


def tdx(version: int = 4, **spec: object) -> bytes:
    return build_quote(QuoteSpec(version=version, tee="tdx", **spec))  # type: ignore[arg-type]


# -- layouts and claims -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5])
def test_sgx_quotes_of_every_version_verify_with_their_claims(version: int) -> None:
    body = kit.sgx_report(
        mrenclave=b"\xaa" * 32, mrsigner=b"\xbb" * 32, product_id=16, svn=9, report_data=b"r" * 64
    )
    claims = verify(sgx(version=version, body=body))
    assert (claims.tee, claims.measurement, claims.signer) == ("sgx", b"\xaa" * 32, b"\xbb" * 32)
    assert (claims.product_id, claims.svn, claims.debug) == (16, 9, False)
    assert claims.report_data == b"r" * 64
    assert claims.tcb_status == "Unverified"
    assert claims.platform == kit.FMSPC.hex()
    assert claims.details["quote_version"] == str(version)
    match_claims(
        claims,
        ReferenceValues(
            tee="sgx",
            signer="bb" * 32,
            product_id=16,
            min_svn=9,
            accepted_tcb_statuses=["Unverified"],
        ),
    )


@pytest.mark.parametrize(("version", "tdx15"), [(4, False), (5, False), (5, True)])
def test_tdx_quotes_verify_with_their_claims(version: int, tdx15: bool) -> None:
    rtmrs = [bytes([i]) * 48 for i in range(4)]
    body = kit.td_report(mrtd=b"\x77" * 48, rtmrs=rtmrs, mrconfigid=b"\x01" * 48, tdx15=tdx15)
    claims = verify(tdx(version, body=body), "tdx")
    assert (claims.tee, claims.measurement, claims.rtmrs) == ("tdx", b"\x77" * 48, tuple(rtmrs))
    assert claims.mrconfigid == b"\x01" * 48
    assert claims.debug is False
    assert ("mrservicetd" in claims.details) is tdx15
    assert claims.to_json()["rtmr2"] == (b"\x02" * 48).hex()


def test_debug_enclaves_and_tds_say_so() -> None:
    assert verify(sgx(body=kit.sgx_report(debug=True))).debug is True
    assert verify(tdx(body=kit.td_report(debug=True)), "tdx").debug is True
    claims = verify(tdx(body=kit.td_report(debug=True)), "tdx")
    with pytest.raises(ClaimsMismatch, match="debug mode not allowed"):
        match_claims(
            claims,
            ReferenceValues(
                tee="tdx", mrtd=claims.measurement.hex(), accepted_tcb_statuses=["Unverified"]
            ),
        )


def test_detect_kind_tells_sgx_from_tdx() -> None:
    assert detect_kind(sgx()) == "sgx"
    assert detect_kind(sgx(version=4)) == "sgx"
    assert detect_kind(tdx(5)) == "tdx"


def test_trailing_bytes_after_the_signature_data_are_ignored() -> None:
    assert verify(sgx(trailing=b"\0" * 70)).tee == "sgx"
    assert verify(tdx(trailing=b"anything"), "tdx").tee == "tdx"


def test_a_v5_body_type_must_fit_the_tee_and_its_size() -> None:
    with pytest.raises(EvidenceError, match="body type 1 in a quote of TEE type 0x81") as info:
        verify(tdx(5, body=kit.sgx_report(), body_type=1), "tdx")
    assert (info.value.field, info.value.offset) == ("body_type", 48)
    with pytest.raises(EvidenceError, match="584, a type 1 body is 384") as info:
        verify(tdx(5, body_type=1), "tdx")
    assert (info.value.field, info.value.offset) == ("body_size", 50)
    with pytest.raises(EvidenceError, match="unknown body type 9"):
        verify(tdx(5, body_type=9), "tdx")


# -- the signatures and the binding ---------------------------------------------------------------


def test_a_qe_report_that_does_not_bind_the_attestation_key_is_refused() -> None:
    with pytest.raises(EvidenceError, match="does not bind the attestation key") as info:
        verify(sgx(qe_report_data=bytes(64)))
    assert info.value.field == "qe_report.report_data"
    assert info.value.offset == 436 + 128 + 320


def test_a_debug_quoting_enclave_is_refused() -> None:
    debug = bytes.fromhex("13000000000000000000000000000000")
    with pytest.raises(EvidenceError, match="debug enclave") as info:
        verify(sgx(qe_attributes=debug))
    assert (info.value.field, info.value.offset) == ("qe_report.attributes", 436 + 128 + 48)


def test_the_qe_report_must_be_signed_by_the_pck_key() -> None:
    other = kit.make_pki()
    # The chain is the test PKI's, the QE report signed by another PCK key.
    data = build_quote(QuoteSpec(pki=other, chain=kit.pki().chain_pem()))
    with pytest.raises(EvidenceError, match="signature does not verify") as info:
        verify(data)
    assert info.value.field == "qe_report_signature"


def test_certification_data_without_a_chain_needs_the_chain_given() -> None:
    data = sgx(cert_type=3, chain=b"\x01" * 16)
    with pytest.raises(EvidenceError, match="carries no PCK chain") as info:
        verify(data)
    assert info.value.field == "pck_certification_data.type"
    assert verify(data, certs=kit.pki().chain_pem()).tee == "sgx"


def test_a_chain_without_its_root_verifies_and_a_foreign_root_is_refused() -> None:
    assert verify(sgx(chain=kit.pki().chain_pem(with_root=False))).tee == "sgx"
    impostor = kit.make_pki(root_name="Test SGX Root CA")  # same name, other key
    with pytest.raises(EvidenceError, match="does not end at a trusted root"):
        verify(sgx(), roots=[impostor.root])
    carried = kit.pki().chain_pem(with_root=False) + impostor.root.public_bytes(
        kit.serialization.Encoding.PEM
    )
    with pytest.raises(EvidenceError, match="does not end at a trusted root"):
        verify(sgx(chain=carried))


def test_the_pinned_intel_root_refuses_test_quotes() -> None:
    with pytest.raises(EvidenceError, match="does not end at a trusted root"):
        verify_sgx_quote(sgx(), at=NOW)


def test_chains_outside_their_validity_are_refused() -> None:
    with pytest.raises(EvidenceError, match="not valid at 2036"):
        verify(sgx(), at=datetime.datetime(2036, 1, 1, tzinfo=datetime.UTC))


def test_a_pck_certificate_without_the_sgx_extension_is_refused() -> None:
    plain = kit.make_pki()
    pck = kit._cert("PCK", plain.pck_key, "Test SGX PCK Platform CA", plain.ca_key, ca=False)
    chain = b"".join(
        c.public_bytes(kit.serialization.Encoding.PEM) for c in (pck, plain.ca, plain.root)
    )
    with pytest.raises(EvidenceError, match="no SGX extension"):
        verify(build_quote(QuoteSpec(pki=plain, chain=chain)), roots=[plain.root])


def test_an_intermediate_that_is_not_a_ca_is_refused() -> None:
    p = kit.make_pki()
    ca = kit._cert("Test SGX PCK Platform CA", p.ca_key, "Test SGX Root CA", p.root_key, ca=False)
    chain = b"".join(c.public_bytes(kit.serialization.Encoding.PEM) for c in (p.pck, ca, p.root))
    with pytest.raises(EvidenceError, match="not a CA"):
        verify(build_quote(QuoteSpec(pki=p, chain=chain)), roots=[p.root])


# -- collateral and the TCB status ---------------------------------------------------------------


def test_up_to_date_sgx_with_collateral() -> None:
    claims = verify(sgx(), collateral=collateral_bytes())
    assert claims.tcb_status == "UpToDate"
    assert claims.details["tcb_evaluation_data_number"] == "17"
    match_claims(claims, ReferenceValues(tee="sgx", measurement=claims.measurement.hex()))


@pytest.mark.parametrize(
    "status",
    [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    ],
)
def test_the_platform_status_is_the_matching_levels(status: str) -> None:
    info = kit.tcb_info(levels=[kit.tcb_level(status, tdx=None, advisories=["INTEL-SA-1"])])
    claims = verify(sgx(), collateral=collateral_bytes(info=info))
    assert claims.tcb_status == status
    assert claims.advisory_ids == ("INTEL-SA-1",)


def test_the_first_level_the_platform_reaches_wins() -> None:
    higher = bytes([9] * 16)
    info = kit.tcb_info(
        levels=[
            kit.tcb_level("UpToDate", cpu_svn=higher, tdx=None),
            kit.tcb_level("UpToDate", pce_svn=99, tdx=None),
            kit.tcb_level("SWHardeningNeeded", tdx=None, advisories=["INTEL-SA-2"]),
            kit.tcb_level("OutOfDate", cpu_svn=bytes(16), pce_svn=0, tdx=None),
        ]
    )
    claims = verify(sgx(), collateral=collateral_bytes(info=info))
    assert (claims.tcb_status, claims.advisory_ids) == ("SWHardeningNeeded", ("INTEL-SA-2",))


def test_a_platform_below_every_level_is_out_of_date_and_the_package_decides() -> None:
    info = kit.tcb_info(
        levels=[kit.tcb_level("UpToDate", cpu_svn=bytes([9] * 16), tdx=None, advisories=["X"])]
    )
    claims = verify(sgx(), collateral=collateral_bytes(info=info))
    assert claims.tcb_status == "OutOfDate"
    assert claims.tcb_reasons == ("below every TCB level: the platform's TCB",)
    assert claims.advisory_ids == ("X",)  # exposed to at least the lowest level's
    assert claims.checked == {"signature", "chain", "revocation", "tcb"}
    package = ReferenceValues(tee="sgx", measurement=claims.measurement.hex())
    with pytest.raises(ClaimsMismatch) as refused:
        match_claims(claims, package)
    assert refused.value.reason == "tcb status not accepted"
    assert refused.value.detail == (
        "OutOfDate (below every TCB level: the platform's TCB); advisories X"
    )
    lenient = package.model_copy(
        update={"accepted_tcb_statuses": ["UpToDate", "OutOfDate"], "accepted_advisories": ["X"]}
    )
    verdict = match_claims(claims, lenient)
    assert verdict.status == "OutOfDate"
    assert verdict.reasons == (
        "below every TCB level: the platform's TCB",
        "advisories accepted at OutOfDate: X",
    )


def test_below_every_level_carries_the_lowest_levels_advisories() -> None:
    # A package accepting OutOfDate with a narrow list of advisories must not accept a platform
    # older than every level: it is exposed to at least the lowest level's advisories.
    info = kit.tcb_info(
        levels=[
            kit.tcb_level("UpToDate", cpu_svn=bytes([9] * 16), tdx=None),
            kit.tcb_level(
                "OutOfDate", cpu_svn=bytes([8] * 16), tdx=None, advisories=["INTEL-SA-00001"]
            ),
        ]
    )
    identity = kit.qe_identity(levels=[kit.identity_level(9, "UpToDate", ["INTEL-SA-00002"])])
    claims = verify(sgx(), collateral=collateral_bytes(info=info, identity=identity))
    assert claims.tcb_status == "OutOfDate"
    assert claims.advisory_ids == ("INTEL-SA-00001", "INTEL-SA-00002")
    package = ReferenceValues(
        tee="sgx",
        measurement=claims.measurement.hex(),
        accepted_tcb_statuses=["OutOfDate"],
        accepted_advisories=["INTEL-SA-00001"],
    )
    with pytest.raises(ClaimsMismatch) as refused:
        match_claims(claims, package)
    assert (refused.value.reason, refused.value.detail) == (
        "advisory not accepted",
        "INTEL-SA-00002 (OutOfDate)",
    )
    both = package.model_copy(update={"accepted_advisories": ["INTEL-SA-00001", "INTEL-SA-00002"]})
    assert match_claims(claims, both).status == "OutOfDate"


def test_a_td_below_every_level_converges_with_its_platform_level() -> None:
    # The platform's TCB reaches a ConfigurationNeeded level whose TDX components the TD's TEE
    # TCB SVN does not reach: out of date, configuration still needed.
    info = kit.tcb_info(
        tdx=True, levels=[kit.tcb_level("ConfigurationNeeded", tdx=bytes([0xFF] * 16))]
    )
    claims = verify(tdx(), "tdx", collateral=collateral_bytes(info=info, tdx=True))
    assert claims.tcb_status == "OutOfDateConfigurationNeeded"
    assert claims.tcb_reasons == ("below every TCB level: the TD's TEE TCB SVN",)


@pytest.mark.parametrize(
    ("platform", "qe", "expected"),
    [
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "OutOfDate", "OutOfDate"),
        ("UpToDate", "Revoked", "Revoked"),
        ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"),
    ],
)
def test_the_qe_identity_status_converges_with_the_platforms(
    platform: str, qe: str, expected: str
) -> None:
    info = kit.tcb_info(levels=[kit.tcb_level(platform, tdx=None, advisories=["INTEL-SA-P"])])
    identity = kit.qe_identity(
        levels=[kit.identity_level(9, "UpToDate"), kit.identity_level(8, qe, ["INTEL-SA-Q"])]
    )
    claims = verify(sgx(), collateral=collateral_bytes(info=info, identity=identity))
    assert claims.tcb_status == expected
    assert claims.details["qe_tcb_status"] == qe
    assert claims.advisory_ids == ("INTEL-SA-P", "INTEL-SA-Q")


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("UpToDate", "OutOfDate"), ("ConfigurationNeeded", "OutOfDateConfigurationNeeded")],
)
def test_a_qe_below_every_identity_level_is_out_of_date(platform: str, expected: str) -> None:
    info = kit.tcb_info(levels=[kit.tcb_level(platform, tdx=None)])
    identity = kit.qe_identity(levels=[kit.identity_level(9, "UpToDate", ["INTEL-SA-Q"])])
    claims = verify(sgx(), collateral=collateral_bytes(info=info, identity=identity))
    assert claims.tcb_status == expected
    assert claims.details["qe_tcb_status"] == "OutOfDate"
    assert claims.tcb_reasons == ("below every TCB level: the QE's ISVSVN 8",)
    assert claims.advisory_ids == ("INTEL-SA-Q",)
    package = ReferenceValues(tee="sgx", measurement=claims.measurement.hex())
    with pytest.raises(ClaimsMismatch, match=rf"{expected} \(below every TCB level"):
        match_claims(claims, package)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mrsigner": "00" * 32}, "not the one the identity names"),
        ({"isvprodid": 5}, "not the one the identity names"),
        ({"miscselect": "00000001"}, "MISCSELECT or attributes"),
        ({"attributes": "31000000000000000000000000000000"}, "MISCSELECT or attributes"),
        ({"id": "TD_QE"}, "identity of TD_QE"),
    ],
)
def test_a_qe_the_identity_does_not_describe_is_refused(
    change: dict[str, object], message: str
) -> None:
    identity = {**kit.qe_identity(), **change}
    with pytest.raises(EvidenceError, match=message):
        verify(sgx(), collateral=collateral_bytes(identity=identity))


def test_tcb_info_for_another_platform_or_tee_is_refused() -> None:
    with pytest.raises(EvidenceError, match="the PCK certificate is FMSPC") as info:
        verify(sgx(), collateral=collateral_bytes(info=kit.tcb_info(fmspc=bytes(6))))
    assert info.value.field == "collateral.tcb_info.fmspc"
    with pytest.raises(EvidenceError, match="TCB info for TDX, the quote is SGX"):
        verify(sgx(), collateral=collateral_bytes(info=kit.tcb_info(tdx=True)))


def test_a_list_of_collateral_documents_is_searched_by_fmspc() -> None:
    mine = kit.collateral()
    other = kit.collateral(info=kit.tcb_info(fmspc=bytes(6)))
    both = json.dumps([other, mine]).encode()
    assert verify(sgx(), collateral=both).tcb_status == "UpToDate"
    with pytest.raises(EvidenceError, match="no collateral for FMSPC"):
        verify(sgx(), collateral=json.dumps([other, other]).encode())


def test_tcb_info_version_2_is_read() -> None:
    info = kit.tcb_info()
    level = kit.tcb_level("SWHardeningNeeded", tdx=None)
    tcb = {f"sgxtcbcomp{i + 1:02d}svn": svn for i, svn in enumerate(kit.CPU_SVN)}
    level["tcb"] = {**tcb, "pcesvn": kit.PCE_SVN}
    info.update(version=2, tcbLevels=[level])
    del info["id"]
    claims = verify(sgx(), collateral=collateral_bytes(info=info))
    assert claims.tcb_status == "SWHardeningNeeded"


def test_tdx_status_uses_the_tee_tcb_svn() -> None:
    info = kit.tcb_info(
        tdx=True,
        levels=[
            kit.tcb_level("UpToDate", tdx=bytes([4, 0, 5] + [0] * 13)),
            kit.tcb_level("OutOfDate", tdx=TDX_SVN, advisories=["INTEL-SA-T"]),
        ],
    )
    identity = kit.qe_identity(tdx=True)
    claims = verify(tdx(), "tdx", collateral=collateral_bytes(info=info, identity=identity))
    assert (claims.tcb_status, claims.advisory_ids) == ("OutOfDate", ("INTEL-SA-T",))


def test_tdx_module_identities_converge_when_the_module_says_its_version() -> None:
    svn = bytes([2, 3, 5] + [0] * 13)  # module ISVSVN 2, module version 3
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
    # The first two bytes are the module's, so the levels' first two components are not compared.
    levels = [kit.tcb_level("ConfigurationNeeded", tdx=bytes([99, 99, 5] + [0] * 13))]
    info = kit.tcb_info(tdx=True, levels=levels, module_identities=[module])
    doc = collateral_bytes(info=info, identity=kit.qe_identity(tdx=True))
    claims = verify(tdx(body=kit.td_report(tee_tcb_svn=svn)), "tdx", collateral=doc)
    assert claims.tcb_status == "OutOfDateConfigurationNeeded"
    assert claims.details["tdx_module_tcb_status"] == "OutOfDate"
    assert claims.advisory_ids == ("INTEL-SA-M",)
    info = kit.tcb_info(tdx=True, levels=levels, module_identities=[{**module, "id": "TDX_01"}])
    doc = collateral_bytes(info=info, identity=kit.qe_identity(tdx=True))
    with pytest.raises(EvidenceError, match="no identity TDX_03"):
        verify(tdx(body=kit.td_report(tee_tcb_svn=svn)), "tdx", collateral=doc)


def test_a_tdx_module_of_another_signer_is_refused() -> None:
    doc = collateral_bytes(info=kit.tcb_info(tdx=True), identity=kit.qe_identity(tdx=True))
    body = kit.td_report(mrsignerseam=b"\x01" * 48)
    with pytest.raises(EvidenceError, match="TDX module's signer or attributes"):
        verify(tdx(body=body), "tdx", collateral=doc)


def test_revoked_certificates_are_refused() -> None:
    p = kit.pki()
    pck_crl = kit.crl(p.ca, p.ca_key, revoked=[p.pck.serial_number])
    with pytest.raises(EvidenceError, match="the PCK certificate is revoked") as info:
        verify(sgx(), collateral=collateral_bytes(pck_crl=pck_crl))
    assert info.value.field == "collateral.pck_crl"
    root_crl = kit.crl(p.root, p.root_key, revoked=[p.ca.serial_number])
    with pytest.raises(EvidenceError, match="the PCK CA certificate is revoked"):
        verify(sgx(), collateral=collateral_bytes(root_crl=root_crl))
    root_crl = kit.crl(p.root, p.root_key, revoked=[p.tcb_signer.serial_number])
    with pytest.raises(EvidenceError, match="signing certificate is revoked"):
        verify(sgx(), collateral=collateral_bytes(root_crl=root_crl))


def test_crls_must_come_from_their_issuers() -> None:
    p = kit.pki()
    forged = kit.crl(p.ca, p.root_key)  # the CA's name, the root's key
    with pytest.raises(EvidenceError, match="not signed by"):
        verify(sgx(), collateral=collateral_bytes(pck_crl=forged))
    with pytest.raises(EvidenceError, match="issued by"):
        verify(sgx(), collateral=collateral_bytes(pck_crl=kit.crl(p.root, p.root_key)))


@pytest.mark.parametrize("part", ["tcb_info", "qe_identity", "root_ca_crl", "pck_crl"])
@pytest.mark.parametrize("side", ["before", "after"])
def test_collateral_outside_its_window_is_refused(part: str, side: str) -> None:
    late = {"issued": NOW + datetime.timedelta(hours=1)}
    early = {"next_update": NOW - datetime.timedelta(hours=1)}
    window = late if side == "before" else early
    p = kit.pki()
    kwargs: dict[str, object] = {
        "tcb_info": {"info": kit.tcb_info(**window)},  # type: ignore[arg-type]
        "qe_identity": {"identity": kit.qe_identity(**window)},  # type: ignore[arg-type]
        "root_ca_crl": {"root_crl": kit.crl(p.root, p.root_key, **window)},  # type: ignore[arg-type]
        "pck_crl": {"pck_crl": kit.crl(p.ca, p.ca_key, **window)},  # type: ignore[arg-type]
    }[part]
    with pytest.raises(EvidenceError, match="not valid at 2025-07-01T00:00:00") as info:
        verify(sgx(), collateral=collateral_bytes(**kwargs))
    assert info.value.field == f"collateral.{part}"


def test_collateral_signed_by_another_key_is_refused() -> None:
    other = kit.make_pki()
    doc = kit.collateral()
    forged = kit.collateral(pki=other)
    doc["tcb_info_signature"] = forged["tcb_info_signature"]
    with pytest.raises(EvidenceError, match="does not verify"):
        verify(sgx(), collateral=json.dumps(doc).encode())
    doc["tcb_info_issuer_chain"] = forged["tcb_info_issuer_chain"]
    with pytest.raises(EvidenceError, match="is not issued by a trusted root"):
        verify(sgx(), collateral=json.dumps(doc).encode())


def test_pcs_response_bodies_are_accepted_as_served() -> None:
    doc = kit.collateral()
    body = (
        '{"tcbInfo":'
        + str(doc["tcb_info"])
        + ',"signature":"'
        + str(doc["tcb_info_signature"])
        + '"}'
    )
    doc["tcb_info"] = body
    del doc["tcb_info_signature"]
    assert verify(sgx(), collateral=json.dumps(doc).encode()).tcb_status == "UpToDate"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "collateral.tcb_info"),
        ({"tcb_info": "{}", "tcb_info_signature": "00"}, "collateral.tcb_info_signature"),
        ([], "collateral"),
    ],
)
def test_malformed_collateral_is_a_typed_error(doc: object, field: str) -> None:
    with pytest.raises(EvidenceError) as info:
        verify(sgx(), collateral=json.dumps(doc).encode())
    assert info.value.field == field or str(info.value.field).startswith(f"{field}.")


# -- the dispatcher -----------------------------------------------------------------------------


def test_the_evidence_verifier_takes_roots_collateral_and_clock() -> None:
    verifier = EvidenceVerifier(
        roots={"sgx": [kit.pki().root]},
        collateral={"sgx": collateral_bytes()},
        clock=lambda: NOW,
    )
    assert verifier.verify(Evidence("sgx", sgx())).tcb_status == "UpToDate"
    later = NOW + datetime.timedelta(days=30)
    with pytest.raises(EvidenceError, match="not valid at"):
        verifier.verify(Evidence("sgx", sgx()), at=later)


# -- garbage --------------------------------------------------------------------------------------

GOOD = build_quote(QuoteSpec(version=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_garbage_is_a_typed_error(data: bytes) -> None:
    for tee in ("sgx", "tdx"):
        with pytest.raises(EvidenceError) as info:
            verify(data, tee)
        assert info.value.field


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=len(GOOD) - 1))
def test_overwritten_quotes_are_typed_errors(patch: bytes, at: int) -> None:
    # A patch running past the end is cut there; what is left may be the good quote again.
    data = (GOOD[:at] + patch + GOOD[at + len(patch) :])[: len(GOOD)]
    if data == GOOD:
        return
    with pytest.raises(EvidenceError):
        verify(data)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=3, max_value=5),
    st.sampled_from([0, 0x81]),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.binary(max_size=800),
)
def test_plausible_headers_with_garbage_are_typed_errors(
    version: int, tee: int, body_type: int, size: int, rest: bytes
) -> None:
    header = struct.pack("<HHIHH", version, 2, tee, 0, 0) + kit.QE_VENDOR + bytes(20)
    data = header + struct.pack("<HI", body_type, size) + rest
    with pytest.raises(EvidenceError) as info:
        verify(data, "tdx" if tee else "sgx")
    assert info.value.offset is not None or info.value.field


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_garbage_collateral_is_a_typed_error(doc: object) -> None:
    with pytest.raises(EvidenceError):
        verify(sgx(), collateral=json.dumps(doc).encode())


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["tcb_info", "qe_identity"]), st.data())
def test_signed_collateral_with_garbage_fields_is_a_typed_error(
    member: str, data: st.DataObject
) -> None:
    base = kit.tcb_info() if member == "tcb_info" else kit.qe_identity()
    key = data.draw(st.sampled_from(sorted(base)))
    value = data.draw(
        st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=3)
    )
    changed = {**base, key: value}
    doc = collateral_bytes(**({"info": changed} if member == "tcb_info" else {"identity": changed}))
    with contextlib.suppress(EvidenceError):  # whatever it says, it says it with a typed error
        verify(sgx(), collateral=doc)


def test_parse_reports_the_quote_size() -> None:
    data = sgx(trailing=b"xyz")
    assert parse_intel_quote(data).size == len(data) - 3
    assert dataclasses.asdict(parse_intel_quote(data))["version"] == 3


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | JSON.map(json.dumps))
def test_garbage_pcs_bodies_are_typed_errors(body: str) -> None:
    doc = kit.collateral()
    doc["tcb_info"] = body
    del doc["tcb_info_signature"]
    with pytest.raises(EvidenceError) as info:
        verify(sgx(), collateral=json.dumps(doc).encode())
    assert str(info.value.field).startswith("collateral.")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_detect_kind_names_a_kind_or_says_why_not(data: bytes) -> None:
    kind = ""
    with contextlib.suppress(EvidenceError):
        kind = detect_kind(data)
    assert kind in ("", "simulated", "sgx", "tdx", "sev-snp", "nvidia")


@pytest.mark.parametrize("member", ["tcb_info", "qe_identity"])
def test_a_signed_date_without_a_time_zone_is_refused_by_name(member: str) -> None:
    # Naive dates cannot be compared with the verification time: refused as the field they are.
    naive = "2025-06-21T00:00:00"
    if member == "tcb_info":
        doc = kit.collateral_bytes(info={**kit.tcb_info(), "issueDate": naive})
    else:
        doc = kit.collateral_bytes(identity={**kit.qe_identity(), "issueDate": naive})
    with pytest.raises(EvidenceError, match="timezone") as info:
        verify(sgx(), collateral=doc)
    assert info.value.field == f"collateral.{member}.issueDate"


# -- advisories the package accepts -------------------------------------------------------------


def test_accepted_advisories_work_both_ways() -> None:
    info = kit.tcb_info(
        levels=[
            kit.tcb_level(
                "SWHardeningNeeded", tdx=None, advisories=["INTEL-SA-00615", "INTEL-SA-00657"]
            )
        ]
    )
    claims = verify(sgx(), collateral=collateral_bytes(info=info))
    assert claims.advisory_ids == ("INTEL-SA-00615", "INTEL-SA-00657")
    package = ReferenceValues(
        tee="sgx",
        measurement=claims.measurement.hex(),
        accepted_tcb_statuses=["UpToDate", "SWHardeningNeeded"],
        accepted_advisories=["INTEL-SA-00657"],
    )
    with pytest.raises(ClaimsMismatch) as refused:
        match_claims(claims, package)
    assert refused.value.reason == "advisory not accepted"
    assert refused.value.detail == "INTEL-SA-00615 (SWHardeningNeeded)"
    both = package.model_copy(update={"accepted_advisories": ["INTEL-SA-00615", "INTEL-SA-00657"]})
    verdict = match_claims(claims, both)
    assert verdict.status == "SWHardeningNeeded"
    assert verdict.checked == {"signature", "chain", "revocation", "tcb", "reference"}
    assert verdict.reasons == (
        "advisories accepted at SWHardeningNeeded: INTEL-SA-00615, INTEL-SA-00657",
    )


def test_up_to_date_evidence_needs_no_accepted_advisories() -> None:
    claims = verify(sgx(), collateral=collateral_bytes())
    assert claims.tcb_status == "UpToDate"
    verdict = match_claims(claims, ReferenceValues(tee="sgx", measurement=claims.measurement.hex()))
    assert (verdict.status, verdict.reasons) == ("UpToDate", ())


def test_without_collateral_only_signature_and_chain_are_checked() -> None:
    assert verify(sgx()).checked == {"signature", "chain"}
    assert verify(tdx(), "tdx").checked == {"signature", "chain"}
