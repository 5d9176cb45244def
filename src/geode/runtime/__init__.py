"""The runtime: activation, ``geode run``, the ASGI TLS extension; mesh TLS and policies next."""

from __future__ import annotations

from geode.runtime._activation import (
    Activation,
    EvidenceProvider,
    activate,
    simulated_evidence_provider,
)
from geode.runtime._asgi_tls import TLSExtensionProtocol, peer_certificate, tls_extension
from geode.runtime._launcher import LaunchPlan, lay_out, remove_plan, run_command

__all__ = [
    "Activation",
    "EvidenceProvider",
    "LaunchPlan",
    "TLSExtensionProtocol",
    "activate",
    "lay_out",
    "peer_certificate",
    "remove_plan",
    "run_command",
    "simulated_evidence_provider",
    "tls_extension",
]
