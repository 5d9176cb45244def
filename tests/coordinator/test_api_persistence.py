"""The APIs in-process over ASGI: a change that cannot be saved is not kept, nor handed out."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from geode.attestation import EvidenceVerifier, SimulatedPlatform
from geode.coordinator import (
    Coordinator,
    CoordinatorSettings,
    GroupCommit,
    Sealer,
    build_apps,
)
from geode.errors import StoreConflict
from geode.pki import public_key_der
from geode.protocol import key_binding
from geode.testing import MemoryStore
from tests.coordinator.support.asgi import in_process_apis
from tests.coordinator.support.simulated import simulated_tee

MEASUREMENT = bytes(range(32))


def manifest(**web: object) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "trust_domain": "api.geode.local",
            "packages": {"app": {"tee": "simulated", "measurement": MEASUREMENT.hex()}},
            "services": {"web": {"package": "app", **web}},
            "secrets": {"tls": {"type": "cert-ecdsa", "shared": True}},
        }
    ).encode()


class Harness:
    def __init__(self) -> None:
        self.platform = SimulatedPlatform.generate()
        self.sealing_key = os.urandom(32)
        self.coordinator = Coordinator(
            CoordinatorSettings(simulation=True),
            EvidenceVerifier(simulation=True, platform_keys=[self.platform.public_key]),
            simulated_tee(self.platform, MEASUREMENT),
            self.sealing_key,
        )
        self.coordinator.load(None)
        self.store = MemoryStore()
        self.client, self.mesh = in_process_apis(
            self.coordinator,
            GroupCommit(self.coordinator.sealed_state, self.store, reload=self.coordinator.reload),
        )

    async def activate(self, *, evidence: object = None) -> httpx.Response:
        key = ec.generate_private_key(ec.SECP256R1())
        nonce = bytes.fromhex((await self.mesh.post("/api/v1/mesh/nonce")).json()["nonce"])
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(key, hashes.SHA256())
        )
        quote = self.platform.quote(
            MEASUREMENT, key_binding(public_key_der(key.public_key()), nonce)
        )
        body = {
            "service": "web",
            "nonce": nonce.hex(),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "evidence": evidence if evidence is not None else quote.to_json(),
        }
        self.last_body = body
        return await self.mesh.post("/api/v1/mesh/activate", json=body)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_unsaved_manifest_is_not_adopted() -> None:
    async def scenario() -> None:
        h = Harness()
        h.store.fail = True
        failed = await h.client.post("/api/v1/manifest", content=manifest())
        assert failed.status_code == 503
        assert failed.json()["error"] == "state_unavailable"
        status = (await h.client.get("/api/v1/status")).json()
        assert status["state"] == "awaiting-manifest"
        assert (await h.client.get("/api/v1/manifest")).status_code == 409
        h.store.fail = False
        ok = await h.client.post("/api/v1/manifest", content=manifest())
        assert ok.status_code == 201
        # What is on disk is exactly what is in force.
        _, raw = Sealer.unseal(h.store.saved[-1], h.sealing_key)
        assert json.loads(raw)["manifest"] == base64.b64encode(manifest()).decode()

    run(scenario())


def test_unsaved_activation_is_not_counted_nor_handed_out() -> None:
    async def scenario() -> None:
        h = Harness()
        assert (
            await h.client.post("/api/v1/manifest", content=manifest(max_activations=1))
        ).status_code == 201
        h.store.fail = True
        failed = await h.activate()
        assert failed.status_code == 503
        assert "certificate_chain" not in failed.json()
        assert (await h.client.get("/api/v1/status")).json()["activations"] == {}
        h.store.fail = False
        assert (await h.activate()).status_code == 200  # the one allowed activation is still free
        assert (await h.activate()).json()["reason"] == "max_activations reached"

    run(scenario())


def test_invalid_evidence_spends_the_nonce() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.client.post("/api/v1/manifest", content=manifest())
        bad = await h.activate(evidence={"kind": "simulated", "data": "***"})
        assert bad.json()["reason"] == "invalid evidence"
        retry = dict(h.last_body)
        retry["evidence"] = h.platform.quote(MEASUREMENT, bytes(64)).to_json()
        again = await h.mesh.post("/api/v1/mesh/activate", json=retry)
        assert again.json()["reason"] == "nonce expired or reused"

    run(scenario())


def test_certificate_private_key_only_when_a_template_reads_it() -> None:
    async def scenario() -> None:
        h = Harness()
        files = {"tls.crt": "{{ secrets.tls.cert | pem }}"}
        await h.client.post("/api/v1/manifest", content=manifest(files=files))
        answer = (await h.activate()).json()
        assert set(answer["secrets"]["tls"]) == {"value", "certificate"}

    run(scenario())


def test_malformed_json_never_500s() -> None:
    async def scenario() -> None:
        h = Harness()
        for body in (b"[" * 60000, b"1" * 50000):
            answer = await h.mesh.post(
                "/api/v1/mesh/activate", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code in (400, 413), answer.text

    run(scenario())


def test_state_header_of_the_wrong_shape_means_recovery(tmp_path: Path) -> None:
    h = Harness()
    h.coordinator.set_manifest(manifest())
    blob = h.coordinator.sealed_state()
    start = blob.index(b"{")
    end = blob.index(b"}}") + 2
    header = json.dumps({"version": 1, "wrapped_keys": "oops"}).encode()
    header = header.ljust(end - start)
    forged = blob[:start] + header + blob[end:]
    c = Coordinator(
        CoordinatorSettings(simulation=True),
        EvidenceVerifier(simulation=True),
        simulated_tee(h.platform, MEASUREMENT),
        h.sealing_key,
    )
    c.load(forged)
    assert c.state.value == "recovery"


def test_a_stalled_body_times_out() -> None:
    h = Harness()
    _, mesh = build_apps(
        h.coordinator, GroupCommit(h.coordinator.sealed_state, h.store), body_timeout=0.2
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b'{"serv', "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/mesh/activate",
        "raw_path": b"/api/v1/mesh/activate",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "http_version": "1.1",
        "scheme": "https",
        "server": ("127.0.0.1", 2001),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    asyncio.run(asyncio.wait_for(mesh(scope, receive, send), 5))
    start = next(m for m in sent if m.get("type") == "http.response.start")
    assert start["status"] == 408


def test_a_change_whose_write_failed_never_reaches_the_disk_with_a_later_batch() -> None:
    """A's write fails while B waits for the next one: A is undone before B's snapshot."""
    state = {"a": False, "b": False}

    class SlowFailingOnce(MemoryStore):
        failed = False

        def save(self, blob: bytes) -> None:
            if not self.failed:
                self.failed = True
                time.sleep(0.1)  # B arrives while this write is under way
                raise OSError("disk full")
            super().save(blob)

    store = SlowFailingOnce()
    commit = GroupCommit(lambda: json.dumps(state).encode(), store)

    def undo(key: str) -> Callable[[], None]:
        return lambda: state.__setitem__(key, False)

    async def change(key: str, delay: float) -> str:
        await asyncio.sleep(delay)
        state[key] = True
        try:
            await commit.commit(undo(key))
        except OSError:
            return "failed"
        return "saved"

    async def both() -> list[str]:
        return list(await asyncio.gather(change("a", 0), change("b", 0.03)))

    assert asyncio.run(both()) == ["failed", "saved"]
    assert [json.loads(blob) for blob in store.saved] == [{"a": False, "b": True}]
    assert state == {"a": False, "b": True}


def test_a_lost_compare_and_swap_is_undone_then_the_store_is_read_again() -> None:
    """The conflict reaches the caller; before the next write the writer adopts what the
    store holds now, so the next change builds on the winner's state."""
    state = {"mine": False, "theirs": False}
    events: list[str] = []

    class SharedStore(MemoryStore):
        def load(self) -> bytes | None:
            events.append("load")
            return super().load()

        def save(self, blob: bytes) -> None:
            super().save(blob)
            events.append("save")

    def reload(blob: bytes | None) -> None:
        events.append("reload")
        state.update(json.loads(blob or b"{}"))

    store = SharedStore()
    store.write_elsewhere(json.dumps({"mine": False, "theirs": True}).encode())
    commit = GroupCommit(lambda: json.dumps(state).encode(), store, reload=reload)

    def undo() -> None:
        events.append("undo")
        state["mine"] = False

    async def change() -> str:
        state["mine"] = True
        try:
            await commit.commit(undo)
        except StoreConflict:
            return "conflict"
        return "saved"

    assert asyncio.run(change()) == "conflict"
    assert events == ["undo", "load", "reload"]
    assert state == {"mine": False, "theirs": True}
    assert asyncio.run(change()) == "saved"
    assert json.loads(store.blob or b"") == {"mine": True, "theirs": True}


