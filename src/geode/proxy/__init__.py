"""Transparent TLS proxies and HTTP policy enforcement: the data plane for unmodified apps.

``TransparentProxy`` puts mutual TLS with SPIFFE identities in front of an app (ingress, with
the service's policy applied per HTTP request or per TCP connection) and behind it (egress).
``PolicyEngine`` is the one place a traffic decision is made, for the proxy and for the app
library's ``PolicyMiddleware`` alike; ``MeshSSLContext`` checks the peer's SPIFFE id in the
TLS handshake, for the proxy's egress and for the app library's mesh clients.
"""

from __future__ import annotations

from geode.proxy._connection import ProxyLimits
from geode.proxy._identity import MeshSSLContext, peer_spiffe_id
from geode.proxy._policy import Decision, PolicyEngine
from geode.proxy._proxy import MeshCredentials, TransparentProxy

__all__ = [
    "Decision",
    "MeshCredentials",
    "MeshSSLContext",
    "PolicyEngine",
    "ProxyLimits",
    "TransparentProxy",
    "peer_spiffe_id",
]
