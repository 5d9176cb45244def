"""Running the Coordinator: open the store, unseal, and serve both APIs over TLS on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

import geode
from geode.attestation import (
    TEE_CHOICES,
    EvidenceVerifier,
    HostTee,
    SgxSealing,
    SimulatedPlatform,
    TrustAnchors,
    measure_bundle,
    probe_host,
)
from geode.coordinator._api import build_apps
from geode.coordinator._cluster import ClusterMember, coordinator_peer_verifier
from geode.coordinator._coordinator import Coordinator
from geode.coordinator._etcd import EtcdSettings, EtcdStore
from geode.coordinator._forward import Forwarder, Writer
from geode.coordinator._holder import CoordinatorSettings, State
from geode.coordinator._limits import (
    ApiGate,
    ConnectionLimits,
    HeadLimitedProtocol,
    fit_fd_limit,
)
from geode.coordinator._listener import LimitedServer
from geode.coordinator._persist import GroupCommit
from geode.coordinator._seal import (
    default_sealing_key_path,
    load_or_create_sealing_key,
)
from geode.coordinator._store import DirectoryStore, SharedStore, Store
from geode.coordinator._tee import CoordinatorTee, HardwareTee, SimulatedTee
from geode.coordinator._tls import PeerCertificateProtocol, ServerTLS
from geode.coordinator._transaction import record_start
from geode.coordinator._validation import DEFAULT_MANIFEST_BUDGET, ManifestBudget, stop_workers
from geode.errors import GeodeError, SealError

__all__ = [
    "CoordinatorConfig",
    "HostProbe",
    "coordinator_measurement",
    "open_coordinator",
    "parse_address",
    "serve",
]

log = logging.getLogger("geode.coordinator")

SIMULATION_BANNER = (
    "*** SIMULATION MODE: evidence is signed by a simulated platform key; "
    "no hardware isolation. Do not use for production secrets. ***"
)
NO_SEALING_KEY_WARNING = (
    "*** NO SEALING KEY: %s gives this Coordinator no key that survives a restart; the state "
    "is sealed with a random key of this process only. After a restart it opens only through "
    "a running peer Coordinator (etcd store) or the manifest's recovery parties, so a manifest "
    "without a recovery section is refused. ***"
)
# The options that make sense only with a simulated platform (``--platform-key``,
# ``--sealing-key``, ``--trust-platform-key``, ``--trust-coordinator-platform-key``).
SIMULATION_ONLY = (
    "--platform-key, --sealing-key, --trust-platform-key and --trust-coordinator-platform-key"
)

# ``probe(choice)``: the host TEE ``--tee`` names, or ``NoTeeError`` (``geode.attestation.
# probe_host`` in production; tests give their fakes through ``serve``/``open_coordinator``).
HostProbe = Callable[[str], HostTee]


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


def coordinator_measurement() -> bytes:
    """In simulation, the Coordinator's measurement is that of the installed ``geode`` package."""
    return measure_bundle(Path(geode.__file__).parent)


@dataclass(frozen=True)
class CoordinatorConfig:
    data_dir: Path
    client_addr: tuple[str, int] = ("127.0.0.1", 4433)
    mesh_addr: tuple[str, int] = ("127.0.0.1", 2001)
    # The TEE to run in (``geode.attestation.TEE_CHOICES``): ``auto`` is the first usable one of
    # the host, ``simulated`` a simulated platform key; ``simulation=True`` is ``simulated``.
    tee: str = "auto"
    simulation: bool = False
    # SGX under Gramine: seal with the enclave's own key, or with its signer's (updatable code).
    sgx_sealing: SgxSealing = "mrenclave"
    # Simulation only (refused on hardware): the sealing key file and the platform keys.
    sealing_key: Path | None = None
    platform_key: Path | None = None
    # Simulated platform keys trusted for services' evidence only (``--trust-platform-key``).
    trusted_platform_keys: Sequence[Path] = ()
    # ...and for peer Coordinators' evidence, which earns the cluster key
    # (``--trust-coordinator-platform-key``); this Coordinator's own platform key is trusted
    # for both. The lists are separate: see ``geode.coordinator._cluster``.
    coordinator_platform_keys: Sequence[Path] = ()
    collateral: Mapping[str, Path] = field(default_factory=dict)  # evidence kind: its file
    san: Sequence[str] = ()
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    log_level: str = "info"
    etcd: EtcdSettings | None = None  # the etcd store; None: the state in ``data_dir``
    # Where peer Coordinators reach this one's mesh API (etcd store); None: ``mesh_addr``.
    advertise_addr: tuple[str, int] | None = None
    # How often a Coordinator on etcd checks whether another one saved (reads catch up).
    etcd_poll: datetime.timedelta = datetime.timedelta(seconds=1)
    # Connections and request heads on both APIs (``_limits``).
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # What validating a manifest or update someone sent may cost (``_validation``).
    manifest_budget: ManifestBudget = DEFAULT_MANIFEST_BUDGET

    @property
    def simulated(self) -> bool:
        """Whether it runs on a simulated platform (``--simulation`` or ``--tee simulated``)."""
        return self.simulation or self.tee == "simulated"

    def check(self) -> None:
        """``GeodeError`` for a combination that cannot run: an unknown TEE, ``simulation``
        with a hardware TEE, or simulated platform keys given to a hardware Coordinator (a
        host could sign anything with them)."""
        if self.tee not in TEE_CHOICES:
            raise GeodeError(f"--tee {self.tee}: expected one of {', '.join(TEE_CHOICES)}")
        if self.simulation and self.tee not in ("auto", "simulated"):
            raise GeodeError(f"--simulation contradicts --tee {self.tee}")
        if not self.simulated and (
            self.sealing_key
            or self.platform_key
            or self.trusted_platform_keys
            or self.coordinator_platform_keys
        ):
            raise GeodeError(f"{SIMULATION_ONLY} are for simulation only (--tee simulated)")


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