def test_changes_waiting_behind_a_lost_compare_and_swap_get_the_conflict_too() -> None:
    """B changed the state while A's write was under way: the state is replaced by the store's,
    so B is undone and refused too — acknowledged, it would be missing from what is written."""
    state = {"count": 1}
    events: list[str] = []

    class SharedStore(MemoryStore):
        def load(self) -> bytes | None:
            events.append("load")
            return super().load()

        def save(self, blob: bytes) -> None:
            try:
                super().save(blob)  # B arrives while this write is under way
            finally:
                events.append("save")

    def reload(blob: bytes | None) -> None:
        events.append("reload")
        state.update(json.loads(blob or b"{}"))

    store = SharedStore(save_delay=0.1)
    store.write_elsewhere(json.dumps({"count": 5}).encode())
    commit = GroupCommit(lambda: json.dumps(state).encode(), store, reload=reload)

    async def change(name: str, delay: float) -> str:
        await asyncio.sleep(delay)
        state["count"] += 1

        def undo() -> None:
            events.append(f"undo {name}")
            state["count"] -= 1

        try:
            await commit.commit(undo)
        except StoreConflict:
            return "conflict"
        return "saved"

    async def both() -> list[str]:
        return list(await asyncio.gather(change("a", 0), change("b", 0.03)))

    assert asyncio.run(both()) == ["conflict", "conflict"]
    assert events == ["save", "undo a", "load", "undo b", "reload"]
    assert state == {"count": 5}


