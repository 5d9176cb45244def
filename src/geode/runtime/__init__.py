"""The runtime: activation, ``geode run``, and the mesh for Python apps — mutual TLS with SPIFFE
identities checked in the handshake, policy middleware for ASGI, and certificate reload — and the
transparent TLS proxy that gives the same to any app."""

from __future__ import annotations

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
from geode.runtime._credentials import Credentials
from geode.runtime._evidence_source import choose_evidence_source
from geode.runtime._identity import MeshSSLContext, peer_spiffe_id
from geode.runtime._launcher import Companion, LaunchPlan, lay_out, remove_plan, run_command
from geode.runtime._policy import Decision, PolicyEngine
from geode.runtime._proxy import ProxyLimits, TransparentProxy
from geode.runtime._renewal import CertificateRenewer, renewal_time
from geode.runtime._transparent import ProxyRunner

__all__ = [
    "Activation",
    "CertificateRenewer",
    "Companion",
    "Credentials",
    "Decision",
    "EvidenceProvider",
    "LaunchPlan",
    "MeshSSLContext",
    "PolicyEngine",
    "PolicyMiddleware",
    "ProxyLimits",
    "ProxyRunner",
    "TLSExtensionProtocol",
    "TLSExtensionWSProtocol",
    "TransparentProxy",
    "activate",
    "choose_evidence_source",
    "lay_out",
    "mesh_async_client",
    "mesh_client",
    "peer_certificate",
    "peer_identity",
    "peer_spiffe_id",
    "policy_engine",
    "remove_plan",
    "renew",
    "renewal_time",
    "run_command",
    "serve_asgi",
    "simulated_evidence_provider",
    "tls_extension",
]
