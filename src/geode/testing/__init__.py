"""Helpers for tests and benchmarks of Geode deployments: a real simulated Coordinator process
on free loopback ports, isolated from the user's keys and pins; etcd for its store, one member
or a cluster; and fakes for unit tests: a store in memory and a clock that stands still."""

from __future__ import annotations

from geode.testing._clock import FakeClock
from geode.testing._coordinator import CoordinatorProcess, free_port, isolated_env
from geode.testing._etcd import EtcdCluster, EtcdProcess, find_etcd
from geode.testing._memory import MemoryStore

__all__ = [
    "CoordinatorProcess",
    "EtcdCluster",
    "EtcdProcess",
    "FakeClock",
    "MemoryStore",
    "find_etcd",
    "free_port",
    "isolated_env",
]
