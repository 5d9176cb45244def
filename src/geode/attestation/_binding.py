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
"""

from __future__ import annotations

from geode.attestation._evidence import Evidence

__all__ = ["BINDING_KINDS", "bundle_binding", "check_bundle_binding", "reported_binding"]

# The evidence kinds that carry a launch-time binding, and the field that holds it.
BINDING_KINDS = {"sev-snp": "host_data", "tdx": "mrconfigid"}


def bundle_binding(measurement: bytes, kind: str) -> bytes:
    """The value of ``kind``'s binding field for a bundle of ``measurement`` (32 bytes)."""
    raise NotImplementedError


def reported_binding(evidence: Evidence) -> bytes:
    """The binding field of ``evidence`` as read (not verified: the Coordinator verifies it);
    ``EvidenceError`` naming the field for evidence too short or of a kind without one."""
    raise NotImplementedError


def check_bundle_binding(evidence: Evidence, measurement: bytes) -> None:
    """``LaunchError`` unless ``evidence`` binds a bundle of ``measurement``; the message gives
    both values in hex (neither is secret)."""
    raise NotImplementedError
