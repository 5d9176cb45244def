"""Running the Coordinator: open the store, unseal, and serve both APIs over TLS on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from geode.attestation import (
    HostTee,
    TrustAnchors,
)
from geode.coordinator._api import build_apps
from geode.coordinator._attesting import HostProbe, StartDeps, hardware, simulated
from geode.coordinator._cluster import ClusterMember
from geode.coordinator._config import CoordinatorConfig
from geode.coordinator._coordinator import Coordinator
from geode.coordinator._etcd import EtcdStore
from geode.coordinator._forward import Forwarder, Writer
from geode.coordinator._holder import CoordinatorSettings, State
from geode.coordinator._limits import (
    ApiGate,
    HeadLimitedProtocol,
    fit_fd_limit,
)
from geode.coordinator._listener import LimitedServer
from geode.coordinator._persist import GroupCommit
from geode.coordinator._store import DirectoryStore, SharedStore, Store
from geode.coordinator._tls import PeerCertificateProtocol, ServerTLS
from geode.coordinator._transaction import record_start
from geode.coordinator._validation import stop_workers
from geode.errors import SealError

__all__ = [
    "CoordinatorConfig",
    "open_coordinator",
    "parse_address",
    "serve",
]

log = logging.getLogger("geode.coordinator")

SIMULATION_BANNER = (
    "*** SIMULATION MODE: evidence is signed by a simulated platform key; "
    "no hardware isolation. Do not use for production secrets. ***"
)


def parse_address(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) to a pair; raises ``ValueError`` with a reason."""
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"{value!r}: expected HOST:PORT")
        host, port = value, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: expected HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _server_names(config: CoordinatorConfig) -> tuple[list[str], list[str]]:
    dns = {"localhost", socket.gethostname().lower()}
    ips = {"127.0.0.1", "::1"}
    advertised = (config.advertise_addr or config.mesh_addr)[0]
    for name in (config.client_addr[0], config.mesh_addr[0], advertised, *config.san):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns.add(name.lower())
        else:
            if not ip.is_unspecified:
                ips.add(str(ip))
    return sorted(dns), sorted(ips)


class _Server(LimitedServer):
    """A uvicorn server within its API's limits that leaves signal handling to ``serve``,
    which runs two of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _open_store(config: CoordinatorConfig) -> Store:
    """The configured store. The data directory is locked either way: with the etcd store it
    still holds this Coordinator's copy of the cluster key."""
    if config.etcd is None:
        return DirectoryStore(config.data_dir)
    return EtcdStore(config.etcd, data_dir=config.data_dir)


def advertised_address(config: CoordinatorConfig) -> str:
    """HOST:PORT where peers reach this Coordinator's mesh API (warned about when only this
    host can)."""
    host, port = config.advertise_addr or config.mesh_addr
    if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
        host = socket.gethostname()
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        log.warning(
            "this Coordinator is listed in etcd as %s: Coordinators on other hosts cannot "
            "reach it there (set --advertise-addr)",
            name,
        )
    return name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Opened:
    """A Coordinator with its state unsealed, its store, and (on a shared store) its place
    among the others."""

    coordinator: Coordinator
    store: Store
    cluster: ClusterMember | None


def open_coordinator(
    config: CoordinatorConfig,
    *,
    host: HostTee | None = None,
    probe: HostProbe | None = None,
    trust: TrustAnchors | None = None,
) -> tuple[Coordinator, Store]:
    """Build the Coordinator from its configuration and unseal its state.

    On hardware, ``host`` is its TEE (else ``probe(config.tee)``, else ``probe_host``) and
    ``trust`` what hardware evidence is checked against (else the pinned vendor roots): the only
    way to run it on a fake TEE or under test roots. No flag or environment variable reaches
    either."""
    opened = _open(config, StartDeps(host, probe, trust or TrustAnchors()))
    return opened.coordinator, opened.store


