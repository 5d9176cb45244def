"""A GPU report under a test device PKI and its collateral document (RIMs and OCSP responses)
under a test RIM PKI: what the NVIDIA collateral tests share."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pytest

from geode.attestation import Claims
from geode.attestation._nvidia import CcMode, build_nvidia_evidence, verify_nvidia_report
from geode.errors import EvidenceError
from tests.attestation.support.nvidia import AT, GpuPki, forge_spdm, tlv
from tests.attestation.support.nvidia_rim import RimPki, collateral, ocsp_response, rim_xml

NONCE = os.urandom(32)
DRIVER = "570.1"
VBIOS = "96.00.9F.00.01"
VBIOS_OPAQUE = bytes([0x00, 0x9F, 0x00, 0x96, 0x01])  # read as bytes 3, 2, 1, 0, 4
MEASUREMENTS = {block: os.urandom(48) for block in range(1, 9)}
# RIM index i is the report's block i + 1: the VBIOS RIM covers blocks 1-4, the driver's 5-8.
VBIOS_GOLDEN = {i: [MEASUREMENTS[i + 1]] for i in range(4)}
DRIVER_GOLDEN = {i: [MEASUREMENTS[i + 1]] for i in range(4, 8)}


def evidence(gpu: GpuPki, *, mode: CcMode | None = CcMode.ON) -> bytes:
    opaque = tlv(3, DRIVER.encode() + b"\0") + tlv(6, VBIOS_OPAQUE) + tlv(20, gpu.fwid)
    report = forge_spdm(gpu.leaf_key, nonce=NONCE, measurements=MEASUREMENTS, opaque=opaque)
    return report if mode is None else build_nvidia_evidence(report, gpu.chain_der(), mode)


def all_ocsp(gpu: GpuPki, rims: RimPki, **changes: object) -> list[str]:
    """Good responses for the GPU's ICA and both RIM chains (the same PKI signs both RIMs)."""
    responses = [ocsp_response(gpu.ica, gpu.root, gpu.root_key)]
    responses += [ocsp_response(c, i, k) for c, i, k in rims.links()]
    return responses


def document(
    gpu: GpuPki,
    rims: RimPki,
    *,
    driver: Mapping[int, Sequence[bytes]] = DRIVER_GOLDEN,
    vbios: Mapping[int, Sequence[bytes]] = VBIOS_GOLDEN,
    responses: list[str] | None = None,
    **fields: object,
) -> bytes:
    values: dict[str, object] = {
        "driver_rim": rim_xml(rims, version=DRIVER, golden=driver, inactive=[20, 21]),
        "vbios_rim": rim_xml(rims, version=VBIOS, golden=vbios, inactive=[30]),
        "ocsp": responses if responses is not None else all_ocsp(gpu, rims),
    }
    values.update(fields)
    return collateral(**{k: v for k, v in values.items() if v is not None})


def verify(gpu: GpuPki, rims: RimPki, data: bytes | None = None, **kwargs: object) -> Claims:
    return verify_nvidia_report(
        data if data is not None else evidence(gpu),
        at=AT,
        roots=[gpu.root, rims.root],
        **kwargs,  # type: ignore[arg-type]
    )


def refused(gpu: GpuPki, rims: RimPki, collateral_bytes: bytes, **kwargs: object) -> EvidenceError:
    with pytest.raises(EvidenceError) as caught:
        verify(gpu, rims, collateral=collateral_bytes, **kwargs)
    return caught.value
