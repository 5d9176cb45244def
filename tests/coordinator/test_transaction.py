"""The transaction: a change's value leaves only once the change is saved; a change that cannot
be saved is undone; governance changes run one at a time."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import pytest

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import (
    Coordinator,
    CoordinatorSettings,
    GroupCommit,
    Pending,
    Transaction,
)
from geode.coordinator._transaction import record_start
from geode.errors import SealError, StoreConflict
from geode.testing import MemoryStore
from tests.coordinator.support.simulated import simulated_tee


class Harness:
    """A transaction over a state that is one dict, written as JSON to ``store``."""

    def __init__(self) -> None:
        self.state: dict[str, int] = {}
        self.store = MemoryStore()
        c = Coordinator(
            CoordinatorSettings(simulation=True),
            EvidenceVerifier(simulation=True),
            simulated_tee(None, bytes(32)),
            os.urandom(32),
        )
        c.load(None)
        writer = GroupCommit(lambda: json.dumps(self.state).encode(), self.store)
        self.changes: list[str] = []
        self.transaction = Transaction(
            c.held, writer, c.audit_sink, on_change=lambda: self.changes.append("changed")
        )

    def change(self, key: str, *, saved: Callable[[], None] | None = None) -> Pending[str]:
        self.state[key] = self.state.get(key, 0) + 1

        def revert() -> None:
            self.state[key] -= 1

        return Pending(key, revert, saved=saved or (lambda: None))

    def saved(self) -> list[dict[str, int]]:
        return [json.loads(blob) for blob in self.store.saved]


def test_a_value_leaves_only_once_its_change_is_saved() -> None:
    h = Harness()

    async def change() -> Pending[str]:
        return h.change("a", saved=lambda: h.changes.append(f"saved {h.saved()}"))

    assert asyncio.run(h.transaction.govern(change)) == "a"
    assert h.changes == ["changed", "saved [{'a': 1}]"]


def test_a_change_that_cannot_be_saved_is_undone_and_not_answered() -> None:
    h = Harness()
    h.store.fail = True

    async def change() -> Pending[str]:
        return h.change("a", saved=lambda: h.changes.append("saved"))

    with pytest.raises(SealError):
        asyncio.run(h.transaction.govern(change))
    assert h.state == {"a": 0}
    assert h.changes == []


def test_governance_changes_run_one_at_a_time() -> None:
    h = Harness()
    seen: list[str] = []

    async def slow() -> Pending[str]:
        seen.append("slow starts")
        await asyncio.sleep(0.05)  # key generation in a thread, say
        seen.append("slow changes")
        return h.change("slow")

    async def quick() -> Pending[str]:
        seen.append("quick starts")
        return h.change("quick")

    async def both() -> None:
        first = asyncio.create_task(h.transaction.govern(slow))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, h.transaction.govern(quick))

    asyncio.run(both())
    assert seen == ["slow starts", "slow changes", "quick starts"]
    assert h.saved() == [{"slow": 1}, {"slow": 1, "quick": 1}]


def test_a_change_with_nothing_to_write_is_answered_without_a_write() -> None:
    h = Harness()

    async def change() -> Pending[str]:
        return Pending("progress", needs_write=False)

    assert asyncio.run(h.transaction.govern(change)) == "progress"
    assert h.store.saved == []
    assert h.changes == []


def test_a_change_that_loses_the_compare_and_swap_is_decided_again() -> None:
    h = Harness()
    conflicts = [StoreConflict("the shared state changed")] * 2
    save = h.store.save

    def conflicting(blob: bytes) -> None:
        if conflicts:
            raise conflicts.pop()
        save(blob)

    h.store.save = conflicting  # type: ignore[method-assign]
    attempts: list[bool] = []

    def change(again: bool) -> Pending[str]:
        attempts.append(again)
        return h.change("a")

    assert asyncio.run(h.transaction.decide(change)) == "a"
    assert attempts == [False, True, True]
    assert h.saved() == [{"a": 1}]


def test_the_start_is_recorded_once_and_reaches_the_log() -> None:
    platform = SimulatedPlatform.generate()
    c = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True, platform_keys=[platform.public_key]),
        simulated_tee(platform, bytes(32)),
        os.urandom(32),
    )
    c.load(None)
    manifest = {"version": 1, "trust_domain": "t.local", "packages": {}, "services": {}}
    c.set_manifest(json.dumps(manifest).encode())
    store = MemoryStore()
    record_start(c.record_start, c.held, store, c.reload, c.audit_sink)
    assert len(store.saved) == 1
    events = [json.loads(line)["event"] for line in c.audit_sink.read()]
    assert events == ["manifest.set", "coordinator.start"]
    assert c.held.unflushed_audit() == ()
