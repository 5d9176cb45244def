"""The Coordinator: attestation-gated activation, PKI, secrets, sealed state, HTTP APIs."""

from __future__ import annotations

from geode.coordinator._api import build_apps
from geode.coordinator._attesting import HostProbe, coordinator_measurement
from geode.coordinator._audit import AuditLog, MemoryAuditLog
from geode.coordinator._coordinator import Coordinator
from geode.coordinator._etcd import EtcdSettings, EtcdStore, parse_etcd_url
from geode.coordinator._handout import ActivationRequest, ActivationResult, RenewalRequest
from geode.coordinator._holder import CoordinatorSettings, Pending, PreparedManifest, State
from geode.coordinator._limits import ConnectionLimits
from geode.coordinator._nonces import NonceStore
from geode.coordinator._persist import GroupCommit
from geode.coordinator._seal import (
    SEALING_KEY_ENV,
    Sealer,
    default_sealing_key_path,
    load_or_create_sealing_key,
)
from geode.coordinator._server import (
    CoordinatorConfig,
    open_coordinator,
    parse_address,
    serve,
)
from geode.coordinator._state import CoordinatorState, StoredSecret
from geode.coordinator._store import DirectoryStore, SharedStore, Store
from geode.coordinator._tee import CoordinatorTee, HardwareTee, SimulatedTee
from geode.coordinator._transaction import Transaction
from geode.coordinator._validation import (
    DEFAULT_MANIFEST_BUDGET,
    ManifestBudget,
    ManifestWorker,
    check_in_worker,
    stop_workers,
)

__all__ = [
    "DEFAULT_MANIFEST_BUDGET",
    "SEALING_KEY_ENV",
    "ActivationRequest",
    "ActivationResult",
    "AuditLog",
    "ConnectionLimits",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorSettings",
    "CoordinatorState",
    "CoordinatorTee",
    "DirectoryStore",
    "EtcdSettings",
    "EtcdStore",
    "GroupCommit",
    "HardwareTee",
    "HostProbe",
    "ManifestBudget",
    "ManifestWorker",
    "MemoryAuditLog",
    "NonceStore",
    "Pending",
    "PreparedManifest",
    "RenewalRequest",
    "Sealer",
    "SharedStore",
    "SimulatedTee",
    "State",
    "Store",
    "StoredSecret",
    "Transaction",
    "build_apps",
    "check_in_worker",
    "coordinator_measurement",
    "default_sealing_key_path",
    "load_or_create_sealing_key",
    "open_coordinator",
    "parse_address",
    "parse_etcd_url",
    "serve",
    "stop_workers",
]
