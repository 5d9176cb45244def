"""The runtime library for Python apps in the mesh: activation, the credentials ``geode run``
gives a service, mutual TLS with SPIFFE identities checked in the handshake, mesh clients,
policy middleware for ASGI, a TLS-aware uvicorn server, and certificate reload.

What ``geode run`` itself is made of (laying out credentials, running the command beside the
transparent TLS proxy, renewal) is ``geode.runtime.launcher``; the proxy is ``geode.proxy``.
"""

from __future__ import annotations

from geode.pki import peer_spiffe_id
from geode.protocol import MeshSSLContext
from geode.runtime._activation import (
    Activation,
    EvidenceProvider,
    activate,
    renew,
    simulated_evidence_provider,
)
from geode.runtime._asgi import (
    PolicyMiddleware,
    mesh_async_client,
    mesh_client,
    peer_identity,
    policy_engine,
    serve_asgi,
)
from geode.runtime._asgi_tls import (
    TLSExtensionProtocol,
    TLSExtensionWSProtocol,
    peer_certificate,
    tls_extension,
)
from geode.runtime._bundle import (
    BUNDLE_DIR_ENV,
    BUNDLE_LOCK_ENV,
    LOCK_FILE,
    BundleLock,
    LockedExecutable,
    locked_executable,
    read_lock,
    write_lock,
)
from geode.runtime._credentials import Credentials

__all__ = [
    "BUNDLE_DIR_ENV",
    "BUNDLE_LOCK_ENV",
    "LOCK_FILE",
    "Activation",
    "BundleLock",
    "Credentials",
    "EvidenceProvider",
    "LockedExecutable",
    "MeshSSLContext",
    "PolicyMiddleware",
    "TLSExtensionProtocol",
    "TLSExtensionWSProtocol",
    "activate",
    "locked_executable",
    "mesh_async_client",
    "mesh_client",
    "peer_certificate",
    "peer_identity",
    "peer_spiffe_id",
    "policy_engine",
    "read_lock",
    "renew",
    "serve_asgi",
    "simulated_evidence_provider",
    "tls_extension",
    "write_lock",
]