def _read_collateral(config: CoordinatorConfig) -> dict[str, bytes]:
    """The verification collateral given per evidence kind (Intel: TCB info, QE identity and
    CRLs as ``geode evidence verify --collateral`` takes them), read once at start."""
    collateral = {}
    for kind, path in config.collateral.items():
        try:
            collateral[kind] = path.read_bytes()
        except OSError as exc:
            raise GeodeError(f"--collateral {kind}={path}: {exc.strerror}") from None
    return collateral


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
    opened = _open(config, _Deps(host, probe, trust or TrustAnchors()))
    return opened.coordinator, opened.store


@dataclass(frozen=True)
class _Deps:
    host: HostTee | None
    probe: HostProbe | None
    trust: TrustAnchors


@dataclass(frozen=True)
class _Attesting:
    """What the Coordinator attests with and checks others against, and its sealing key
    (``durable``: the same after a restart)."""

    tee: CoordinatorTee
    verifier: EvidenceVerifier
    peer_verifier: EvidenceVerifier
    sealing_key: bytes
    durable: bool


def _simulated(config: CoordinatorConfig, trust: TrustAnchors) -> _Attesting:
    """Simulation: the sealing key file and the simulated platform key (both created if
    missing), and the platform keys trusted for services and for peers."""
    sealing_path = config.sealing_key or default_sealing_key_path()
    if sealing_path.resolve().is_relative_to(config.data_dir.resolve()):
        raise SealError(
            f"the sealing key {sealing_path} must not live in the data directory it protects"
        )
    sealing_key = load_or_create_sealing_key(sealing_path)
    platform = SimulatedPlatform.load_or_create(config.platform_key)
    trusted = [platform.public_key]
    trusted += [SimulatedPlatform.load(p).public_key for p in config.trusted_platform_keys]
    peers = [SimulatedPlatform.load(p).public_key for p in config.coordinator_platform_keys]
    collateral = _read_collateral(config)
    tee = SimulatedTee(platform, coordinator_measurement())
    return _Attesting(
        tee,
        EvidenceVerifier(
            simulation=True, platform_keys=trusted, collateral=collateral, trust=trust
        ),
        coordinator_peer_verifier(tee, peers, collateral, trust),
        sealing_key,
        durable=True,
    )


def _hardware(config: CoordinatorConfig, deps: _Deps) -> _Attesting:
    """The host's TEE (``NoTeeError`` listing every interface probed when there is none),
    attested once to learn this Coordinator's identity; its sealing key, or a random one for
    this process when the TEE has none. No simulated platform key is made or read."""
    host = deps.host
    if host is None:
        if deps.probe is not None:
            host = deps.probe(config.tee)
        else:
            host = probe_host(config.tee, sgx_sealing=config.sgx_sealing)
    collateral = _read_collateral(config)
    verifier = EvidenceVerifier(simulation=False, collateral=collateral, trust=deps.trust)
    tee = HardwareTee.start(host, verifier, sgx_sealing=config.sgx_sealing)
    sealing_key = host.sealing_key()
    durable = sealing_key is not None
    if sealing_key is None:
        log.warning(NO_SEALING_KEY_WARNING, host.name)
        sealing_key = os.urandom(32)
    log.info(
        "hardware mode: %s (%s), measurement %s; sealing: %s",
        tee.tee,
        tee.interface,
        tee.measurement,
        tee.sealing,
    )
    return _Attesting(
        tee,
        verifier,
        coordinator_peer_verifier(tee, (), collateral, deps.trust),
        sealing_key,
        durable,
    )


def _open(config: CoordinatorConfig, deps: _Deps) -> _Opened:
    """``open_coordinator``, keeping this Coordinator's place among the others for ``_serve``.
    The TEE is found and attested before the store is opened: a host without one leaves no
    data directory behind."""
    config.check()
    attesting = _simulated(config, deps.trust) if config.simulated else _hardware(config, deps)
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


async def _serve(config: CoordinatorConfig, deps: _Deps) -> int:
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
    deps = _Deps(host, probe, trust or TrustAnchors())
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on CPython
            return asyncio.run(_serve(config, deps))
        return int(uvloop.run(_serve(config, deps)))
    finally:
        stop_workers()  # the manifest validation's helper processes
