"""Helpers for tests and benchmarks of Geode deployments: a real simulated Coordinator process
on free loopback ports, isolated from the user's keys and pins."""

from __future__ import annotations

from geode.testing._coordinator import CoordinatorProcess, free_port, isolated_env

__all__ = ["CoordinatorProcess", "free_port", "isolated_env"]
