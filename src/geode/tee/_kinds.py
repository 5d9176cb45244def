"""The TEE kinds and what each takes: the table a new kind is added to (see ``geode.tee``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["CHECKS", "HARDWARE_KINDS", "TEE_KINDS", "Check", "TcbStatus", "TeeKind", "TeeSpec"]

TeeKind = Literal["simulated", "sgx", "tdx", "sev-snp", "nvidia"]

TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "Unverified",
]

# What a verdict says was checked, one vocabulary for every kind (``Claims.checked``, ``Verdict``):
# - ``signature``: the evidence is signed by the key its chain (or the simulated platform) names;
# - ``chain``: that key's certificate chain reaches a pinned vendor root, valid at the time given;
# - ``revocation``: no certificate of the chain is revoked, by the vendor's CRLs or OCSP answers;
# - ``tcb``: the platform's TCB level was judged against the vendor's signed collateral (Intel TCB
#   info and QE identity; AMD CRLs with the package's minimum TCB; NVIDIA RIMs);
# - ``reference``: the measurements were compared with reference values (a package, a policy entry,
#   NVIDIA's reference integrity manifests).
Check = Literal["signature", "chain", "revocation", "tcb", "reference"]
CHECKS: tuple[Check, ...] = get_args(Check)


@dataclass(frozen=True)
class TeeSpec:
    """What Geode knows of one TEE kind.

    ``fields`` are the reference fields a package of this kind may set besides ``tee`` and
    ``debug``; ``identity`` the fields of which a manifest package must name at least one (what
    pins the code); ``measurement_bytes`` the size of its ``measurement``, when it takes one.
    ``gpu`` kinds attest a device, not a service: their reports bind the requester's nonce, not
    a service's key, so no service may be bound to such a package. The one kind that is not
    ``hardware`` is simulation: signed by a platform key, accepted only where it is enabled.
    """

    name: TeeKind
    fields: frozenset[str]
    identity: tuple[str, ...]
    measurement_bytes: int | None = None
    gpu: bool = False
    hardware: bool = True

    @property
    def checks_tcb_status(self) -> bool:
        """Whether evidence of this kind carries a TCB status that packages accept or refuse."""
        return "accepted_tcb_statuses" in self.fields


def _fields(names: str) -> frozenset[str]:
    return frozenset(names.split())


TEE_KINDS: Final[Mapping[TeeKind, TeeSpec]] = {
    "simulated": TeeSpec(
        "simulated",
        _fields("measurement signer product_id min_svn"),
        identity=("measurement", "signer"),
        measurement_bytes=32,
        hardware=False,
    ),
    "sgx": TeeSpec(
        "sgx",
        _fields("measurement signer product_id min_svn accepted_tcb_statuses accepted_advisories"),
        identity=("measurement", "signer"),
        measurement_bytes=32,
    ),
    "tdx": TeeSpec(
        "tdx",
        _fields(
            "mrtd rtmr0 rtmr1 rtmr2 rtmr3 mrconfigid sept_ve_disable accepted_tcb_statuses "
            "accepted_advisories"
        ),
        identity=("mrtd",),
    ),
    "sev-snp": TeeSpec(
        "sev-snp",
        _fields("measurement host_data min_tcb vmpl migrate_ma"),
        identity=("measurement",),
        measurement_bytes=48,
    ),
    "nvidia": TeeSpec("nvidia", _fields("measurements"), identity=("measurements",), gpu=True),
}
if tuple(TEE_KINDS) != get_args(TeeKind) or any(k != s.name for k, s in TEE_KINDS.items()):
    raise AssertionError("TeeKind and TEE_KINDS must name the same kinds, in the same order")

HARDWARE_KINDS: Final[tuple[TeeKind, ...]] = tuple(k for k, s in TEE_KINDS.items() if s.hardware)
