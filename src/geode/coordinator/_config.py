"""The Coordinator's configuration, as ``geode coordinator`` gives it, and what of it cannot run."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geode.attestation import TEE_CHOICES, SgxSealing
from geode.coordinator._etcd import EtcdSettings
from geode.coordinator._limits import ConnectionLimits
from geode.coordinator._validation import DEFAULT_MANIFEST_BUDGET, ManifestBudget
from geode.errors import GeodeError

__all__ = ["SIMULATION_ONLY", "CoordinatorConfig"]

# The options that make sense only with a simulated platform (``--platform-key``,
# ``--sealing-key``, ``--trust-platform-key``, ``--trust-coordinator-platform-key``).
SIMULATION_ONLY = (
    "--platform-key, --sealing-key, --trust-platform-key and --trust-coordinator-platform-key"
)


@dataclass(frozen=True)
class CoordinatorConfig:
    data_dir: Path
    client_addr: tuple[str, int] = ("127.0.0.1", 4433)
    mesh_addr: tuple[str, int] = ("127.0.0.1", 2001)
    # The TEE to run in (``geode.attestation.TEE_CHOICES``): ``auto`` is the first usable one of
    # the host, ``simulated`` a simulated platform key; ``simulation=True`` is ``simulated``.
    tee: str = "auto"
    simulation: bool = False
    # SGX under Gramine: seal with the enclave's own key, or with its signer's (updatable code).
    sgx_sealing: SgxSealing = "mrenclave"
    # Simulation only (refused on hardware): the sealing key file and the platform keys.
    sealing_key: Path | None = None
    platform_key: Path | None = None
    # Simulated platform keys trusted for services' evidence only (``--trust-platform-key``).
    trusted_platform_keys: Sequence[Path] = ()
    # ...and for peer Coordinators' evidence, which earns the cluster key
    # (``--trust-coordinator-platform-key``); this Coordinator's own platform key is trusted
    # for both. The lists are separate: see ``geode.coordinator._cluster``.
    coordinator_platform_keys: Sequence[Path] = ()
    collateral: Mapping[str, Path] = field(default_factory=dict)  # evidence kind: its file
    san: Sequence[str] = ()
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    log_level: str = "info"
    etcd: EtcdSettings | None = None  # the etcd store; None: the state in ``data_dir``
    # Where peer Coordinators reach this one's mesh API (etcd store); None: ``mesh_addr``.
    advertise_addr: tuple[str, int] | None = None
    # How often a Coordinator on etcd checks whether another one saved (reads catch up).
    etcd_poll: datetime.timedelta = datetime.timedelta(seconds=1)
    # Connections and request heads on both APIs (``_limits``).
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # What validating a manifest or update someone sent may cost (``_validation``).
    manifest_budget: ManifestBudget = DEFAULT_MANIFEST_BUDGET

    @property
    def simulated(self) -> bool:
        """Whether it runs on a simulated platform (``--simulation`` or ``--tee simulated``)."""
        return self.simulation or self.tee == "simulated"

    def check(self) -> None:
        """``GeodeError`` for a combination that cannot run: an unknown TEE, ``simulation``
        with a hardware TEE, or simulated platform keys given to a hardware Coordinator (a
        host could sign anything with them)."""
        if self.tee not in TEE_CHOICES:
            raise GeodeError(f"--tee {self.tee}: expected one of {', '.join(TEE_CHOICES)}")
        if self.simulation and self.tee not in ("auto", "simulated"):
            raise GeodeError(f"--simulation contradicts --tee {self.tee}")
        if not self.simulated and (
            self.sealing_key
            or self.platform_key
            or self.trusted_platform_keys
            or self.coordinator_platform_keys
        ):
            raise GeodeError(f"{SIMULATION_ONLY} are for simulation only (--tee simulated)")
