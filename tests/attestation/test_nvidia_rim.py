"""NVIDIA collateral: the driver and VBIOS RIMs (signed SWID tags) and OCSP responses, made under
test CAs. With all of it a GPU report is ``UpToDate``, having been checked against the RIMs'
golden measurements and for revocation; each failure refuses naming what failed. The real H100
sample report is compared with RIMs carrying its measurements (signed by the test CA: NVIDIA's
RIMs for that driver are not in the vectors); its device chain is NVIDIA's, so OCSP for it can
only be refused here."""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geode.attestation import Evidence, EvidenceVerifier, TrustAnchors
from geode.attestation._evidence_certs import load_evidence_certificates
from geode.attestation._nvidia import (
    CcMode,
    build_nvidia_evidence,
    nvidia_root,
    verify_nvidia_report,
)
from geode.attestation._nvidia_collateral import NVIDIA_RIM_ROOT_SHA256, nvidia_rim_roots
from geode.attestation._nvidia_rim import MAX_RIM_SIZE
from geode.errors import EvidenceError
from tests.attestation.support.nvidia import AT, GpuPki
from tests.attestation.support.nvidia_collateral import (
    DRIVER,
    DRIVER_GOLDEN,
    MEASUREMENTS,
    VBIOS,
    VBIOS_GOLDEN,
    all_ocsp,
    document,
    evidence,
    refused,
    verify,
)
from tests.attestation.support.nvidia_rim import (
    RimPki,
    collateral,
    impostor,
    issue,
    ocsp_response,
    rim_xml,
)
from tests.attestation.support.vectors import read_vector, requires_vectors

HAVE_SIGNXML = importlib.util.find_spec("signxml") is not None
pytestmark = pytest.mark.skipif(
    not HAVE_SIGNXML and os.environ.get("CI") != "true",
    reason="signxml (geode[nvidia]) is not installed",
)


@pytest.fixture(scope="module")
def gpu() -> GpuPki:
    return GpuPki.create()


@pytest.fixture(scope="module")
def rims() -> RimPki:
    return RimPki.create()


def test_with_rims_and_ocsp_the_report_is_up_to_date(gpu: GpuPki, rims: RimPki) -> None:
    claims = verify(gpu, rims, collateral=document(gpu, rims))
    assert claims.tcb_status == "UpToDate"
    assert claims.checked == {"signature", "chain", "revocation", "tcb", "reference"}
    assert "revocation" in claims.checked
    assert claims.details["driver_rim_signer"] == "Test RIM Signer"


def test_collateral_through_trust_anchors(gpu: GpuPki, rims: RimPki) -> None:
    trust = (
        TrustAnchors()
        .with_roots("nvidia", [gpu.root, rims.root])
        .with_collateral("nvidia", document(gpu, rims))
        .with_clock(lambda: AT)
    )
    claims = EvidenceVerifier(trust=trust).verify(Evidence("nvidia", evidence(gpu)))
    assert claims.tcb_status == "UpToDate"
    assert "reference" in claims.checked


def test_any_alternative_matches_and_inactive_entries_are_not_compared(
    gpu: GpuPki, rims: RimPki
) -> None:
    driver = {**DRIVER_GOLDEN, 4: [os.urandom(48), MEASUREMENTS[5]]}
    # RIM index 20 is inactive (a zero value), the report has no block 21: neither matters.
    claims = verify(gpu, rims, collateral=document(gpu, rims, driver=driver))
    assert claims.tcb_status == "UpToDate"


def test_a_mismatch_is_refused_naming_the_index(gpu: GpuPki, rims: RimPki) -> None:
    driver = {**DRIVER_GOLDEN, 6: [os.urandom(48), os.urandom(48)]}
    error = refused(gpu, rims, document(gpu, rims, driver=driver))
    assert error.field == "measurements[7]"
    assert "measurement index 6 (block 7)" in error.reason
    assert "driver RIM's 2 golden values" in error.reason


def test_a_golden_index_the_report_lacks_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    error = refused(gpu, rims, document(gpu, rims, vbios={**VBIOS_GOLDEN, 40: [bytes(48)]}))
    assert "index 40 is not in the report" in error.reason


def test_two_rims_claiming_one_index_are_refused(gpu: GpuPki, rims: RimPki) -> None:
    error = refused(gpu, rims, document(gpu, rims, vbios={**VBIOS_GOLDEN, 5: [MEASUREMENTS[6]]}))
    assert "both claim measurement index 5" in error.reason


