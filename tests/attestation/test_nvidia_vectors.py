"""The real H100 SPDM measurement report (nvtrust's sample) verifies to the pinned NVIDIA
Device Identity CA with the nonce and versions its source states, ``Unverified`` without RIMs
and revocation data; stating no CC mode it is refused; every byte of its signed part matters;
every truncation is a typed error."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from geode.attestation import Claims, Evidence, EvidenceVerifier, ReferenceValues, match_claims
from geode.attestation._evidence_certs import load_evidence_certificates
from geode.attestation._nvidia import (
    NVIDIA_ROOT_SHA256,
    CcMode,
    build_nvidia_evidence,
    nvidia_root,
    verify_nvidia_evidence,
    verify_nvidia_report,
)
from geode.errors import ClaimsMismatch, EvidenceError
from tests.attestation.support.vectors import read_vector

AT = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
# The nonce nvtrust's sample was requested with (the request's bytes 4..35).
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
SIGNED = 4117 - 96


def report() -> bytes:
    return read_vector("nvidia_h100_spdm.report.bin")


def chain_pem() -> bytes:
    return read_vector("nvidia_h100_spdm.certchain.pem")


def chain_der() -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in load_evidence_certificates(chain_pem())]


def stated() -> bytes:
    """The sample report with Geode's trailer stating mode on, its chain left to ``certs``."""
    return build_nvidia_evidence(report(), [], CcMode.ON)


