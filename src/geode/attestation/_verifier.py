"""Dispatch evidence to the verifier of its kind, under the trust the caller configured."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from geode.attestation._evidence import Claims, Evidence
from geode.attestation._simulated import platform_key_id, verify_simulated_quote
from geode.errors import EvidenceError

__all__ = ["EvidenceVerifier"]


class EvidenceVerifier:
    """Verifies evidence of every kind it was configured to accept.

    Simulated evidence is accepted only with ``simulation=True`` and only when signed by one of
    ``platform_keys``.
    """

    def __init__(
        self, *, simulation: bool = False, platform_keys: Sequence[Ed25519PublicKey] = ()
    ) -> None:
        self.simulation = simulation
        self._platform_keys = {platform_key_id(key): key for key in platform_keys}

    def verify(self, evidence: Evidence) -> Claims:
        if evidence.kind == "simulated":
            if not self.simulation:
                raise EvidenceError(
                    "simulated evidence is refused: simulation is not enabled", field="kind"
                )
            return verify_simulated_quote(evidence.data, self._platform_keys)
        raise EvidenceError(
            f"verification of {evidence.kind!r} evidence is not supported yet", field="kind"
        )