def test_a_rim_without_active_measurements_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    empty = rim_xml(rims, version=VBIOS, golden={}, inactive=[0, 1])
    error = refused(gpu, rims, document(gpu, rims, vbios_rim=empty))
    assert error.field == "collateral.vbios_rim"
    assert "marks no measurement active" in error.reason


def test_a_tampered_rim_fails_its_signature(gpu: GpuPki, rims: RimPki) -> None:
    text = rim_xml(rims, version=DRIVER, golden=DRIVER_GOLDEN)
    forged = MEASUREMENTS[6].hex()
    tampered = text.replace(MEASUREMENTS[5].hex(), forged)
    assert tampered != text
    error = refused(gpu, rims, document(gpu, rims, driver_rim=tampered))
    assert error.field == "collateral.driver_rim"
    assert "signature does not verify" in error.reason


def test_a_rim_for_another_version_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    other = rim_xml(rims, version="96.00.5E.00.01", golden=VBIOS_GOLDEN)
    error = refused(gpu, rims, document(gpu, rims, vbios_rim=other))
    assert error.field == "collateral.vbios_rim"
    assert "'96.00.5E.00.01'" in error.reason


def test_a_rim_under_another_root_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    stranger = RimPki.create()
    text = rim_xml(stranger, version=VBIOS, golden=VBIOS_GOLDEN)
    error = refused(gpu, rims, document(gpu, rims, vbios_rim=text))
    assert error.field == "collateral.vbios_rim"
    # Its root has the trusted root's name, not its key.
    assert "is not issued by Test CoRIM signing Root CA" in error.reason


def test_production_roots_do_not_take_test_rims(rims: RimPki) -> None:
    assert hashlib.sha256(nvidia_rim_roots()[0].public_bytes(Encoding.DER)).hexdigest() == (
        NVIDIA_RIM_ROOT_SHA256
    )
    gpu = GpuPki.create()
    data = evidence(gpu)
    # The device chain under its test root, the RIMs under the pinned NVIDIA RIM root only.
    with pytest.raises(EvidenceError) as caught:
        verify_nvidia_report(data, at=AT, roots=[gpu.root], collateral=document(gpu, rims))
    assert caught.value.field == "collateral.driver_rim"


@pytest.mark.parametrize("missing", ["driver_rim", "vbios_rim", "ocsp"])
def test_partial_collateral_is_refused_naming_what_is_missing(
    gpu: GpuPki, rims: RimPki, missing: str
) -> None:
    whole = json.loads(document(gpu, rims))
    del whole[missing]
    error = refused(gpu, rims, json.dumps(whole).encode())
    assert error.field == "collateral"
    assert f"lacks {missing}" in error.reason


def test_a_revoked_device_certificate_is_refused_naming_it(gpu: GpuPki, rims: RimPki) -> None:
    responses = all_ocsp(gpu, rims)
    responses[0] = ocsp_response(
        gpu.ica, gpu.root, gpu.root_key, status=ocsp.OCSPCertStatus.REVOKED
    )
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert error.field == "collateral.ocsp"
    assert "certificate 'Test GPU ICA' is revoked (OCSP, keyCompromise)" in error.reason


def test_a_revoked_rim_signer_is_refused_naming_it(gpu: GpuPki, rims: RimPki) -> None:
    responses = all_ocsp(gpu, rims)
    responses[1] = ocsp_response(
        rims.leaf, rims.ica, rims.ica_key, status=ocsp.OCSPCertStatus.REVOKED
    )
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert "certificate 'Test RIM Signer' is revoked" in error.reason


def test_unknown_status_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    responses = all_ocsp(gpu, rims)
    responses[2] = ocsp_response(
        rims.ica, rims.root, rims.root_key, status=ocsp.OCSPCertStatus.UNKNOWN
    )
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert "status of certificate 'Test Reference Value CA' is unknown" in error.reason


@pytest.mark.parametrize(
    ("this_update", "next_update", "message"),
    [
        (AT - datetime.timedelta(days=9), AT - datetime.timedelta(days=2), "not current"),
        (AT + datetime.timedelta(hours=1), AT + datetime.timedelta(days=2), "not current"),
        (AT - datetime.timedelta(hours=1), None, "no nextUpdate"),
    ],
)
def test_stale_ocsp_is_refused(
    gpu: GpuPki,
    rims: RimPki,
    this_update: datetime.datetime,
    next_update: datetime.datetime | None,
    message: str,
) -> None:
    responses = all_ocsp(gpu, rims)
    responses[0] = ocsp_response(
        gpu.ica, gpu.root, gpu.root_key, this_update=this_update, next_update=next_update
    )
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert message in error.reason
    assert "'Test GPU ICA'" in error.reason


