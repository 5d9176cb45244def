"""Three Coordinators, each with its own sealing key, on a three-member etcd cluster (real
processes): activations go through any of them; one Coordinator SIGKILLed in the middle of a
stream of activations loses none and counts none twice beyond max_activations; with one etcd
member killed they still serve; the killed Coordinator restarts and rejoins."""

from __future__ import annotations

import base64
import collections
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from geode.attestation import SimulatedPlatform, measure_bundle
from geode.client import CoordinatorClient
from geode.errors import ActivationDenied, ClientError, GeodeError
from geode.runtime import Activation, EvidenceProvider, activate, simulated_evidence_provider
from geode.testing import EtcdCluster
from tests.conftest import StartCoordinator
from tests.support import CoordinatorProcess, sample_manifest, wait_until
from tests.support.etcd import own_sealing_key, state_in_etcd, value_in_etcd

pytestmark = pytest.mark.e2e

WEB_LIMIT = 40  # "web" has max_activations; "worker" has none
WORKERS = 3
KILL_AFTER = 12  # activations received before one Coordinator is killed


@dataclass
class Stream:
    """What the clients of a stream of activations saw."""

    received: list[Activation] = field(default_factory=list, repr=False)
    served: collections.Counter[str] = field(default_factory=collections.Counter)  # by address
    # Attempts per Coordinator (mesh address) that could not reach it: the client moved on.
    unreachable: collections.Counter[str] = field(default_factory=collections.Counter)
    conflicts: int = 0  # 409 store_conflict after activate()'s own retries: nothing was handed out
    in_flight: int = 0  # attempts begun whose outcome is not recorded yet
    # When the Coordinator was killed: those attempts may have been decided by it (directly, or
    # forwarded to it as the writer) and saved, their answers lost with it.
    in_flight_at_kill: int | None = None
    full: threading.Event = field(default_factory=threading.Event, repr=False)  # a refusal
    lock: threading.Condition = field(default_factory=threading.Condition, repr=False)


class Instances:
    """Activates instances as ``geode run`` does, pinned to the deployment's root."""

    def __init__(self, coordinator: CoordinatorProcess, bundle: Path, env: dict[str, str]) -> None:
        platform = SimulatedPlatform.load(Path(env["GEODE_PLATFORM_KEY"]))
        self.provider: EvidenceProvider = simulated_evidence_provider(
            platform, measure_bundle(bundle)
        )
        with CoordinatorClient(coordinator.client_addr, insecure=True) as client:
            self.root = x509.load_pem_x509_certificate(client.certificates().root.encode())

    def activate(self, coordinator: CoordinatorProcess, service: str) -> Activation:
        return activate(coordinator.mesh_addr, service, self.provider, root=self.root, timeout=15)

    def attempt(self, coordinator: CoordinatorProcess) -> Activation | GeodeError:
        """Activate "web": the activation, or the refusal or failure."""
        try:
            return self.activate(coordinator, "web")
        except (ActivationDenied, ClientError) as exc:
            return exc

    def stream(self, coordinators: list[CoordinatorProcess], worker: int, stream: Stream) -> None:
        """Activate "web" round robin over ``coordinators`` until one refuses with
        max_activations reached; an unreachable Coordinator is skipped (client-side failover)."""
        for turn in range(worker, worker + 1000):
            if stream.full.is_set():
                return
            target = coordinators[turn % len(coordinators)]
            with stream.lock:
                stream.in_flight += 1
            outcome = self.attempt(target)
            with stream.lock:
                stream.in_flight -= 1
                if isinstance(outcome, ActivationDenied):
                    assert outcome.reason == "max_activations reached", outcome
                    stream.full.set()
                    stream.lock.notify_all()
                    return
                if isinstance(outcome, Activation):
                    stream.received.append(outcome)
                    stream.served[target.mesh_addr] += 1
                    stream.lock.notify_all()
                elif isinstance(outcome, ClientError) and outcome.code == "store_conflict":
                    stream.conflicts += 1
                else:
                    assert isinstance(outcome, ClientError), outcome
                    assert outcome.status is None, outcome  # no answer at all
                    assert "cannot reach" in str(outcome), outcome
                    stream.unreachable[target.mesh_addr] += 1
        raise AssertionError("the stream of activations did not end")


def _serials(activations: list[Activation]) -> dict[str, int]:
    """Instance id to the serial of the certificate it received."""
    return {a.instance_id: a.certificate.serial_number for a in activations}


def _recorded(stored: dict[str, object]) -> dict[str, int]:
    """Instance id to the serial of its latest certificate, as the state in etcd records it."""
    latest = stored["latest_certificates"]
    assert isinstance(latest, dict)
    return {k: int(serial, 16) for k, (serial, _until) in latest["instances"].items()}


