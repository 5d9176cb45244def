"""Traffic policy: may this verified peer call this route (HTTP) or port (TCP)?

``strict`` denies whatever no rule allows; ``permissive`` allows any peer with a valid mesh
certificate. A rule names its source services; with ``http`` matchers it allows the methods and
paths they match (the path regex must match the whole path, query string excluded), with ``tcp``
matchers the ports, and with neither, everything from its sources. HTTP rules never grant TCP.
Every decision is counted; every denial is logged with the peer, the rule set and the reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from geode.manifest import MeshPolicy
from geode.pki import SpiffeId

__all__ = ["Decision", "PolicyEngine"]

log = logging.getLogger("geode.policy")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class _HttpMatcher:
    methods: frozenset[str]
    path: re.Pattern[str]


@dataclass(frozen=True)
class _Rule:
    name: str
    sources: frozenset[str]
    http: tuple[_HttpMatcher, ...]
    ports: tuple[frozenset[int], ...]

    @property
    def allows_everything(self) -> bool:
        return not self.http and not self.ports


_COUNTERS: dict[int, Counter] = {}


def _counter(registry: CollectorRegistry) -> Counter:
    if id(registry) not in _COUNTERS:
        _COUNTERS[id(registry)] = Counter(
            "geode_policy_decisions",
            "Traffic policy decisions by destination, source and decision",
            ["destination", "source", "decision"],
            registry=registry,
        )
    return _COUNTERS[id(registry)]


class PolicyEngine:
    """The policy of one destination service."""

    def __init__(
        self,
        policy: MeshPolicy,
        destination: str,
        *,
        trust_domain: str | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.mode = policy.mode
        self.destination = destination
        self.trust_domain = trust_domain
        self._rules = tuple(
            _Rule(
                name=rule.name,
                sources=frozenset(rule.sources),
                http=tuple(
                    _HttpMatcher(frozenset(m.methods), re.compile(m.path)) for m in rule.http
                ),
                ports=tuple(frozenset(t.ports) for t in rule.tcp),
            )
            for rule in policy.rules
        )
        self._counter = _counter(registry)
        self.rule_names = [rule.name for rule in self._rules]

    def _peer_ok(self, peer: SpiffeId | None) -> Decision | None:
        if peer is None:
            return Decision(False, "no verified mesh identity")
        if self.trust_domain is not None and peer.trust_domain != self.trust_domain:
            return Decision(False, f"peer is in trust domain {peer.trust_domain!r}")
        if self.mode == "permissive":
            return Decision(True, "permissive mode")
        return None

    def authorize_http(self, peer: SpiffeId | None, method: str, path: str) -> Decision:
        decision = self._peer_ok(peer)
        if decision is None:
            # ``path`` is the decoded path without the query string (ASGI's scope["path"],
            # the proxy's parsed target): nothing in it is cut off here.
            source = str(peer)
            decision = Decision(False, f"no rule allows {method} {path}")
            for rule in self._rules:
                if source not in rule.sources:
                    continue
                if rule.allows_everything or any(
                    (not m.methods or method.upper() in m.methods) and m.path.fullmatch(path)
                    for m in rule.http
                ):
                    decision = Decision(True, "allowed", rule.name)
                    break
        return self._record(peer, decision, f"{method} {path}")

    def authorize_tcp(self, peer: SpiffeId | None, port: int) -> Decision:
        decision = self._peer_ok(peer)
        if decision is None:
            source = str(peer)
            decision = Decision(False, f"no rule allows TCP port {port}")
            for rule in self._rules:
                if source in rule.sources and (
                    rule.allows_everything or any(not p or port in p for p in rule.ports)
                ):
                    decision = Decision(True, "allowed", rule.name)
                    break
        return self._record(peer, decision, f"TCP port {port}")

    def _record(self, peer: SpiffeId | None, decision: Decision, what: str) -> Decision:
        source = peer.service if peer is not None and peer.service else "<none>"
        self._counter.labels(self.destination, source, "allow" if decision else "deny").inc()
        if not decision:
            log.warning(  # %r: a path may hold any character, line breaks included
                "policy denied %s -> %s %r: %r (mode %s, rules %s)",
                peer,
                self.destination,
                what,
                decision.reason,
                self.mode,
                ",".join(self.rule_names) or "none",
            )
        return decision