def test_a_missing_response_is_refused_naming_the_certificate(gpu: GpuPki, rims: RimPki) -> None:
    error = refused(gpu, rims, document(gpu, rims, responses=all_ocsp(gpu, rims)[1:]))
    assert "no OCSP response for certificate 'Test GPU ICA'" in error.reason


def test_a_response_signed_by_another_key_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    responses = all_ocsp(gpu, rims)
    fake, key = impostor(gpu.root)
    responses[0] = ocsp_response(gpu.ica, gpu.root, key, responder=fake, carry_responder=False)
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert "not signed by its issuer or a delegated responder" in error.reason


def test_a_delegated_responder_is_accepted_only_with_ocsp_signing(
    gpu: GpuPki, rims: RimPki
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    for usage, ok in ((True, True), (False, False)):
        responder = issue(
            "Test OCSP responder", key, rims.ica, rims.ica_key, ca=False, ocsp_signing=usage
        )
        responses = all_ocsp(gpu, rims)
        responses[1] = ocsp_response(rims.leaf, rims.ica, key, responder=responder)
        if ok:
            verify(gpu, rims, collateral=document(gpu, rims, responses=responses))
        else:
            error = refused(gpu, rims, document(gpu, rims, responses=responses))
            assert "delegated responder" in error.reason


def test_a_report_not_stating_its_mode_is_refused_with_collateral(
    gpu: GpuPki, rims: RimPki
) -> None:
    raw = evidence(gpu, mode=None)
    with pytest.raises(EvidenceError) as caught:
        verify(gpu, rims, raw, certs=gpu.chain_pem(), collateral=document(gpu, rims))
    assert caught.value.field == "cc_mode"


def test_a_dtd_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    text = rim_xml(rims, version=DRIVER, golden=DRIVER_GOLDEN)
    entity = '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    error = refused(gpu, rims, document(gpu, rims, driver_rim=entity + text))
    assert error.field == "collateral.driver_rim"
    assert "DTD" in error.reason


def test_an_oversized_rim_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    text = rim_xml(rims, version=DRIVER, golden=DRIVER_GOLDEN)
    padded = text.replace("<", " " * (MAX_RIM_SIZE + 1) + "<", 1)
    error = refused(gpu, rims, document(gpu, rims, driver_rim=padded))
    assert "larger than" in error.reason


def test_without_signxml_the_error_says_how_to_install_it(
    gpu: GpuPki, rims: RimPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "signxml.verifier", None)
    error = refused(gpu, rims, document(gpu, rims))
    assert "pip install 'geode[nvidia]'" in error.reason


# -- the real H100 sample report ----------------------------------------------------------------

VECTOR_AT = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)


def vector() -> tuple[bytes, dict[int, bytes]]:
    chain = load_evidence_certificates(read_vector("nvidia_h100_spdm.certchain.pem"))
    data = build_nvidia_evidence(
        read_vector("nvidia_h100_spdm.report.bin"),
        [c.public_bytes(Encoding.DER) for c in chain],
        CcMode.ON,
    )
    claims = verify_nvidia_report(data, at=VECTOR_AT)
    return data, dict(claims.measurements)


def vector_collateral(
    rims: RimPki, blocks: dict[int, bytes], changes: Mapping[int, bytes] | None = None
) -> bytes:
    # The VBIOS RIM takes RIM indices 0-15, the driver's the rest (blocks 17-64).
    golden = {block - 1: [value] for block, value in blocks.items()}
    golden.update({block - 1: [value] for block, value in (changes or {}).items()})
    vbios = {i: v for i, v in golden.items() if i < 16}
    driver = {i: v for i, v in golden.items() if i >= 16}
    return collateral(
        driver_rim=rim_xml(rims, version="550.90.07", golden=driver),
        vbios_rim=rim_xml(rims, version="96.00.9F.00.01", golden=vbios),
        ocsp=[
            ocsp_response(
                c,
                i,
                k,
                this_update=VECTOR_AT - datetime.timedelta(hours=1),
                next_update=VECTOR_AT + datetime.timedelta(days=1),
            )
            for c, i, k in rims.links()
        ],
    )