def _open(config: CoordinatorConfig, deps: StartDeps) -> _Opened:
    """``open_coordinator``, keeping this Coordinator's place among the others for ``_serve``.
    The TEE is found and attested before the store is opened: a host without one leaves no
    data directory behind."""
    config.check()
    attesting = simulated(config, deps.trust) if config.simulated else hardware(config, deps)
    sealing_key = attesting.sealing_key
    store = _open_store(config)
    shared = store.shared
    settings = CoordinatorSettings(
        simulation=config.simulated,
        durable_sealing=attesting.durable,
        leaf_lifetime=config.leaf_lifetime,
        nonce_ttl=config.nonce_ttl,
        shared_nonces=shared is not None,
        manifest_budget=config.manifest_budget,
    )
    coordinator = Coordinator(
        settings,
        attesting.verifier,
        attesting.tee,
        sealing_key,
        audit=store.audit,
        peer_verifier=attesting.peer_verifier,
    )
    cluster = None
    try:
        blob = store.load()
        if shared is None:
            coordinator.load(blob)
        else:
            cluster = ClusterMember(
                advertised_address(config),
                config.data_dir,
                shared,
                sealing_key,
                keep_copy=attesting.durable,
            )
            cluster.started_empty = blob is None
            cluster_key = local = cluster.local_key()
            if blob is not None and not cluster.opens(blob, cluster_key):
                log.warning("the shared state does not open here yet: asking a peer")
                cluster_key = cluster.join(blob, coordinator.cluster_keys.join_party()) or local
            coordinator.load(blob, cluster_key)
            cluster.keep(coordinator.cluster_key)
            cluster.register(attesting.tee.tee, attesting.tee.measurement)
    except BaseException:
        store.close()
        raise
    if blob is None:
        log.info("new deployment: root of trust created (saved with the first manifest)")
        aside = store.audit.set_aside(coordinator.started_at)
        if aside is not None:
            log.warning("%s", aside)
    # Audit the start: saved now when there is a saved state (with the first manifest when
    # not), and appended to the log together with anything a crash kept from it.
    record_start(coordinator.record_start, coordinator.held, store, coordinator.reload, store.audit)
    return _Opened(coordinator, store, cluster)


