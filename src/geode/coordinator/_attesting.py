"""What the Coordinator attests with, and seals with, as its configuration says: a simulated
platform (the platform and sealing key files) or the host's TEE (found by ``probe_host``,
attested once at start), and the verifiers of services' and peers' evidence.

Everything here happens before the store is opened: a host without a usable TEE leaves no data
directory behind. The host TEE, the probe and the trust anchors come from ``StartDeps``, which
only the Python API fills in (tests); production runs ``probe_host`` under the pinned roots.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import geode
from geode.attestation import (
    EvidenceVerifier,
    HostProbe,
    HostTee,
    SimulatedPlatform,
    TrustAnchors,
    attach_snp_certs,
    measure_bundle,
)
from geode.coordinator._cluster import coordinator_peer_verifier
from geode.coordinator._config import CoordinatorConfig
from geode.coordinator._seal import default_sealing_key_path, load_or_create_sealing_key
from geode.coordinator._tee import CoordinatorTee, HardwareTee, SimulatedTee
from geode.errors import EvidenceError, GeodeError, SealError

__all__ = [
    "NO_SEALING_KEY_WARNING",
    "Attesting",
    "StartDeps",
    "coordinator_measurement",
    "hardware",
    "read_collateral",
    "simulated",
    "with_tee_certs",
]

log = logging.getLogger("geode.coordinator")

NO_SEALING_KEY_WARNING = (
    "*** NO SEALING KEY: %s gives this Coordinator no key that survives a restart; the state "
    "is sealed with a random key of this process only. After a restart it opens only through "
    "a running peer Coordinator (etcd store) or the manifest's recovery parties, so a manifest "
    "without a recovery section is refused. ***"
)


def coordinator_measurement() -> bytes:
    """In simulation, the Coordinator's measurement is that of the installed ``geode`` package."""
    return measure_bundle(Path(geode.__file__).parent)


def read_collateral(config: CoordinatorConfig) -> dict[str, bytes]:
    """The verification collateral given per evidence kind (Intel: TCB info, QE identity and
    CRLs as ``geode evidence verify --collateral`` takes them), read once at start."""
    collateral = {}
    for kind, path in config.collateral.items():
        try:
            collateral[kind] = path.read_bytes()
        except OSError as exc:
            raise GeodeError(f"--collateral {kind}={path}: {exc.strerror}") from None
    return collateral


@dataclass(frozen=True)
class StartDeps:
    """What tests put under a Coordinator: its host TEE (or the probe that finds it) and the
    trust anchors hardware evidence is checked against."""

    host: HostTee | None
    probe: HostProbe
    trust: TrustAnchors


@dataclass(frozen=True)
class Attesting:
    """What the Coordinator attests with and checks others against, and its sealing key
    (``durable``: the same after a restart). The key stays out of ``repr``: a repr ends up
    in logs and tracebacks."""

    tee: CoordinatorTee
    verifier: EvidenceVerifier
    peer_verifier: EvidenceVerifier
    sealing_key: bytes = field(repr=False)
    durable: bool


def simulated(config: CoordinatorConfig, trust: TrustAnchors) -> Attesting:
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
    collateral = read_collateral(config)
    tee = SimulatedTee(platform, coordinator_measurement())
    return Attesting(
        tee,
        EvidenceVerifier(
            simulation=True, platform_keys=trusted, collateral=collateral, trust=trust
        ),
        coordinator_peer_verifier(tee, peers, collateral, trust),
        sealing_key,
        durable=True,
    )


def hardware(config: CoordinatorConfig, deps: StartDeps) -> Attesting:
    """The host's TEE (``NoTeeError`` listing every interface probed when there is none),
    attested once to learn this Coordinator's identity; its sealing key, or a random one for
    this process when the TEE has none. No simulated platform key is made or read."""
    host = deps.host
    if host is None:
        host = deps.probe(config.tee, sgx_sealing=config.sgx_sealing)
    if config.tee_certs is not None:
        host = with_tee_certs(host, config.tee_certs)
    collateral = read_collateral(config)
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
    return Attesting(
        tee,
        verifier,
        coordinator_peer_verifier(tee, (), collateral, deps.trust),
        sealing_key,
        durable,
    )


def with_tee_certs(host: HostTee, path: Path) -> HostTee:
    """``host`` whose SEV-SNP evidence carries the certificates in ``path`` (``--tee-certs``)
    when its interface gives none; ``GeodeError`` for a file that cannot be read or holds no
    VCEK or VLEK, or a host that is not SEV-SNP (``--tee auto`` found another TEE)."""
    if host.kind != "sev-snp":
        raise GeodeError(
            f"--tee-certs is for SEV-SNP, and this Coordinator runs in {host.kind} ({host.name})"
        )
    try:
        return attach_snp_certs(host, path.read_bytes())
    except OSError as exc:
        raise GeodeError(f"--tee-certs {path}: {exc.strerror or exc}") from None
    except EvidenceError as exc:
        raise GeodeError(f"--tee-certs {path}: {exc}") from None
