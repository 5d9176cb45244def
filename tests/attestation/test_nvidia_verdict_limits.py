"""What an NVIDIA verdict rests on, and the collateral a prover could bend: several OCSP responses
for one certificate (a revoked one refuses; the freshest good one decides), a RIM signed by a
certificate that is not a RIM signer, and the reasons every verdict carries (``UpToDate`` means
"matches signed, non-revoked RIMs for these versions"; the CC mode is the guest's word)."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from geode.attestation import match_claims
from geode.tee import ReferenceValues
from tests.attestation.support.nvidia import AT, GpuPki
from tests.attestation.support.nvidia_collateral import (
    DRIVER,
    DRIVER_GOLDEN,
    VBIOS,
    all_ocsp,
    document,
    refused,
    verify,
)
from tests.attestation.support.nvidia_rim import (
    RimPki,
    impostor,
    issue,
    ocsp_response,
    rim_xml,
)

HAVE_SIGNXML = importlib.util.find_spec("signxml") is not None
pytestmark = pytest.mark.skipif(
    not HAVE_SIGNXML and os.environ.get("CI") != "true",
    reason="signxml (geode[nvidia]) is not installed",
)

CC_MODE = "cc_mode on: as the guest's driver states it, not signed by the GPU"


@pytest.fixture(scope="module")
def gpu() -> GpuPki:
    return GpuPki.create()


@pytest.fixture(scope="module")
def rims() -> RimPki:
    return RimPki.create()


def ica_response(gpu: GpuPki, hours_ago: float, **changes: object) -> str:
    this_update = AT - datetime.timedelta(hours=hours_ago)
    return ocsp_response(
        gpu.ica,
        gpu.root,
        gpu.root_key,
        this_update=this_update,
        next_update=this_update + datetime.timedelta(days=2),
        **changes,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("revoked_first", [False, True])
def test_a_revoked_response_refuses_next_to_a_good_one(
    gpu: GpuPki, rims: RimPki, revoked_first: bool
) -> None:
    # A prover can pass an older good response, still inside its nextUpdate, next to the newer
    # one that says revoked: any revoked answer refuses, in whatever order.
    good = ica_response(gpu, 30)
    revoked = ica_response(gpu, 1, status=ocsp.OCSPCertStatus.REVOKED)
    pair = [revoked, good] if revoked_first else [good, revoked]
    error = refused(gpu, rims, document(gpu, rims, responses=pair + all_ocsp(gpu, rims)[1:]))
    assert error.field == "collateral.ocsp"
    assert "certificate 'Test GPU ICA' is revoked (OCSP, keyCompromise)" in error.reason


def test_the_freshest_good_response_is_the_one_used(gpu: GpuPki, rims: RimPki) -> None:
    stale = ica_response(gpu, 72)  # nextUpdate 24 hours before AT
    fresh = ica_response(gpu, 1)
    claims = verify(
        gpu,
        rims,
        collateral=document(gpu, rims, responses=[stale, fresh, *all_ocsp(gpu, rims)[1:]]),
    )
    assert "revocation" in claims.checked
    # The freshest one decides: a newer response that is not current refuses, an older current
    # one does not make up for it.
    future = ica_response(gpu, -3)
    error = refused(
        gpu, rims, document(gpu, rims, responses=[fresh, future, *all_ocsp(gpu, rims)[1:]])
    )
    assert "the OCSP response for 'Test GPU ICA' is not current" in error.reason
    unknown = ica_response(gpu, 0.5, status=ocsp.OCSPCertStatus.UNKNOWN)
    error = refused(
        gpu, rims, document(gpu, rims, responses=[fresh, unknown, *all_ocsp(gpu, rims)[1:]])
    )
    assert "status of certificate 'Test GPU ICA' is unknown" in error.reason


def test_every_response_for_a_certificate_must_be_signed(gpu: GpuPki, rims: RimPki) -> None:
    fake, key = impostor(gpu.root)
    forged = ocsp_response(gpu.ica, gpu.root, key, responder=fake, carry_responder=False)
    responses = [ica_response(gpu, 1), forged, *all_ocsp(gpu, rims)[1:]]
    error = refused(gpu, rims, document(gpu, rims, responses=responses))
    assert "not signed by its issuer or a delegated responder" in error.reason


def test_a_rim_signed_by_a_ca_certificate_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    # The intermediate chains to the RIM root and OCSP vouches for it, but it is a CA: it does
    # not sign RIMs.
    as_ca = dataclasses.replace(rims, leaf=rims.ica, leaf_key=rims.ica_key)
    text = rim_xml(as_ca, version=DRIVER, golden=DRIVER_GOLDEN, chain=[rims.ica, rims.root])
    error = refused(gpu, rims, document(gpu, rims, driver_rim=text))
    assert error.field == "collateral.driver_rim"
    assert error.reason == (
        "the driver RIM is signed by 'Test Reference Value CA', a CA certificate, not a RIM signer"
    )


def test_a_rim_signer_without_digital_signature_usage_is_refused(gpu: GpuPki, rims: RimPki) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = issue("Test RIM Signer", key, rims.ica, rims.ica_key, ca=False, signing_usage=False)
    bare = dataclasses.replace(rims, leaf=leaf, leaf_key=key)
    text = rim_xml(bare, version=DRIVER, golden=DRIVER_GOLDEN, chain=[leaf, rims.ica, rims.root])
    responses = [*all_ocsp(gpu, rims), ocsp_response(leaf, rims.ica, rims.ica_key)]
    error = refused(gpu, rims, document(gpu, rims, driver_rim=text, responses=responses))
    assert error.reason == (
        "the driver RIM's signer 'Test RIM Signer' has no digitalSignature key usage"
    )


def test_the_reasons_say_what_up_to_date_and_the_mode_rest_on(gpu: GpuPki, rims: RimPki) -> None:
    claims = verify(gpu, rims, collateral=document(gpu, rims))
    up_to_date = (
        f"UpToDate: the measurements match signed, non-revoked NVIDIA RIMs for driver {DRIVER}, "
        f"vbios {VBIOS} (not: the newest driver or VBIOS)"
    )
    assert claims.tcb_reasons == (up_to_date, CC_MODE)
    verdict = match_claims(claims, ReferenceValues(tee="nvidia"))
    assert (verdict.status, verdict.reasons) == ("UpToDate", (up_to_date, CC_MODE))
    bare = verify(gpu, rims)
    assert bare.tcb_reasons == (CC_MODE,)
