"""Sealing, the directory store, nonces and group commit: the Coordinator's persistence parts."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from pathlib import Path

import pytest

from geode.coordinator import (
    DirectoryStore,
    GroupCommit,
    NonceStore,
    Sealer,
    load_or_create_sealing_key,
)
from geode.errors import SealError
from geode.testing import FakeClock, MemoryStore

KEY = bytes(range(32))


def test_seal_round_trip_keeps_data_key() -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal(b"state one")
    reopened, state = Sealer.unseal(blob, KEY)
    assert state == b"state one"
    # The reopened sealer writes blobs the original key still opens.
    assert Sealer.unseal(reopened.seal(b"state two"), KEY)[1] == b"state two"
    assert sealer.seal(b"x") != sealer.seal(b"x")  # fresh nonce per write


def test_wrong_sealing_key_is_named() -> None:
    blob = Sealer(KEY).seal(b"secret state")
    with pytest.raises(SealError, match="sealing key does not open"):
        Sealer.unseal(blob, bytes(32))


def test_every_flipped_byte_is_detected() -> None:
    blob = Sealer(KEY).seal(b"a small state")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x40
        with pytest.raises(SealError):
            Sealer.unseal(bytes(tampered), KEY)


@pytest.mark.parametrize("cut", [0, 5, 12, 16, 40, -1, -17])
def test_truncation_is_detected(cut: int) -> None:
    blob = Sealer(KEY).seal(b"a small state")
    with pytest.raises(SealError):
        Sealer.unseal(blob[:cut], KEY)


def test_header_from_another_state_is_detected() -> None:
    a, b = Sealer(KEY).seal(b"state a"), Sealer(KEY).seal(b"state b")
    header_len = len(a) - len(b"state a") - 12 - 16
    with pytest.raises(SealError):
        Sealer.unseal(b[:header_len] + a[header_len:], KEY)


def test_sealing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sealing.key"
    key = load_or_create_sealing_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_sealing_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(SealError, match="exactly 32 bytes"):
        load_or_create_sealing_key(path)


def test_directory_store_is_atomic_and_exclusive(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "data")
    assert store.load() is None
    store.save(b"one")
    store.save(b"two")
    assert store.load() == b"two"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "coordinator.lock",
        "state.sealed",
    ]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    with pytest.raises(SealError, match="in use by another Coordinator"):
        DirectoryStore(tmp_path / "data")
    store.close()
    DirectoryStore(tmp_path / "data").close()


def test_nonces_are_single_use_and_expire() -> None:
    clock = FakeClock()
    nonces = NonceStore(datetime.timedelta(seconds=60), clock)
    first, expiry = nonces.issue()
    second, _ = nonces.issue()
    assert len(first) == 32
    assert first != second
    assert expiry == clock.now + datetime.timedelta(seconds=60)
    assert nonces.consume(first)
    assert not nonces.consume(first)
    clock.advance(datetime.timedelta(seconds=61))
    assert not nonces.consume(second)
    assert nonces.spent == 0  # spent nonces are forgotten once they have expired anyway
    assert not nonces.consume(os.urandom(32))


def test_nonces_cannot_be_forged_or_borrowed() -> None:
    clock = FakeClock()
    nonces = NonceStore(datetime.timedelta(seconds=60), clock)
    nonce, _ = nonces.issue()
    for i in range(32):  # any changed byte, the expiry included, breaks the MAC
        forged = bytearray(nonce)
        forged[i] ^= 1
        assert not nonces.consume(bytes(forged))
    other = NonceStore(datetime.timedelta(seconds=60), clock)
    assert not other.consume(nonce)  # another Coordinator's key
    assert nonces.consume(nonce)


def test_a_nonce_flood_evicts_nobody() -> None:
    nonces = NonceStore(datetime.timedelta(seconds=60), FakeClock())
    mine, _ = nonces.issue()
    for _ in range(200_000):
        nonces.issue()
    assert nonces.spent == 0
    assert nonces.consume(mine)


def test_group_commit_batches_and_covers_every_change() -> None:
    counter = {"value": 0}
    store = MemoryStore(save_delay=0.02)
    commit = GroupCommit(lambda: str(counter["value"]).encode(), store)

    async def change() -> int:
        counter["value"] += 1
        mine = counter["value"]
        await commit.commit()
        return mine

    async def main() -> list[int]:
        return await asyncio.gather(*(change() for _ in range(50)))

    results = asyncio.run(main())
    assert sorted(results) == list(range(1, 51))
    assert store.saved[-1] == b"50"
    assert 1 <= len(store.saved) < 50
    assert commit.writes == len(store.saved)


def test_group_commit_failure_reaches_every_waiter() -> None:
    store = MemoryStore(save_delay=0.02)
    store.fail = True
    commit = GroupCommit(lambda: b"x", store)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(commit.commit() for _ in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, SealError) for r in results)


def test_sealing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sealing.key"
    load_or_create_sealing_key(path)
    path.chmod(0o640)
    with pytest.raises(SealError, match="readable by other users"):
        load_or_create_sealing_key(path)
