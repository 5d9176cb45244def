"""The runtime: activation, ``geode run``, and (later) mesh TLS and policy enforcement."""

from __future__ import annotations

from geode.runtime._activation import (
    Activation,
    EvidenceProvider,
    activate,
    simulated_evidence_provider,
)
from geode.runtime._launcher import GEODE_ENV, LaunchPlan, lay_out, remove_plan, run_command

__all__ = [
    "GEODE_ENV",
    "Activation",
    "EvidenceProvider",
    "LaunchPlan",
    "activate",
    "lay_out",
    "remove_plan",
    "run_command",
    "simulated_evidence_provider",
]
