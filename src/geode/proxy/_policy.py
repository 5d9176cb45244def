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
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from geode.manifest import MeshConfig, MeshPolicy
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


# One counter per registry, for as long as the registry lives (keyed by the registry itself: an
# id could be reused by a later registry once the first is gone).
_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
# Allowed HTTP decisions are remembered, for paths up to this long, this many at most.
_CACHED_PATH = 256
_CACHED_DECISIONS = 4096


def _counter(registry: CollectorRegistry) -> Counter:
    if registry not in _COUNTERS:
        _COUNTERS[registry] = Counter(
            "geode_policy_decisions",
            "Traffic policy decisions by destination, source and decision",
            ["destination", "source", "decision"],
            registry=registry,
        )
    return _COUNTERS[registry]


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
        self._children: dict[tuple[SpiffeId | None, str], Any] = {}
        self._allow_cache: dict[str, Decision] = {}
        # (source, METHOD, path) -> the decision that allows it and its counter: a client asks
        # for the same few.
        self._http_allowed: dict[tuple[str, str, str], tuple[Decision, Any]] = {}
        self.rule_names = [rule.name for rule in self._rules]

    @classmethod
    def for_mesh(cls, mesh: MeshConfig, *, registry: CollectorRegistry = REGISTRY) -> PolicyEngine:
        """The engine of the service whose mesh view is ``mesh``: its rules, its trust domain."""
        return cls(mesh.policy, mesh.service, trust_domain=mesh.trust_domain, registry=registry)

    def _peer_ok(self, peer: SpiffeId | None) -> Decision | None:
        if peer is None:
            return Decision(False, "no verified mesh identity")
        if self.trust_domain is not None and peer.trust_domain != self.trust_domain:
            return Decision(False, f"peer is in trust domain {peer.trust_domain!r}")
        if self.mode == "permissive":
            return Decision(True, "permissive mode")
        return None

    def authorize_http(self, peer: SpiffeId | None, method: str, path: str) -> Decision:
        # ``path`` is the decoded path without the query string (ASGI's scope["path"], the
        # proxy's parsed target): nothing in it is cut off here.
        decision = self._peer_ok(peer)
        if decision is None:
            source = str(peer)
            verb = method.upper()
            key = (source, verb, path)
            known = self._http_allowed.get(key)
            if known is not None:
                decision, counter = known
                counter.inc()
                return decision
            for rule in self._rules:
                if source in rule.sources and (
                    rule.allows_everything
                    or any(
                        (not m.methods or verb in m.methods) and m.path.fullmatch(path)
                        for m in rule.http
                    )
                ):
                    decision = self._allowed(peer, rule.name)
                    if len(path) <= _CACHED_PATH:
                        if len(self._http_allowed) >= _CACHED_DECISIONS:
                            self._http_allowed.clear()
                        self._http_allowed[key] = (decision, self._children[(peer, "allow")])
                    return decision
            decision = Decision(False, f"no rule allows {method} {path}")
        return self._record(peer, decision, lambda: f"{method} {path}")

    def authorize_tcp(self, peer: SpiffeId | None, port: int) -> Decision:
        decision = self._peer_ok(peer)
        if decision is None:
            source = str(peer)
            for rule in self._rules:
                if source in rule.sources and (
                    rule.allows_everything or any(not p or port in p for p in rule.ports)
                ):
                    return self._allowed(peer, rule.name)
            decision = Decision(False, f"no rule allows TCP port {port}")
        return self._record(peer, decision, lambda: f"TCP port {port}")

    def _count(self, peer: SpiffeId | None, outcome: str) -> None:
        key = (peer, outcome)
        child = self._children.get(key)
        if child is None:
            source = peer.service if peer is not None and peer.service else "<none>"
            child = self._children[key] = self._counter.labels(self.destination, source, outcome)
        child.inc()

    def _allowed(self, peer: SpiffeId | None, rule: str) -> Decision:
        # The hot path: one cached decision and one cached counter per rule and peer.
        self._count(peer, "allow")
        decision = self._allow_cache.get(rule)
        if decision is None:
            decision = self._allow_cache[rule] = Decision(True, "allowed", rule)
        return decision

    def _record(
        self, peer: SpiffeId | None, decision: Decision, what: Callable[[], str]
    ) -> Decision:
        self._count(peer, "allow" if decision else "deny")
        if not decision:
            log.warning(  # %r: a path may hold any character, line breaks included
                "policy denied %s -> %s %r: %r (mode %s, rules %s)",
                peer,
                self.destination,
                what(),
                decision.reason,
                self.mode,
                ",".join(self.rule_names) or "none",
            )
        return decision
