"""Binding a service's bundle to a confidential VM: SEV-SNP ``HOST_DATA``, TDX ``MRCONFIGID``.

A confidential VM that runs one service is launched with the bundle's measurement
(``measure_bundle``, SHA-256) in a field the guest cannot change and every report carries, as
confidential containers do with the digest of their init data:

- SEV-SNP: ``HOST_DATA`` (32 bytes), the measurement itself;
- TDX: ``MRCONFIGID`` (48 bytes), the measurement followed by 16 zero bytes.

The manifest pins the value (the package's ``host_data`` or ``mrconfigid``: ``geode measure
bundle --binding``), and ``geode run`` in the VM refuses to start a bundle whose measurement is
not the one the hardware reports (``check_bundle_binding``). Both are needed: the Coordinator
knows the VM was launched for that bundle, and the launcher makes sure it is that bundle that runs.

``reported_binding`` reads the field with the report and quote parsers (``_snp_report``,
``_intel_quote``) and verifies nothing: the launcher asks its own hardware, and what it reads is
compared, not trusted; the Coordinator verifies the same evidence at activation.
"""

from __future__ import annotations

from geode.attestation._evidence import Evidence
from geode.attestation._intel_quote import parse_intel_quote, parse_td_report
from geode.attestation._snp_report import parse_snp_report
from geode.errors import EvidenceError, LaunchError

__all__ = ["BINDING_KINDS", "bundle_binding", "check_bundle_binding", "reported_binding"]

# The evidence kinds that carry a launch-time binding, and the field that holds it.
BINDING_KINDS = {"sev-snp": "host_data", "tdx": "mrconfigid"}
# The field's size per kind: the measurement is zero-padded to it.
_BINDING_SIZES = {"sev-snp": 32, "tdx": 48}
_BINDING_NAMES = {"sev-snp": "HOST_DATA", "tdx": "MRCONFIGID"}
MEASUREMENT_SIZE = 32  # SHA-256: measure_bundle


def _field(kind: str) -> str:
    field = BINDING_KINDS.get(kind)
    if field is None:
        raise EvidenceError(
            f"{kind} evidence carries no bundle binding (sev-snp: host_data, tdx: mrconfigid)",
            field="kind",
        )
    return field


def bundle_binding(measurement: bytes, kind: str) -> bytes:
    """The value of ``kind``'s binding field for a bundle of ``measurement`` (32 bytes)."""
    _field(kind)
    if len(measurement) != MEASUREMENT_SIZE:
        raise ValueError(
            f"a bundle measurement is {MEASUREMENT_SIZE} bytes, not {len(measurement)}"
        )
    return measurement + bytes(_BINDING_SIZES[kind] - MEASUREMENT_SIZE)


def reported_binding(evidence: Evidence) -> bytes:
    """The binding field of ``evidence`` as read (not verified: the Coordinator verifies it);
    ``EvidenceError`` naming the field for evidence too short or of a kind without one."""
    _field(evidence.kind)
    if evidence.kind == "sev-snp":
        return parse_snp_report(evidence.data).host_data
    quote = parse_intel_quote(evidence.data)
    if not quote.is_tdx:
        raise EvidenceError(
            f"an SGX quote (TEE type {quote.tee_type:#x}) given as TDX evidence",
            field="header.tee_type",
            offset=4,
        )
    return parse_td_report(quote.body, base=quote.body_offset).mrconfigid


def check_bundle_binding(evidence: Evidence, measurement: bytes) -> None:
    """``LaunchError`` unless ``evidence`` binds a bundle of ``measurement``; the message gives
    both values in hex (neither is secret)."""
    expected = bundle_binding(measurement, evidence.kind)
    reported = reported_binding(evidence)
    if reported == expected:
        return
    name = _BINDING_NAMES[evidence.kind]
    unbound = " (the VM was launched without a binding)" if not any(reported) else ""
    raise LaunchError(
        f"the bundle is not the one this VM was launched for: {name} is "
        f"{reported.hex()}{unbound}, the bundle (measurement {measurement.hex()}) needs "
        f"{expected.hex()}"
    )
