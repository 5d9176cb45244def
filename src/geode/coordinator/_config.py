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

__all__ = ["CoordinatorConfig"]

# The ``--tee`` choices ``--tee-certs`` goes with (``auto`` must then find SEV-SNP).
_TEE_CERTS_CHOICES = ("auto", "sev-snp")


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
    # SEV-SNP only (``--tee-certs``): a PEM or DER file with the VCEK or VLEK (and optionally
    # the ASK or ASVK) that this Coordinator's evidence carries when the host's interface gives
    # no certificates (``geode.attestation.attach_snp_certs``).
    tee_certs: Path | None = None
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
        with a hardware TEE, simulated platform keys given to a hardware Coordinator (a
        host could sign anything with them), or SEV-SNP certificates to another TEE."""
        if self.tee not in TEE_CHOICES:
            raise GeodeError(f"--tee {self.tee}: expected one of {', '.join(TEE_CHOICES)}")
        if self.simulation and self.tee not in ("auto", "simulated"):
            raise GeodeError(f"--simulation contradicts --tee {self.tee}")
        simulation_only = {
            "--sealing-key": self.sealing_key is not None,
            "--platform-key": self.platform_key is not None,
            "--trust-platform-key": bool(self.trusted_platform_keys),
            "--trust-coordinator-platform-key": bool(self.coordinator_platform_keys),
        }
        given = [name for name, present in simulation_only.items() if present]
        if given and not self.simulated:
            raise GeodeError(
                f"{', '.join(given)}: for simulation only (--tee simulated); a Coordinator in a "
                "hardware TEE trusts no simulated platform key and derives its sealing key from "
                "its TEE"
            )
        if self.tee_certs is not None and (self.simulated or self.tee not in _TEE_CERTS_CHOICES):
            tee = "simulation" if self.simulated else f"--tee {self.tee}"
            raise GeodeError(
                f"--tee-certs is for SEV-SNP only (the VCEK or VLEK its reports lack), not {tee}"
            )
