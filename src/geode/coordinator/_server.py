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
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.x509.oid import NameOID

import geode
from geode.attestation import EvidenceVerifier, SimulatedPlatform, measure_bundle
from geode.coordinator._api import build_apps
from geode.coordinator._core import Coordinator, CoordinatorSettings, State
from geode.coordinator._persist import GroupCommit
from geode.coordinator._seal import default_sealing_key_path, load_or_create_sealing_key
from geode.coordinator._store import DirectoryStore
from geode.errors import GeodeError, SealError
from geode.pki import (
    COORDINATOR_URI,
    CertificateAuthority,
    LeafParams,
    certificate_pem,
    generate_private_key,
    private_key_pem,
)

__all__ = [
    "CoordinatorConfig",
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
    simulation: bool = False
    sealing_key: Path | None = None
    platform_key: Path | None = None
    trusted_platform_keys: Sequence[Path] = ()
    san: Sequence[str] = ()
    leaf_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    nonce_ttl: datetime.timedelta = datetime.timedelta(seconds=60)
    log_level: str = "info"


def _server_names(config: CoordinatorConfig) -> tuple[list[str], list[str]]:
    dns = {"localhost", socket.gethostname().lower()}
    ips = {"127.0.0.1", "::1"}
    for name in (config.client_addr[0], config.mesh_addr[0], *config.san):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns.add(name.lower())
        else:
            if not ip.is_unspecified:
                ips.add(str(ip))
    return sorted(dns), sorted(ips)


@contextlib.contextmanager
def _temporary_key_file(key_pem_encrypted: bytes) -> Iterator[str]:
    shm = "/dev/shm"  # noqa: S108 - a tmpfs keeps the (encrypted) key off the disk
    base = shm if os.path.isdir(shm) else None
    fd, path = tempfile.mkstemp(prefix="geode-", suffix=".key", dir=base)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem_encrypted)
        yield path
    finally:
        os.unlink(path)


def server_ssl_context(coordinator: Coordinator, config: CoordinatorConfig) -> ssl.SSLContext:
    """TLS for both APIs. The key reaches OpenSSL through a file, encrypted under a one-time
    password that exists only in memory."""
    key = generate_private_key()
    dns, ips = _server_names(config)
    if coordinator.state is State.RECOVERY:
        # No root key while in recovery: a self-signed certificate serves the status endpoint.
        authority = CertificateAuthority.create_root("Geode Coordinator (recovery)")
        chain = [authority.certificate]
    else:
        authority = coordinator.root_authority
        chain = []
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Geode Coordinator")])
    cert = authority.issue(
        LeafParams(
            public_key=key.public_key(),
            common_name="Geode Coordinator",
            subject=subject,
            uris=[COORDINATOR_URI],
            dns_names=dns,
            ip_addresses=ips,
            lifetime=datetime.timedelta(days=365),
            client=False,
        )
    )
    password = os.urandom(32).hex().encode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as cert_file:
        cert_file.write(certificate_pem(cert) + "".join(certificate_pem(c) for c in chain))
        cert_file.flush()
        with _temporary_key_file(private_key_pem(key, password)) as key_path:
            context.load_cert_chain(cert_file.name, key_path, password=password)
    return context


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to ``serve``, which runs two of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def open_coordinator(config: CoordinatorConfig) -> tuple[Coordinator, DirectoryStore]:
    """Build the Coordinator from its configuration and unseal its state."""
    if not config.simulation:
        raise GeodeError(
            "no TEE quote provider is available on this machine; start with --simulation"
        )
    sealing_path = config.sealing_key or default_sealing_key_path()
    if sealing_path.resolve().is_relative_to(config.data_dir.resolve()):
        raise SealError(
            f"the sealing key {sealing_path} must not live in the data directory it protects"
        )
    sealing_key = load_or_create_sealing_key(sealing_path)
    platform = SimulatedPlatform.load_or_create(config.platform_key)
    trusted = [platform.public_key]
    trusted += [SimulatedPlatform.load(p).public_key for p in config.trusted_platform_keys]
    coordinator = Coordinator(
        CoordinatorSettings(
            simulation=True,
            leaf_lifetime=config.leaf_lifetime,
            nonce_ttl=config.nonce_ttl,
        ),
        EvidenceVerifier(simulation=True, platform_keys=trusted),
        platform,
        coordinator_measurement(),
        sealing_key,
    )
    store = DirectoryStore(config.data_dir)
    blob = store.load()
    coordinator.load(blob)
    if blob is None:
        log.info("new deployment: root of trust created (saved with the first manifest)")
    return coordinator, store


async def _serve(config: CoordinatorConfig) -> int:
    coordinator, store = open_coordinator(config)
    try:
        persist = GroupCommit(coordinator.sealed_state, store)
        client_app, mesh_app = build_apps(coordinator, persist)
        context = server_ssl_context(coordinator, config)

        def tls(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return context

        servers = []
        for app, (host, port) in ((client_app, config.client_addr), (mesh_app, config.mesh_addr)):
            uv_config = uvicorn.Config(
                app,
                host=host,
                port=port,
                http="httptools",
                loop="none",
                lifespan="off",
                access_log=False,
                log_config=None,
                timeout_keep_alive=30,
                server_header=False,
                ssl_context_factory=tls,
            )
            servers.append(_Server(uv_config))

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
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        failed = [s for s in servers if not s.started]
        return 1 if failed else 0
    finally:
        store.close()


def serve(config: CoordinatorConfig) -> int:
    """Run the Coordinator until SIGINT or SIGTERM; returns the process exit code."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.simulation:
        log.warning(SIMULATION_BANNER)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on CPython
        return asyncio.run(_serve(config))
    return int(uvloop.run(_serve(config)))
