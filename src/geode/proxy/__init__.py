"""Transparent TLS proxies and HTTP policy enforcement: the data plane for unmodified apps.

``TransparentProxy`` puts mutual TLS with SPIFFE identities in front of an app (ingress, with
the service's policy applied per HTTP request or per TCP connection) and behind it (egress).
``PolicyEngine`` is the one place a traffic decision is made, and ``normal_target`` the one
normal form of the path it judges, for the proxy and for the app library's ``PolicyMiddleware``
alike. The proxy's TLS contexts come from the ``MeshCredentials`` it is given
(``geode.runtime.Credentials``, whose contexts ``geode.protocol`` makes: its egress checks the
destination's SPIFFE id in the handshake), and it reads a peer's identity with
``geode.pki.peer_spiffe_id``.
"""

from __future__ import annotations

from geode.proxy._connection import ProxyLimits
from geode.proxy._http_gate import NormalTarget, normal_target
from geode.proxy._policy import Decision, PolicyEngine
from geode.proxy._proxy import MeshCredentials, TransparentProxy

__all__ = [
    "Decision",
    "MeshCredentials",
    "NormalTarget",
    "PolicyEngine",
    "ProxyLimits",
    "TransparentProxy",
    "normal_target",
]
