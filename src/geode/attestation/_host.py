"""The TEE this process runs in, as the Coordinator sees it: evidence and a sealing key.

A service gets evidence from a quote provider (``_providers``); the Coordinator needs more of
its TEE: evidence for its deployment statement, recovery offers and cluster-key handovers, and
a key to seal its state that only the same code on the same platform can derive again.
``probe_host`` finds that TEE through the providers' interfaces and says, for every interface
it looked at, why it is not usable when none is:

=============== ================================= =========== ================================
``--tee``       evidence interface                kind        sealing key
=============== ================================= =========== ================================
``sev-snp``     configfs-tsm (``sev_guest``) or   ``sev-snp`` ``SNP_GET_DERIVED_KEY`` through
                ``/dev/sev-guest``                            ``/dev/sev-guest``
``tdx``         configfs-tsm (``tdx_guest``)      ``tdx``     none: TDX has no sealing key
``sgx-gramine`` Gramine's ``/dev/attestation``    ``sgx``     ``/dev/attestation/keys/_sgx_mr*``
=============== ================================= =========== ================================

``auto`` takes the first usable one in that order (Gramine first: inside an enclave the other
paths are the host's). The paths, file operations and ioctls are injectable (``HostPaths``,
``DeviceFiles``, an ``Ioctl``), which is how tests drive every TEE against fakes; nothing here
reads an environment variable or a flag that could point it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from geode.attestation._evidence import Evidence
from geode.attestation._providers import DeviceFiles
from geode.tee import TeeKind

__all__ = [
    "TEE_CHOICES",
    "HostPaths",
    "HostTee",
    "Ioctl",
    "Probe",
    "SgxSealing",
    "probe_host",
]

# ``geode coordinator --tee``: a host TEE, ``auto`` (the first usable one) or ``simulated``.
TEE_CHOICES = ("auto", "sev-snp", "tdx", "sgx-gramine", "simulated")
SgxSealing = Literal["mrenclave", "mrsigner"]
# ``ioctl(fd, request, buffer) -> int`` as ``fcntl.ioctl`` does it with a mutable buffer.
Ioctl = Callable[[int, int, bytearray], int]


@dataclass(frozen=True)
class HostPaths:
    """Where the TEE interfaces live; tests point these into a temporary directory."""

    tsm_root: Path = Path("/sys/kernel/config/tsm/report")
    sev_guest: Path = Path("/dev/sev-guest")
    tdx_guest: Path = Path("/dev/tdx_guest")
    gramine_root: Path = Path("/dev/attestation")


@dataclass(frozen=True)
class Probe:
    """One interface looked at, and why it is (not) usable."""

    interface: str
    path: Path
    usable: bool
    reason: str


class HostTee(Protocol):
    """The TEE the Coordinator runs in."""

    # The kind of evidence it gives: "sev-snp", "tdx" or "sgx".
    kind: TeeKind
    # Which interface, for logs and status: e.g. "sev-snp via /dev/sev-guest".
    name: str
    # How ``sealing_key`` is derived, for status and docs, or "none" (TDX).
    sealing: str

    def evidence(self, report_data: bytes) -> Evidence:
        """Evidence whose report data is ``report_data`` (64 bytes), with the certificates a
        verifier needs when the interface gives them (SNP: the certificate table)."""
        ...

    def sealing_key(self) -> bytes | None:
        """32 bytes that only the same code on the same platform derives again; ``None`` when
        the TEE has none (TDX)."""
        ...


def probe_host(
    choice: str = "auto",
    *,
    paths: HostPaths | None = None,
    files: DeviceFiles | None = None,
    ioctl: Ioctl | None = None,
    sgx_sealing: SgxSealing = "mrenclave",
) -> HostTee:
    """The host TEE ``choice`` names (``auto``: the first usable one); ``NoTeeError`` listing
    every interface probed and why it is not usable when there is none."""
    raise NotImplementedError("probe_host lands with the host TEE interfaces")