def test_the_shipped_root_is_the_pinned_one() -> None:
    der = nvidia_root().public_bytes(Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == NVIDIA_ROOT_SHA256
    assert NVIDIA_ROOT_SHA256.startswith("102bf659")
    assert der == load_evidence_certificates(read_vector("nvidia_device_identity_root.pem"))[
        0
    ].public_bytes(Encoding.DER)


def test_vector_verifies_with_its_claims() -> None:
    verified = verify_nvidia_evidence(stated(), certs=chain_pem(), at=AT, nonce=NONCE)
    claims = verified.claims()
    assert claims.tee == "nvidia"
    assert claims.report_data == NONCE + bytes(32)
    assert len(claims.measurements) == 64
    assert sorted(claims.measurements) == list(range(1, 65))
    assert all(len(value) == 48 for value in claims.measurements.values())
    assert claims.measurements[2].hex().startswith("8048dfd18fe229bf")
    assert claims.details["driver_version"] == "550.90.07"
    assert claims.details["vbios_version"] == "96.00.9F.00.01"
    assert claims.details["project"] == "1010"
    assert claims.details["chip_sku"] == "882"
    assert claims.details["leaf"] == "GH100 A01 GSP FMC LF"
    assert claims.details["cc_mode"] == "on"
    assert claims.platform == "53C22BA15E5D68088282DA074ED9FB37AA585771"
    assert claims.details["fwid"].startswith("f5c384aebb579217")


def test_geode_evidence_with_the_trailer_verifies_and_states_the_mode() -> None:
    evidence = build_nvidia_evidence(report(), chain_der(), CcMode.ON)
    claims = EvidenceVerifier(clock=lambda: AT).verify(Evidence("nvidia", evidence))
    assert claims.details["cc_mode"] == "on"
    assert claims.report_data[:32] == NONCE


def test_the_vector_is_unverified_without_collateral() -> None:
    # Signature, chain and FWID hold, but no RIM and no revocation data were given: nothing
    # says the firmware that signed is one NVIDIA released, so the status claims no more.
    evidence = build_nvidia_evidence(report(), chain_der(), CcMode.ON)
    claims = EvidenceVerifier(clock=lambda: AT).verify(Evidence("nvidia", evidence))
    assert claims.tcb_status == "Unverified"
    assert claims.checked == {"signature", "chain"}
    assert "revocation" not in claims.checked
    verdict = match_claims(claims, ReferenceValues(tee="nvidia", measurements=golden(claims)))
    assert verdict.status == "Unverified"
    assert verdict.checked == {"signature", "chain", "reference"}


def test_the_raw_vector_does_not_state_its_mode_and_is_refused() -> None:
    with pytest.raises(EvidenceError, match="does not state") as caught:
        verify_nvidia_report(report(), certs=chain_pem(), at=AT)
    assert caught.value.field == "cc_mode"
    assert caught.value.offset == len(report())


@pytest.mark.parametrize(("mode", "message"), [(CcMode.OFF, "off"), (CcMode.DEVTOOLS, "devtools")])
def test_cc_off_and_devtools_are_refused(mode: CcMode, message: str) -> None:
    evidence = build_nvidia_evidence(report(), chain_der(), mode)
    with pytest.raises(EvidenceError, match=message):
        verify_nvidia_report(evidence, at=AT)


def golden(claims: Claims) -> dict[int, list[str]]:
    return {index: [value.hex()] for index, value in claims.measurements.items() if any(value)}


def test_golden_measurements_from_the_package() -> None:
    claims = verify_nvidia_report(stated(), certs=chain_pem(), at=AT)
    golden = {index: [value.hex()] for index, value in claims.measurements.items() if any(value)}
    match_claims(claims, ReferenceValues(tee="nvidia", measurements=golden))
    wrong = dict(golden)
    wrong[2] = ["00" * 48, "11" * 48]
    with pytest.raises(ClaimsMismatch, match="index 2"):
        match_claims(claims, ReferenceValues(tee="nvidia", measurements=wrong))
    with pytest.raises(ClaimsMismatch, match="index 65 missing"):
        match_claims(claims, ReferenceValues(tee="nvidia", measurements={65: ["00" * 48]}))


def test_another_nonce_is_refused() -> None:
    with pytest.raises(EvidenceError, match="another nonce"):
        verify_nvidia_evidence(stated(), certs=chain_pem(), at=AT, nonce=bytes(32))


def test_every_byte_of_the_signed_part_matters() -> None:
    data, certs = stated(), chain_pem()
    for offset in range(SIGNED):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        with pytest.raises(EvidenceError):
            verify_nvidia_report(bytes(changed), certs=certs, at=AT)


def test_every_byte_of_the_signature_matters() -> None:
    data, certs = stated(), chain_pem()
    for offset in range(SIGNED, len(report())):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        with pytest.raises(EvidenceError, match="signature"):
            verify_nvidia_report(bytes(changed), certs=certs, at=AT)


def test_every_truncation_is_a_typed_error() -> None:
    data, certs = report(), chain_pem()
    for length in range(len(data)):
        with pytest.raises(EvidenceError) as caught:
            verify_nvidia_report(data[:length], certs=certs, at=AT)
        assert caught.value.field is not None
        assert caught.value.offset is not None


def test_trailer_truncations_are_typed_errors() -> None:
    evidence = build_nvidia_evidence(report(), chain_der(), CcMode.ON)
    for length in range(len(report()) + 1, len(evidence), 53):
        with pytest.raises(EvidenceError):
            verify_nvidia_report(evidence[:length], at=AT)


def test_without_a_chain_it_is_refused() -> None:
    with pytest.raises(EvidenceError, match="no certificate chain"):
        verify_nvidia_report(stated(), at=AT)


def test_a_chain_missing_its_middle_is_refused() -> None:
    certs = load_evidence_certificates(chain_pem())
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (certs[0], certs[2], certs[4]))
    with pytest.raises(EvidenceError, match="not issued by"):
        verify_nvidia_report(stated(), certs=pem, at=AT)


def test_the_chain_without_its_root_still_ends_at_the_pinned_root() -> None:
    certs = load_evidence_certificates(chain_pem())
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs[:4])
    verify_nvidia_report(stated(), certs=pem, at=AT)


def test_collateral_that_is_not_the_document_is_refused() -> None:
    with pytest.raises(EvidenceError, match="not JSON") as caught:
        verify_nvidia_report(stated(), certs=chain_pem(), collateral=b"x", at=AT)
    assert caught.value.field == "collateral"