@requires_vectors
def test_the_vector_matches_rims_with_its_measurements_then_needs_ocsp(rims: RimPki) -> None:
    data, blocks = vector()
    assert len(blocks) == 64
    # The comparison passes; then the device chain's revocation is asked for, and only NVIDIA's
    # OCSP responder could vouch for its GSP BROM certificate.
    with pytest.raises(
        EvidenceError, match="no OCSP response for certificate 'GH100 A01 GSP BROM'"
    ):
        verify_nvidia_report(
            data,
            at=VECTOR_AT,
            roots=[nvidia_root(), rims.root],
            collateral=vector_collateral(rims, blocks),
        )


@requires_vectors
def test_the_vector_refuses_a_rim_that_differs_at_one_index(rims: RimPki) -> None:
    data, blocks = vector()
    with pytest.raises(EvidenceError) as caught:
        verify_nvidia_report(
            data,
            at=VECTOR_AT,
            roots=[nvidia_root(), rims.root],
            collateral=vector_collateral(rims, blocks, {3: os.urandom(48)}),
        )
    assert caught.value.field == "measurements[3]"
    assert "measurement index 2 (block 3)" in caught.value.reason


@requires_vectors
def test_ocsp_for_the_vectors_chain_from_a_stranger_is_refused(rims: RimPki) -> None:
    data, blocks = vector()
    chain = load_evidence_certificates(read_vector("nvidia_h100_spdm.certchain.pem"))
    forged = []
    for position in range(1, 4):
        fake, key = impostor(chain[position + 1])
        forged.append(ocsp_response(chain[position], chain[position + 1], key, responder=fake))
    whole = json.loads(vector_collateral(rims, blocks))
    whole["ocsp"] += forged
    with pytest.raises(EvidenceError, match="'GH100 A01 GSP BROM' is not signed by its issuer"):
        verify_nvidia_report(
            data,
            at=VECTOR_AT,
            roots=[nvidia_root(), rims.root],
            collateral=json.dumps(whole).encode(),
        )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_mutated_collateral_document_is_refused_by_field_or_verifies(
    gpu: GpuPki, rims: RimPki, data: st.DataObject
) -> None:
    mutated = bytearray(_document(gpu, rims))
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    failure: EvidenceError | None = None
    try:
        claims = verify(gpu, rims, collateral=bytes(mutated))
    except EvidenceError as exc:
        failure = exc
    if failure is None:
        assert claims.tcb_status == "UpToDate"
    else:
        assert (failure.field or "").startswith(("collateral", "measurements")), failure


_DOCUMENTS: dict[tuple[int, int], bytes] = {}


def _document(gpu: GpuPki, rims: RimPki) -> bytes:
    """One signed document per PKI pair (signing is the slow part)."""
    key = (id(gpu), id(rims))
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = document(gpu, rims)
    return _DOCUMENTS[key]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_mutated_rim_is_refused_naming_it(gpu: GpuPki, rims: RimPki, data: st.DataObject) -> None:
    whole = json.loads(_document(gpu, rims))
    text = list(whole["vbios_rim"])
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text) - 1))
        text[position] = data.draw(st.sampled_from('<>&"=/ x0:\n'))
    whole["vbios_rim"] = "".join(text)
    failure: EvidenceError | None = None
    try:
        verify(gpu, rims, collateral=json.dumps(whole).encode())
    except EvidenceError as exc:
        failure = exc
    # A mutation may land where it changes nothing signed (whitespace in base64 text).
    if failure is not None:
        assert failure.field == "collateral.vbios_rim", failure


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_mutated_ocsp_response_is_refused_naming_it(
    gpu: GpuPki, rims: RimPki, data: st.DataObject
) -> None:
    whole = json.loads(_document(gpu, rims))
    which = data.draw(st.integers(0, len(whole["ocsp"]) - 1))
    der = bytearray(base64.b64decode(whole["ocsp"][which]))
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    whole["ocsp"][which] = base64.b64encode(bytes(der)).decode()
    failure: EvidenceError | None = None
    try:
        verify(gpu, rims, collateral=json.dumps(whole).encode())
    except EvidenceError as exc:
        failure = exc
    if failure is not None:
        assert (failure.field or "").startswith("collateral.ocsp"), failure
