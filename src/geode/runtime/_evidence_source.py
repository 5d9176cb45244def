"""Where ``geode run`` gets its evidence: a TEE's quote provider, or simulation.

The choice is the launcher's, not its command line's: the CLI passes the flags through and
prints what was chosen; whether simulation is used is decided here, once, and said loudly by
whoever shows it (``EvidenceSource.simulated``).

In a confidential VM the launcher also checks, before activating, that the bundle it is about
to run is the one the VM was launched for (``check_hardware_binding``): the Coordinator sees only
the VM's evidence, which says nothing of which directory ``--bundle`` names, so without the
check a VM launched (and admitted) for one bundle would run any other with its secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import (
    BINDING_KINDS,
    REPORT_DATA_SIZE,
    QuoteProvider,
    SimulatedPlatform,
    check_bundle_binding,
    select_quote_provider,
)
from geode.runtime._activation import EvidenceProvider, simulated_evidence_provider

__all__ = [
    "BINDING_REPORT_DATA",
    "EvidenceSource",
    "check_hardware_binding",
    "choose_evidence_source",
]

# The report data of the report read for the binding check: a fixed label, since the report
# goes to no one (only its HOST_DATA or MRCONFIGID is read).
BINDING_REPORT_DATA = b"geode bundle binding check".ljust(REPORT_DATA_SIZE, b"\0")


@dataclass(frozen=True)
class EvidenceSource:
    """The evidence provider chosen, and whether it is simulation (no hardware isolation)."""

    provider: EvidenceProvider
    name: str
    simulated: bool


def choose_evidence_source(
    quote_provider: str | None,
    *,
    measurement: bytes,
    platform_key: Path | None = None,
    simulate_debug: bool = False,
    select: Callable[[str | None], QuoteProvider | None] = select_quote_provider,
) -> EvidenceSource:
    """The provider ``quote_provider`` names (``auto``/``None``: ``$GEODE_QUOTE_PROVIDER``, else
    the first TEE interface present); without one, simulation: quotes of ``measurement`` (that of
    the staged copy of the bundle, which is what runs: ``stage_bundle``) signed by the simulated
    platform key at ``platform_key`` (made if absent).
    ``select`` finds the hardware provider (tests give a fake device tree)."""
    hardware = select(quote_provider)
    if hardware is not None:
        return EvidenceSource(hardware, hardware.name, simulated=False)
    platform = SimulatedPlatform.load_or_create(platform_key)
    provider = simulated_evidence_provider(platform, measurement, debug=simulate_debug)
    return EvidenceSource(provider, "simulated", simulated=True)


def check_hardware_binding(source: EvidenceSource, measurement: bytes) -> str | None:
    """``LaunchError`` (both values in hex) unless the VM ``source`` reports from was launched
    for a bundle of ``measurement``: one report is taken (report data ``BINDING_REPORT_DATA``) and
    its SEV-SNP ``HOST_DATA`` or TDX ``MRCONFIGID`` compared (``check_bundle_binding``). Returns
    the field checked, ``None`` when the kind has no such binding and nothing was checked:

    - simulation: the simulated evidence states the measurement itself;
    - ``sgx`` (Gramine): there is no launch-time field; the enclave's MRENCLAVE covers the bundle
      through the trusted files of its manifest (``geode bundle gramine-manifest``), which the
      Coordinator matches against the package;
    - ``nvidia``: a GPU's report never runs a service (no quote provider gives one).
    """
    if source.simulated:
        return None
    evidence = source.provider(BINDING_REPORT_DATA)
    field = BINDING_KINDS.get(evidence.kind)
    if field is None:
        return None
    check_bundle_binding(evidence, measurement)
    return field
