"""What one service needs to take part in the mesh, derived from the manifest.

The Coordinator hands every instance its ``MeshConfig`` at activation: the traffic rules where the
service is the destination (sources as SPIFFE ids), and its transparent-TLS listeners. The runtime
enforces it; nothing in it is secret.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from geode.manifest._model import HttpRule, Manifest, OutgoingTls, TcpRule

__all__ = [
    "EgressRoute",
    "IngressRoute",
    "MeshConfig",
    "MeshPolicy",
    "MeshRule",
    "egress_peers",
    "mesh_config",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeshRule(_Wire):
    name: str
    sources: list[str]  # SPIFFE ids
    http: list[HttpRule] = Field(default_factory=list)
    tcp: list[TcpRule] = Field(default_factory=list)


class MeshPolicy(_Wire):
    mode: Literal["strict", "permissive"] = "strict"
    rules: list[MeshRule] = Field(default_factory=list)


class IngressRoute(_Wire):
    port: int
    app_port: int
    protocol: Literal["http", "tcp"]
    app_reads_bodies: bool = False  # the manifest's ``IncomingTls.app_reads_bodies``


class EgressRoute(_Wire):
    host: str
    port: int
    local_port: int
    peers: list[str]  # SPIFFE ids the destination may present


class MeshConfig(_Wire):
    trust_domain: str
    service: str
    spiffe_id: str
    policy: MeshPolicy = Field(default_factory=MeshPolicy)
    ingress: list[IngressRoute] = Field(default_factory=list)
    egress: list[EgressRoute] = Field(default_factory=list)


def egress_peers(m: Manifest, outgoing: OutgoingTls) -> list[str]:
    """The services an outgoing TLS connection may end at: the one it names, else those with
    its host among their DNS names (none: the egress refuses every connection)."""
    if outgoing.service is not None:
        return [outgoing.service]
    return sorted(n for n, s in m.services.items() if outgoing.host in s.dns_names)


def _spiffe(manifest: Manifest, service: str) -> str:
    return f"spiffe://{manifest.trust_domain}/service/{service}"


def mesh_config(manifest: Manifest, service: str) -> MeshConfig:
    """The mesh view of ``service``: its inbound rules and its transparent-TLS routes."""
    rules = [
        MeshRule(
            name=rule.name,
            sources=[_spiffe(manifest, s) for s in rule.sources],
            http=rule.http,
            tcp=rule.tcp,
        )
        for rule in manifest.policies.rules
        if rule.destination == service
    ]
    ingress: list[IngressRoute] = []
    egress: list[EgressRoute] = []
    for tag in manifest.services[service].tls:
        for incoming in manifest.tls[tag].incoming:
            ingress.append(
                IngressRoute(
                    port=incoming.port,
                    app_port=incoming.resolved_app_port,
                    protocol=incoming.protocol,
                    app_reads_bodies=incoming.app_reads_bodies,
                )
            )
        for outgoing in manifest.tls[tag].outgoing:
            egress.append(
                EgressRoute(
                    host=outgoing.host,
                    port=outgoing.port,
                    local_port=outgoing.resolved_local_port,
                    peers=[_spiffe(manifest, p) for p in egress_peers(manifest, outgoing)],
                )
            )
    return MeshConfig(
        trust_domain=manifest.trust_domain,
        service=service,
        spiffe_id=_spiffe(manifest, service),
        policy=MeshPolicy(mode=manifest.policies.mode, rules=rules),
        ingress=ingress,
        egress=egress,
    )
