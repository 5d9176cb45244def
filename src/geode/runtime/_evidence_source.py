"""Where ``geode run`` gets its evidence: a TEE's quote provider, or simulation.

The choice is the launcher's, not its command line's: the CLI passes the flags through and
prints what was chosen; whether simulation is used is decided here, once, and said loudly by
whoever shows it (``EvidenceSource.simulated``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from geode.attestation import QuoteProvider, SimulatedPlatform, select_quote_provider
from geode.runtime._activation import EvidenceProvider, simulated_evidence_provider

__all__ = ["EvidenceSource", "choose_evidence_source"]


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
