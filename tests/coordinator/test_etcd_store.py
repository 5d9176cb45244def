"""The etcd store against a real etcd: compare-and-swap, conflicts, fail-over, size limit."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import httpx
import pytest

from geode.coordinator._etcd import ETCD_MAX_BLOB, EtcdSettings, EtcdStore, parse_etcd_url
from geode.coordinator._seal import Sealer
from geode.errors import SealError, StoreConflict
from tests.support import free_port
from tests.support.etcd import EtcdServer, EtcdTLS


def _store(etcd: EtcdServer, *extra: tuple[str, int], prefix: str = "/geode") -> EtcdStore:
    return EtcdStore(EtcdSettings(endpoints=(*extra, *parse_etcd_url(etcd.url)), prefix=prefix))


def test_parse_etcd_url() -> None:
    assert parse_etcd_url("etcd://a:2379,[::1]:2380") == (("a", 2379), ("::1", 2380))
    for bad in ("http://a:1", "etcd://", "etcd://a", "etcd://a:0", "etcd://a:1,"):
        with pytest.raises(ValueError, match="expected"):
            parse_etcd_url(bad)


def test_save_load_and_revision(etcd: EtcdServer) -> None:
    store = _store(etcd)
    assert store.load() is None
    store.save(b"first")
    store.save(b"second")
    again = _store(etcd)
    assert again.load() == b"second"
    assert again.revision == store.revision > 0
    # Another prefix is another deployment.
    assert _store(etcd, prefix="/other").load() is None


def test_two_writers_on_one_revision_exactly_one_wins(etcd: EtcdServer) -> None:
    seed = _store(etcd)
    seed.load()
    seed.save(b"base")
    writers = [_store(etcd) for _ in range(2)]
    for writer in writers:
        assert writer.load() == b"base"
    barrier = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def write(index: int) -> None:
        barrier.wait()
        try:
            writers[index].save(f"writer {index}".encode())
            outcomes[index] = "won"
        except StoreConflict as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    losers = [outcome for outcome in outcomes.values() if isinstance(outcome, StoreConflict)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert losers[0].status == 409
    assert "changed" in str(losers[0])
    # No lost update: etcd holds the winner's blob, and the loser wrote nothing.
    assert _store(etcd).load() == f"writer {winners[0]}".encode()
    # The loser re-reads and retries: now it wins, on the winner's revision.
    loser = writers[1 - winners[0]]
    assert loser.load() == f"writer {winners[0]}".encode()
    loser.save(b"retried")
    assert _store(etcd).load() == b"retried"


def test_a_first_save_conflicts_with_a_state_created_meanwhile(etcd: EtcdServer) -> None:
    late, early = _store(etcd), _store(etcd)
    assert late.load() is None
    assert early.load() is None
    early.save(b"created")
    with pytest.raises(StoreConflict):
        late.save(b"also created")
    assert _store(etcd).load() == b"created"


def test_sealed_state_reads_back_and_unseals(etcd: EtcdServer) -> None:
    key = bytes(range(32))
    sealer = Sealer(key)
    store = _store(etcd)
    store.load()
    store.save(sealer.seal(b'{"state": 1}'))
    _, raw = Sealer.unseal(_store(etcd).load() or b"", key)
    assert raw == b'{"state": 1}'


def test_fails_over_to_an_endpoint_that_answers(etcd: EtcdServer) -> None:
    store = _store(etcd, ("127.0.0.1", free_port()))  # nothing listens on the first
    store.load()
    store.save(b"via the second endpoint")
    assert store.load() == b"via the second endpoint"


def test_no_endpoint_and_too_large_are_clear_errors(etcd: EtcdServer) -> None:
    dead = EtcdStore(EtcdSettings(endpoints=(("127.0.0.1", free_port()),), timeout=1))
    with pytest.raises(SealError, match="no etcd endpoint answered"):
        dead.load()
    store = _store(etcd)
    store.load()
    with pytest.raises(SealError, match="at most"):
        store.save(b"x" * (ETCD_MAX_BLOB + 1))
    assert store.load() is None


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    tls = EtcdTLS.create(tmp_path / "tls")
    server = EtcdServer(tmp_path / "etcd", tls=tls).start()
    try:
        endpoints = parse_etcd_url(server.url)
        settings = EtcdSettings(
            endpoints=endpoints, ca=tls.ca, cert=tls.client_cert, key=tls.client_key
        )
        store = EtcdStore(settings)
        assert store.load() is None
        store.save(b"over TLS")
        assert EtcdStore(settings).load() == b"over TLS"
        # Without the client certificate etcd refuses the handshake: a clear error, no blob.
        anonymous = EtcdStore(EtcdSettings(endpoints=endpoints, ca=tls.ca, timeout=2))
        with pytest.raises(SealError, match="no etcd endpoint answered"):
            anonymous.load()
        # An etcd whose certificate is not from the given CA is not trusted.
        other = EtcdTLS.create(tmp_path / "other")
        with pytest.raises(SealError, match="no etcd endpoint answered"):
            EtcdStore(EtcdSettings(endpoints=endpoints, ca=other.ca, timeout=2)).load()
    finally:
        server.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_server_error_moves_on_and_a_landed_retry_counts_as_saved() -> None:
    """The first member answers 503 (no leader); the second says the compare failed, but the
    key already holds this very blob (the transaction landed before a timeout): saved."""
    seen: list[str] = []

    def etcd(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.host == "down":
            return httpx.Response(503, json={"error": "etcdserver: no leader", "code": 14})
        body = json.loads(request.content)
        if request.url.path == "/v3/kv/range":
            return httpx.Response(200, json={"header": {"revision": "7"}})
        value = body["success"][0]["request_put"]["value"]
        kv = {"key": body["compare"][0]["key"], "value": value, "mod_revision": "8"}
        answer = {"header": {"revision": "8"}, "responses": [{"response_range": {"kvs": [kv]}}]}
        return httpx.Response(200, json=answer)

    settings = EtcdSettings(endpoints=(("down", 2379), ("up", 2379)))
    store = EtcdStore(settings, transport=httpx.MockTransport(etcd))
    assert store.load() is None
    store.save(b"landed")
    assert store.revision == 8
    assert seen == ["down/v3/kv/range", "up/v3/kv/range", "up/v3/kv/txn"]  # "up" kept first


def test_an_etcd_error_is_one_line_without_the_blob() -> None:
    def etcd(request: httpx.Request) -> httpx.Response:
        message = "etcdserver: request is too large"
        return httpx.Response(400, json={"error": message, "message": message, "code": 3})

    store = EtcdStore(EtcdSettings(endpoints=(("e", 2379),)), transport=httpx.MockTransport(etcd))
    with pytest.raises(SealError, match="request is too large") as error:
        store.save(b"secret-blob")
    assert _b64(b"secret-blob") not in str(error.value)


def test_members_moved_on_and_the_writer_key(etcd: EtcdServer) -> None:
    a, b = _store(etcd), _store(etcd)
    a.register("a:1", b'{"mesh": "a:1"}')
    b.register("b:1", b"{}")
    _store(etcd, prefix="/other").register("c:1", b"{}")  # another deployment's
    assert a.members() == {"a:1": b'{"mesh": "a:1"}', "b:1": b"{}"}
    b.unregister("b:1")
    assert list(a.members()) == ["a:1"]

    a.load()
    assert not a.moved_on()
    b.load()
    b.save(b"from b")
    assert a.moved_on()  # a keys-only look: a's revision is unchanged until it loads
    a.load()
    assert not a.moved_on()

    lease_a, lease_b = a.grant(30), b.grant(30)
    assert a.campaign("a:1", lease_a) == "a:1"
    assert b.campaign("b:1", lease_b) == "a:1"  # held: b learns who holds it
    assert a.campaign("a:1", lease_a) == "a:1"  # holding it again changes nothing
    assert a.keep_alive(lease_a)
    a.revoke(lease_a)  # a clean stop: the key goes with the lease
    assert not a.keep_alive(lease_a)
    assert b.campaign("b:1", lease_b) == "b:1"


def test_the_audit_log_in_etcd_is_shared_and_append_only(etcd: EtcdServer) -> None:
    from geode.coordinator._audit import EtcdAuditLog

    first, second = EtcdAuditLog(_store(etcd)), EtcdAuditLog(_store(etcd))
    entries = [json.dumps({"seq": n, "event": f"e{n}"}) for n in range(1, 12)]
    first.append_missing(entries[:2])
    second.append_missing(entries[:3])  # another Coordinator flushes 1-2 again, and 3
    first.append_missing(entries[3:])
    assert second.read() == first.read() == entries  # in order: 10 after 9, not after 1
    altered = json.dumps({"seq": 2, "event": "forged"})
    with pytest.raises(SealError, match="audit entry 2 in etcd is not the one"):
        first.append_missing([altered])
    assert first.read() == entries
    assert EtcdAuditLog(_store(etcd, prefix="/other")).read() == []


def test_a_state_read_but_not_adopted_is_never_overwritten(etcd: EtcdServer) -> None:
    """A Coordinator that loses a compare-and-swap and cannot adopt the newer state (it does
    not open with its keys) keeps expecting the state it serves: its next save conflicts
    again instead of replacing what it could not read."""
    import asyncio

    from geode.coordinator import GroupCommit

    first, second = _store(etcd), _store(etcd)
    first.load()
    second.load()
    first.save(b"the other deployment's state")

    def refuse(blob: bytes | None) -> None:
        raise SealError("does not open here")

    commit = GroupCommit(lambda: b"this one's state", second, reload=refuse)

    async def twice() -> list[str]:
        outcomes = []
        for _ in range(2):
            try:
                await commit.commit()
                outcomes.append("saved")
            except StoreConflict:
                outcomes.append("conflict")
        return outcomes

    assert asyncio.run(twice()) == ["conflict", "conflict"]
    assert first.load() == b"the other deployment's state"


def test_closing_the_store_unlists_its_members_and_frees_the_data_directory(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    from geode.coordinator import DirectoryStore

    settings = EtcdSettings(endpoints=parse_etcd_url(etcd.url), prefix="/closing")
    store = EtcdStore(settings, data_dir=tmp_path / "data")
    assert store.shared is store
    store.register("a:1", b"{}")
    with pytest.raises(SealError, match="in use by another Coordinator"):
        DirectoryStore(tmp_path / "data")
    other = _store(etcd, prefix="/closing")
    assert list(other.members()) == ["a:1"]
    store.close()
    assert other.members() == {}
    DirectoryStore(tmp_path / "data").close()