def test_following_the_store_adopts_its_state_unless_a_write_is_under_way() -> None:
    state = {"count": 1}
    events: list[str] = []

    class SharedStore(MemoryStore):
        def load(self) -> bytes | None:
            events.append("load")
            return super().load()

        def save(self, blob: bytes) -> None:
            super().save(blob)
            events.append("save")

    def reload(blob: bytes | None) -> None:
        events.append("reload")
        state.update(json.loads(blob or b"{}"))

    store = SharedStore(save_delay=0.1)
    commit = GroupCommit(lambda: json.dumps(state).encode(), store, reload=reload)

    async def run() -> list[bool]:
        unchanged = await commit.follow(lambda: False)
        state["count"] += 1
        write = asyncio.create_task(commit.commit())
        await asyncio.sleep(0.03)  # the write is under way: following waits for another time
        during = await commit.follow(lambda: True)
        await write
        store.write_elsewhere(json.dumps({"count": 7}).encode())
        after = await commit.follow(lambda: True)
        return [unchanged, during, after]

    assert asyncio.run(run()) == [False, False, True]
    assert events == ["save", "load", "reload"]
    assert state == {"count": 7}


def test_an_activation_that_loses_a_compare_and_swap_is_decided_again() -> None:
    async def scenario() -> None:
        h = Harness()
        manifest_set = await h.client.post("/api/v1/manifest", content=manifest(max_activations=2))
        assert manifest_set.status_code == 201
        h.store.conflicts = 2  # the first two saves lose: the third attempt is saved
        ok = await h.activate()
        assert ok.status_code == 200, ok.text
        assert h.coordinator.status().activations == {"web": 1}
        metrics = (await h.client.get("/metrics")).text
        assert "geode_store_retries_total 2.0" in metrics
        # Every attempt losing: the caller gets the conflict, and nothing was counted.
        h.store.conflicts = 5
        lost = await h.activate()
        assert (lost.status_code, lost.json()["error"]) == (409, "store_conflict")
        assert h.coordinator.status().activations == {"web": 1}
        _, raw = Sealer.unseal(h.store.saved[-1], h.sealing_key)
        assert json.loads(raw)["activations"] == {"web": 1}

    run(scenario())


def test_a_change_made_while_following_is_never_acknowledged_and_lost() -> None:
    """A change arrives while ``follow`` is asking the store whether it moved on: it is either
    saved with the state it was made on, or refused — never answered and then dropped by the
    state read in the meantime."""
    state = {"count": 1}
    store = MemoryStore()
    store.save(json.dumps({"count": 50}).encode())  # what a read of the store brings

    def reload(blob: bytes | None) -> None:
        state.update(json.loads(blob or b"{}"))

    commit = GroupCommit(lambda: json.dumps(state).encode(), store, reload=reload)

    def slow_moved_on() -> bool:
        time.sleep(0.1)  # the change below arrives meanwhile
        return True

    async def change() -> str:
        await asyncio.sleep(0.03)
        state["count"] += 1
        try:
            await commit.commit(lambda: state.update(count=state["count"] - 1))
        except StoreConflict:
            return "refused"
        return "saved"

    async def run() -> list[object]:
        return list(await asyncio.gather(commit.follow(slow_moved_on), change()))

    followed, outcome = asyncio.run(run())
    saved = [json.loads(blob) for blob in store.saved[1:]]
    if outcome == "saved":
        # What was acknowledged is what was saved: the change on the state it was made on.
        assert saved == [{"count": 2}]
        assert state == {"count": 2}
        assert followed is False  # it stood back for the waiting write
    else:
        assert not saved
