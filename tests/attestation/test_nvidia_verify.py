"""NVIDIA SPDM verification under a test root: each parsing and policy refusal, reached with
synthetic reports; garbage is always a typed error."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.attestation._nvidia import (
    NVIDIA_TRAILER_MAGIC,
    CcMode,
    build_nvidia_evidence,
    parse_spdm_report,
    verify_nvidia_evidence,
    verify_nvidia_report,
)
from geode.errors import EvidenceError
from tests.attestation.support.nvidia import AT, GpuPki, block, forge_spdm, tlv

NONCE = os.urandom(32)
GOLDEN = {1: b"\x01" * 48, 2: b"\x02" * 48}


@pytest.fixture(scope="module")
def gpu() -> GpuPki:
    return GpuPki.create()


def evidence(gpu: GpuPki, *, mode: CcMode = CcMode.ON, **spdm: object) -> bytes:
    fields: dict[str, object] = {
        "nonce": NONCE,
        "measurements": GOLDEN,
        "opaque": tlv(3, b"570.1\0") + tlv(20, gpu.fwid),
        **spdm,
    }
    report = forge_spdm(gpu.leaf_key, **fields)  # type: ignore[arg-type]
    return build_nvidia_evidence(report, gpu.chain_der(), mode)


def verify(gpu: GpuPki, data: bytes, **kwargs: object) -> object:
    return verify_nvidia_evidence(data, at=AT, roots=[gpu.root], **kwargs)  # type: ignore[arg-type]


def test_synthetic_report_verifies_unverified_without_collateral(gpu: GpuPki) -> None:
    claims = verify_nvidia_report(evidence(gpu), at=AT, roots=[gpu.root])
    assert dict(claims.measurements) == GOLDEN
    assert claims.report_data == NONCE + bytes(32)
    assert claims.details["driver_version"] == "570.1"
    assert claims.details["cc_mode"] == "on"
    assert claims.tcb_status == "Unverified"
    assert claims.checked == {"signature", "chain"}
    assert "revocation" not in claims.checked


def test_certs_stand_in_for_the_trailers_chain(gpu: GpuPki) -> None:
    report = forge_spdm(gpu.leaf_key, nonce=NONCE, measurements=GOLDEN)
    no_chain = build_nvidia_evidence(report, [], CcMode.ON)
    verify_nvidia_report(no_chain, certs=gpu.chain_pem(), at=AT, roots=[gpu.root])
    # A chain that stops below the root is completed from the trusted root.
    short = build_nvidia_evidence(report, gpu.chain_der(with_root=False), CcMode.ON)
    verify_nvidia_report(short, at=AT, roots=[gpu.root])


def test_a_report_that_does_not_state_its_mode_is_refused(gpu: GpuPki) -> None:
    # A raw report (no Geode trailer) verifies in every other respect, but says nothing of the
    # GPU's confidential-computing mode.
    report = forge_spdm(gpu.leaf_key, nonce=NONCE, measurements=GOLDEN)
    with pytest.raises(EvidenceError, match="does not state") as caught:
        verify_nvidia_report(report, certs=gpu.chain_pem(), at=AT, roots=[gpu.root])
    assert caught.value.field == "cc_mode"
    assert caught.value.offset == len(report)


@pytest.mark.parametrize(("mode", "message"), [(CcMode.OFF, "off"), (CcMode.DEVTOOLS, "devtools")])
def test_modes_other_than_on_are_refused(gpu: GpuPki, mode: CcMode, message: str) -> None:
    with pytest.raises(EvidenceError, match=message) as caught:
        verify_nvidia_report(evidence(gpu, mode=mode), at=AT, roots=[gpu.root])
    assert caught.value.field == "cc_mode"


def test_the_pinned_root_refuses_a_test_chain(gpu: GpuPki) -> None:
    with pytest.raises(EvidenceError, match="does not end at the pinned NVIDIA root"):
        verify_nvidia_report(evidence(gpu), at=AT)


def test_another_root_of_the_same_name_is_refused(gpu: GpuPki) -> None:
    other = GpuPki.create()
    with pytest.raises(EvidenceError, match="not issued by"):
        verify_nvidia_report(evidence(gpu), at=AT, roots=[other.root])


def test_a_leaf_signing_as_a_ca_is_refused() -> None:
    # The chain must be CAs above the leaf: a leaf presented as the issuer of another is not.
    pki = GpuPki.create()
    report = forge_spdm(pki.leaf_key, nonce=NONCE, measurements=GOLDEN)
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = [pki.leaf.public_bytes(Encoding.DER), *pki.chain_der()]
    with pytest.raises(EvidenceError, match="not a CA certificate"):
        verify_nvidia_report(
            build_nvidia_evidence(report, chain, CcMode.ON), at=AT, roots=[pki.root]
        )


def test_only_the_root_is_not_a_chain(gpu: GpuPki) -> None:
    report = forge_spdm(gpu.leaf_key, nonce=NONCE, measurements=GOLDEN)
    with pytest.raises(EvidenceError, match="only the root"):
        verify_nvidia_report(
            build_nvidia_evidence(report, gpu.chain_der()[2:], CcMode.ON), at=AT, roots=[gpu.root]
        )


def test_signed_by_another_key_is_refused(gpu: GpuPki) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    report = forge_spdm(other, nonce=NONCE, measurements=GOLDEN)
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_nvidia_report(
            build_nvidia_evidence(report, gpu.chain_der(), CcMode.ON), at=AT, roots=[gpu.root]
        )


def test_a_fwid_other_than_the_leafs_is_refused(gpu: GpuPki) -> None:
    with pytest.raises(EvidenceError, match="FWID"):
        verify(gpu, evidence(gpu, opaque=tlv(20, os.urandom(48))))


@pytest.mark.parametrize(
    ("spdm", "field"),
    [
        ({"request": b"\x12\xe0\x01\xff" + NONCE + b"\x00"}, "request.version"),
        ({"request": b"\x11\xe1\x01\xff" + NONCE + b"\x00"}, "request.code"),
        ({"request": b"\x11\xe0\x00\xff" + NONCE + b"\x00"}, "request.param1"),
        ({"request": b"\x11\xe0\x01\x01" + NONCE + b"\x00"}, "request.param2"),
        ({"response_head": b"\x12\x60\x00\x00"}, "response.version"),
        ({"response_head": b"\x11\x61\x00\x00"}, "response.code"),
        ({"response_head": b"\x11\x60\x00\x03"}, "response.param2"),
        ({"block_count": 3}, "measurement_block[2]"),
        ({"block_count": 1}, "measurement_record"),
        ({"blocks": block(1, b"a") + block(1, b"b")}, "measurement_block[1].index"),
        (
            {"blocks": block(1, b"a", spec=2), "block_count": 1},
            "measurement_block[0].specification",
        ),
        (
            {"blocks": b"\x01\x01\x09\x00\x01\x05\x00abcdef", "block_count": 1},
            "measurement_block[0].value_size",
        ),
        (
            {"blocks": b"\x01\x01\x40\x00\x01\x3d\x00", "block_count": 1},
            "measurement_block[0].size",
        ),
        ({"opaque": b"\x03\x00\x09\x00abc"}, "opaque[3]"),
    ],
)
def test_structural_refusals_name_the_field(
    gpu: GpuPki, spdm: dict[str, object], field: str
) -> None:
    with pytest.raises(EvidenceError) as caught:
        verify(gpu, evidence(gpu, **spdm))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("trailer", "field"),
    [
        (b"GEODENV2" + bytes(8), "trailer.magic"),
        (NVIDIA_TRAILER_MAGIC + b"\x07\x00\x00\x00" + bytes(4), "trailer.cc_mode"),
        (NVIDIA_TRAILER_MAGIC + b"\x01\x00\x01\x00" + bytes(4), "trailer.reserved"),
        (NVIDIA_TRAILER_MAGIC + b"\x01\x00\x00\x00" + (9).to_bytes(4, "little"), "trailer.chain"),
        (NVIDIA_TRAILER_MAGIC + b"\x01\x00\x00\x00" + bytes(4) + b"x", "trailer"),
    ],
)
def test_trailer_refusals(gpu: GpuPki, trailer: bytes, field: str) -> None:
    report = forge_spdm(gpu.leaf_key, nonce=NONCE, measurements=GOLDEN)
    with pytest.raises(EvidenceError) as caught:
        verify(gpu, report + trailer)
    assert caught.value.field == field


def test_parse_reports_where_the_trailer_starts(gpu: GpuPki) -> None:
    data = evidence(gpu)
    parsed = parse_spdm_report(data)
    assert data[parsed.trailer_offset :].startswith(NVIDIA_TRAILER_MAGIC)
    assert parsed.nonce == NONCE


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=2000))
def test_garbage_is_a_typed_error(garbage: bytes) -> None:
    for data in (garbage, b"\x11\xe0\x01\xff" + garbage):
        with pytest.raises(EvidenceError) as caught:
            verify_nvidia_report(data, at=AT, roots=[_GPU.root])
        assert caught.value.field is not None


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_evidence_is_a_typed_error_or_verifies(data: st.DataObject) -> None:
    mutated = bytearray(_EVIDENCE)
    for _ in range(data.draw(st.integers(1, 6))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    failure: EvidenceError | None = None
    try:
        verify_nvidia_report(bytes(mutated[:cut]), at=AT, roots=[_GPU.root])
    except EvidenceError as exc:
        failure = exc
    assert failure is None or failure.field is not None


_GPU = GpuPki.create()
_EVIDENCE = evidence(_GPU)
