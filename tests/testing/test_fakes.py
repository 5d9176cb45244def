"""The fakes in ``geode.testing`` keep the contracts they stand in for."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from geode.coordinator import DirectoryStore, GroupCommit, NonceStore, Store
from geode.errors import SealError, StoreConflict
from geode.pki import CertificateAuthority, Clock
from geode.testing import FakeClock, MemoryStore


@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store the Coordinator can be given, behind the one interface."""
    opened: Store = MemoryStore() if request.param == "memory" else DirectoryStore(tmp_path)
    yield opened
    opened.close()


def test_every_store_saves_loads_and_keeps_an_audit_log(store: Store) -> None:
    assert store.load() is None
    assert store.shared is None  # neither is shared with other Coordinators
    store.save(b"one")
    store.save(b"two")
    assert store.load() == b"two"
    mark = store.revision
    store.rewind(mark)
    store.save(b"three")
    assert store.load() == b"three"
    entries = ['{"seq":1}', '{"seq":2}']
    store.audit.append_missing(entries[:1])
    store.audit.append_missing(entries)  # a retry writes each entry once
    assert store.audit.read() == entries
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert store.audit.set_aside(now) is not None  # a new deployment: the old log goes aside
    assert store.audit.read() == []
    assert store.audit.set_aside(now) is None


def test_a_memory_store_loses_the_swap_after_another_writer_saved() -> None:
    store = MemoryStore()
    store.save(b"mine")
    store.write_elsewhere(b"theirs")
    assert store.blob == b"theirs"
    with pytest.raises(StoreConflict, match="changed"):
        store.save(b"mine again")
    assert store.blob == b"theirs"  # nothing was written
    mark = store.revision
    assert store.load() == b"theirs"
    store.rewind(mark)  # read, not adopted: the next save must not overwrite it
    with pytest.raises(StoreConflict):
        store.save(b"mine again")
    store.load()
    store.save(b"on theirs")
    assert store.saved == [b"mine", b"on theirs"]


def test_a_memory_store_fails_and_conflicts_on_demand() -> None:
    store = MemoryStore()
    store.conflicts = 2
    for _ in range(2):
        with pytest.raises(StoreConflict):
            store.save(b"x")
    store.fail = True
    with pytest.raises(SealError, match="disk is full"):
        store.save(b"x")
    store.fail = False
    store.save(b"x")
    assert store.saved == [b"x"]
    store.close()
    assert store.closed


def test_a_memory_store_behind_group_commit_makes_the_loser_build_on_the_winner() -> None:
    state = {"value": b"mine"}
    store = MemoryStore()
    store.write_elsewhere(b"theirs")

    def reload(blob: bytes | None) -> None:
        state["value"] = blob or b""

    commit = GroupCommit(lambda: state["value"], store, reload=reload)

    async def change() -> None:
        await commit.commit(lambda: None)

    with pytest.raises(StoreConflict):
        asyncio.run(change())
    assert state["value"] == b"theirs"  # read again and adopted
    state["value"] = b"theirs, then mine"
    asyncio.run(change())
    assert store.blob == b"theirs, then mine"


def test_a_fake_clock_stands_still_until_advanced() -> None:
    clock = FakeClock()
    start = clock()
    assert start.tzinfo is datetime.UTC
    assert clock() == clock.now == start
    assert clock.advance(datetime.timedelta(minutes=5)) == start + datetime.timedelta(minutes=5)
    assert clock() == start + datetime.timedelta(minutes=5)
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    assert FakeClock(datetime.datetime(2030, 6, 1, 13, tzinfo=berlin)).now.hour == 12
    with pytest.raises(ValueError, match="aware"):
        FakeClock(datetime.datetime(2030, 6, 1))


def test_a_fake_clock_drives_expiry_where_a_clock_is_injected() -> None:
    clock = FakeClock()
    typed: Clock = clock
    root = CertificateAuthority.create_root(clock=typed)
    assert root.certificate.not_valid_before_utc <= clock()
    nonces = NonceStore(datetime.timedelta(seconds=60), clock)
    nonce, expiry = nonces.issue()
    assert expiry == clock() + datetime.timedelta(seconds=60)
    clock.advance(datetime.timedelta(seconds=61))
    assert not nonces.consume(nonce)
