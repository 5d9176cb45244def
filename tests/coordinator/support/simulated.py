"""The simulated TEE tests build Coordinators on: one helper, so a change of what a
Coordinator attests with is one change here."""

from __future__ import annotations

from geode.attestation import SimulatedPlatform
from geode.coordinator import SimulatedTee


def simulated_tee(
    platform: SimulatedPlatform | None = None, measurement: bytes = bytes(32)
) -> SimulatedTee:
    """A Coordinator's simulated TEE: ``platform`` (a fresh one if none) signs quotes of
    ``measurement``."""
    return SimulatedTee(platform or SimulatedPlatform.generate(), measurement)