def _api_server(
    app: Starlette,
    address: tuple[str, int],
    context: ssl.SSLContext,
    protocol: type[HeadLimitedProtocol],
    gate: ApiGate,
) -> _Server:
    """One API's server: TLS with ``context``, within ``gate``'s limits."""
    config = uvicorn.Config(
        app,
        host=address[0],
        port=address[1],
        http=protocol,
        ws="none",
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        # (The protocol sets its own from gate.limits.idle_timeout: this one is whole seconds.)
        timeout_keep_alive=max(1, round(gate.limits.idle_timeout)),
        # An idle TLS connection whose client does not read (a peer Coordinator's pool, say)
        # would hold the shutdown for the TLS close timeout: 5 s at most.
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return _Server(config, protocol, gate, context)


async def _serve(config: CoordinatorConfig, deps: StartDeps) -> int:
    opened = _open(config, deps)
    coordinator, store, cluster = opened.coordinator, opened.store, opened.cluster
    try:
        tls = ServerTLS(coordinator, *_server_names(config))

        joining: list[asyncio.Task[None]] = []

        def reload(blob: bytes | None) -> None:
            # Another Coordinator saved first (shared store): serve its state, certificate too.
            # Raising means not adopted: the store then still expects the state served here.
            if coordinator.state is State.RECOVERY:
                raise SealError(
                    "in recovery, a newer shared state is not adopted: restart this "
                    "Coordinator to open it"
                )
            try:
                coordinator.reload(blob, cluster.offered if cluster else None)
            except SealError:
                # Two new deployments raced on one store and this one lost: its own state was
                # never saved, so it may take the winner's cluster key from a peer that attests
                # to it (in a thread; adopted with a later read). A Coordinator that has served
                # a saved state never swaps it for one it cannot open.
                if (
                    cluster is not None
                    and blob is not None
                    and cluster.started_empty
                    and persist.writes == 0
                    and not (joining and not joining[-1].done())
                ):
                    joining[:] = [asyncio.get_running_loop().create_task(join_later(blob))]
                raise
            if cluster is not None:
                cluster.keep(coordinator.cluster_key)
            tls.refresh()

        async def join_later(blob: bytes) -> None:
            assert cluster is not None
            party = coordinator.cluster_keys.join_party()
            try:
                key = await asyncio.to_thread(cluster.join, blob, party)
            except Exception:  # tried again with the next read of the store
                log.exception("the cluster key could not be asked for")
                return
            if key is not None:
                cluster.offered = key

        def changed() -> None:
            tls.refresh()
            if cluster is not None:  # after a recovery, the state's cluster key is known
                cluster.keep(coordinator.cluster_key)

        persist = GroupCommit(coordinator.sealed_state, store, reload=reload)
        writer = forwarder = None
        if cluster is not None:
            writer = Writer(cluster.store, cluster.name)
            forwarder = Forwarder(writer, lambda: coordinator.ca_pems[0])
        client_app, mesh_app = build_apps(
            coordinator, persist, on_change=changed, forward=forwarder
        )

        limits = fit_fd_limit(config.limits)
        client = ApiGate(
            "client API", limits, limits.client_max_connections, "--client-max-connections"
        )
        mesh = ApiGate("mesh API", limits, limits.mesh_max_connections, "--mesh-max-connections")
        servers = [
            _api_server(
                client_app, config.client_addr, tls.client, PeerCertificateProtocol, client
            ),
            _api_server(mesh_app, config.mesh_addr, tls.mesh, HeadLimitedProtocol, mesh),
        ]

        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        if coordinator.state is State.RECOVERY:
            log.error("coordinator is in RECOVERY: %s", coordinator.recovery_reason)
        log.info(
            "coordinator %s: client API https://%s:%d, mesh API https://%s:%d",
            coordinator.state.value,
            *config.client_addr,
            *config.mesh_addr,
        )
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        background = []
        if cluster is not None and writer is not None:
            interval = config.etcd_poll.total_seconds()
            in_recovery = lambda: coordinator.state is State.RECOVERY  # noqa: E731
            background.append(
                asyncio.create_task(_follow(cluster.store, persist, interval, in_recovery))
            )
            background.append(asyncio.create_task(writer.run()))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*tasks, *background, return_exceptions=True)
        if writer is not None and forwarder is not None:
            await asyncio.to_thread(writer.resign)
            await forwarder.close()
        failed = [s for s in servers if not s.started]
        return 1 if failed else 0
    finally:
        store.close()


async def _follow(
    store: SharedStore, persist: GroupCommit, interval: float, paused: Callable[[], bool]
) -> None:
    """Every ``interval`` seconds, adopt what another Coordinator saved to the shared store
    (not while ``paused()``: in recovery)."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        if paused():
            continue
        try:
            await persist.follow(store.moved_on)
        except Exception as exc:  # the loop must outlive any one failure
            if not failing:  # once per outage, not once per second
                log.warning("etcd cannot be read to follow the other Coordinators: %s", exc)
            failing = True
        else:
            failing = False


def serve(
    config: CoordinatorConfig,
    *,
    host: HostTee | None = None,
    probe: HostProbe | None = None,
    trust: TrustAnchors | None = None,
) -> int:
    """Run the Coordinator until SIGINT or SIGTERM; returns the process exit code. ``host``,
    ``probe`` and ``trust`` as ``open_coordinator`` takes them (tests only)."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config.check()
    if config.simulated:
        log.warning(SIMULATION_BANNER)
    deps = StartDeps(host, probe, trust or TrustAnchors())
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on CPython
            return asyncio.run(_serve(config, deps))
        return int(uvloop.run(_serve(config, deps)))
    finally:
        stop_workers()  # the manifest validation's helper processes