def _etcd_status(cluster: EtcdCluster) -> list[dict[str, Any]]:
    return [
        httpx.post(f"http://{m.endpoint}/v3/maintenance/status", json={}, timeout=5).json()
        for m in cluster
    ]


def _make_leader(cluster: EtcdCluster, index: int) -> None:
    """Hand the cluster's leadership to member ``index``, and wait until every member sees it."""
    statuses = _etcd_status(cluster)
    target = statuses[index]["header"]["member_id"]
    if statuses[index]["leader"] != target:
        leader = next(
            m
            for m, s in zip(cluster, statuses, strict=True)
            if s["leader"] == s["header"]["member_id"]
        )
        answer = httpx.post(
            f"http://{leader.endpoint}/v3/maintenance/transfer-leadership",
            json={"targetID": target},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    wait_until(
        lambda: all(s["leader"] == target for s in _etcd_status(cluster)),
        10,
        lambda: _etcd_status(cluster),
    )


def _writer(cluster: EtcdCluster) -> str:
    """The mesh address of the Coordinator that holds the writer key now."""
    holder = value_in_etcd(cluster.endpoints, "/geode/writer")
    assert holder is not None, "no writer"
    return holder.decode()


def _key_from(coordinator: CoordinatorProcess) -> str:
    """The peer (mesh address) ``coordinator`` obtained the cluster key from, as it logged."""
    found = re.findall(r"obtained the cluster key from (\S+) after", coordinator.log())
    assert len(found) == 1, coordinator.log_tail()
    return str(found[0])


def _wait_for(condition: Callable[[], bool], coordinator: CoordinatorProcess) -> None:
    """Until ``condition()`` holds; fails after 10 s (ten times the etcd poll interval)."""
    wait_until(condition, 10, coordinator.log_tail)


def test_three_coordinators_on_an_etcd_cluster_survive_crashes(
    etcd_cluster: EtcdCluster,  # first: set up before the Coordinators, torn down after them
    start_coordinator: StartCoordinator,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # The first Coordinator sets the manifest, which saves the root of trust to etcd; the others,
    # each with its own sealing key, obtain the cluster key from a peer by mutual attestation.
    a = start_coordinator(
        tmp_path / "data-a", "--store", etcd_cluster.url, *own_sealing_key(tmp_path, "a")
    )
    with CoordinatorClient(a.client_addr, insecure=True) as client:
        measurement = measure_bundle(bundle).hex()
        client.set_manifest(sample_manifest(measurement, max_activations=WEB_LIMIT).encode())
    # The test reads the shared state as a would, whoever saved it last.
    a_key = tmp_path / "keys" / "a.key"
    cluster_key = base64.b64decode(state_in_etcd(etcd_cluster.endpoints, a_key)["cluster_key"])

    def stored_state() -> dict[str, Any]:
        return state_in_etcd(etcd_cluster.endpoints, a_key, cluster_key)

    b, c = (
        start_coordinator(
            tmp_path / f"data-{n}", "--store", etcd_cluster.url, *own_sealing_key(tmp_path, n)
        )
        for n in "bc"
    )
    coordinators = [a, b, c]
    assert _key_from(b) == a.mesh_addr
    assert _key_from(c) in (a.mesh_addr, b.mesh_addr)
    assert len({x.status()["root_fingerprint"] for x in coordinators}) == 1
    instances = Instances(a, bundle, geode_env)

    # A stream of activations over all three. The writer (the others forward activations to it)
    # is SIGKILLed in the middle of it: the hardest one to lose.
    stream = Stream()
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = [pool.submit(instances.stream, coordinators, w, stream) for w in range(WORKERS)]
        with stream.lock:
            assert stream.lock.wait_for(
                lambda: len(stream.received) >= KILL_AFTER or any(r.done() for r in runs),
                timeout=60,
            )
            for run in runs:
                if run.done():
                    run.result()  # a client's failure, raised here
                    raise AssertionError("the stream ended before a Coordinator was killed")
            writer = _writer(etcd_cluster)
            killed = next(x for x in coordinators if x.mesh_addr == writer)
            assert killed.process is not None
            killed.process.kill()
            killed.process.wait()
            # No outcome is recorded while the lock is held: these began before the kill.
            stream.in_flight_at_kill = stream.in_flight
            received_at_kill = len(stream.received)
        for run in runs:
            run.result(timeout=120)
    survivors = [x for x in coordinators if x is not killed]
    assert stream.unreachable.keys() <= {killed.mesh_addr}, f"survivors unreachable: {stream}"
    # All three served, and the survivors went on after the kill.
    assert all(stream.served[x.mesh_addr] > 0 for x in coordinators), stream
    assert len(stream.received) > received_at_kill, stream
    # A refusal during the stream may have counted an activation not saved yet, then undone
    # after a lost compare-and-swap: each survivor is asked until it refuses, one client at a
    # time (then a refusal is final).
    late: list[Activation] = []
    for survivor in survivors:
        while isinstance(outcome := instances.attempt(survivor), Activation):
            late.append(outcome)
        assert isinstance(outcome, ActivationDenied), outcome
        assert outcome.reason == "max_activations reached", outcome
    received = stream.received + late

    # Never beyond the limit, no certificate handed out twice: etcd counts exactly the limit,
    # and the survivors agree (within --etcd-poll).
    received_serials = _serials(received)
    assert len(received_serials) == len(received)
    assert len(set(received_serials.values())) == len(received)
    stored = stored_state()
    assert stored["activations"] == {"web": WEB_LIMIT}
    for survivor in survivors:
        _wait_for(lambda x=survivor: x.status()["activations"] == stored["activations"], survivor)
    # No activation lost: every certificate a client received is on record in etcd as its
    # instance's latest. The record may hold more: activations the killed Coordinator decided and
    # saved just before it died, whose answers never reached their clients; at most one per
    # attempt in flight at the kill (each client has one at a time).
    recorded = _recorded(stored)
    assert len(recorded) == WEB_LIMIT
    assert received_serials.items() <= recorded.items()
    unanswered = recorded.keys() - received_serials.keys()
    assert stream.in_flight_at_kill is not None
    assert len(unanswered) <= stream.in_flight_at_kill <= WORKERS, (
        f"{len(received)} received of {WEB_LIMIT} counted; {stream}"
    )

    # One etcd member killed: the first, which every Coordinator talks to (they try the members
    # in turn from the last that answered), made the leader first, so that the cluster must also
    # elect another. The Coordinators still serve.
    _make_leader(etcd_cluster, 0)
    etcd_cluster.kill(0)
    for survivor in survivors:
        with pytest.raises(ActivationDenied, match="max_activations reached"):
            instances.activate(survivor, "web")
        worker = instances.activate(survivor, "worker")
        assert _recorded(stored_state())[worker.instance_id] == worker.certificate.serial_number
    stored = stored_state()
    assert stored["activations"] == {"web": WEB_LIMIT, "worker": 2}
    for survivor in survivors:
        _wait_for(lambda x=survivor: x.status()["activations"] == stored["activations"], survivor)

    # The killed Coordinator restarts on its data directory, ports, sealing key and store: it
    # opens the shared state with its own copy of the cluster key, and serves it.
    log_before = len(killed.log())
    killed.start()
    assert "asking a peer" not in killed.log()[log_before:]
    status = killed.status()
    assert status["state"] == "active"
    assert status["root_fingerprint"] == survivors[0].status()["root_fingerprint"]
    assert status["manifest_sha256"] == survivors[0].status()["manifest_sha256"]
    assert status["activations"] == stored["activations"]
    with pytest.raises(ActivationDenied, match="max_activations reached"):
        instances.activate(killed, "web")
    rejoined = instances.activate(killed, "worker")
    stored = stored_state()
    assert stored["activations"] == {"web": WEB_LIMIT, "worker": 3}
    assert _recorded(stored)[rejoined.instance_id] == rejoined.certificate.serial_number
    for coordinator in coordinators:
        _wait_for(
            lambda x=coordinator: x.status()["activations"] == stored["activations"], coordinator
        )
    assert base64.b64decode(stored["manifest"]) == (
        sample_manifest(measurement, max_activations=WEB_LIMIT).encode()
    )


def test_coordinators_started_before_the_manifest_follow_it(
    etcd_cluster: EtcdCluster,  # first: set up before the Coordinators, torn down after them
    start_coordinator: StartCoordinator,
    bundle: Path,
    geode_env: dict[str, str],
    tmp_path: Path,
) -> None:
    coordinators = [
        start_coordinator(
            tmp_path / f"data-{n}", "--store", etcd_cluster.url, *own_sealing_key(tmp_path, n)
        )
        for n in "abc"
    ]
    with CoordinatorClient(coordinators[0].client_addr, insecure=True) as client:
        client.set_manifest(sample_manifest(measure_bundle(bundle).hex()).encode())
    wanted = coordinators[0].status()
    for other in coordinators[1:]:  # a state their keys do not open: they ask their peers
        _wait_for(lambda o=other: o.status()["manifest_sha256"] == wanted["manifest_sha256"], other)
        assert other.status()["root_fingerprint"] == wanted["root_fingerprint"]
        assert _key_from(other) in {x.mesh_addr for x in coordinators} - {other.mesh_addr}
    instances = Instances(coordinators[0], bundle, geode_env)
    for coordinator in coordinators:
        instances.activate(coordinator, "web")
    for coordinator in coordinators:  # each counts all three, within --etcd-poll
        _wait_for(lambda c=coordinator: c.status()["activations"] == {"web": 3}, coordinator)
