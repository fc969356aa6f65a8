"""DestinationRule (networking.istio.io): which rule applies to a host, and its subsets.

Read here: ``host``, ``subsets[].{name, labels}``, the simple load
balancer of ``trafficPolicy`` — per rule, per port (``portLevelSettings``)
and per subset (a subset's policy overrides the rule's; within a policy a
port's setting overrides the policy's own) — and where the ``tls`` settings
of a cluster come from (:meth:`DestinationRules.client_tls`, translated by
:mod:`knotwork_routing.upstreamtls`). Connection pools, outlier detection,
hashing and locality come in later issues and are reported as not supported
yet when written. When several rules name one host, the one in the
client's namespace wins, then the one in the host's namespace, then the
root namespace's, then the first written — Istio's order. A rule for a
wildcard host (``*.example.com``) applies to hosts it covers when no rule
names the host exactly; the longest wildcard wins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs
from knotwork import MeshSettings, Resource

from .errors import ResourceError, field_path, warn_unsupported
from .hosts import covers, resolve

__all__ = ["BALANCERS", "ClientTls", "DestinationRules"]

#: Istio's ``loadBalancer.simple`` -> Knotwork balancer strategy (``LEAST_CONN`` is Istio's deprecated alias).
BALANCERS = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request", "LEAST_CONN": "least_request",
             "RANDOM": "random"}
_LATER = ("connectionPool", "outlierDetection", "tunnel", "proxyProtocol")


@attrs.frozen
class ClientTls:
    """A ``tls`` block (Istio ``ClientTLSSettings``) of a rule, and where it is written (``spec.trafficPolicy.tls``)."""

    rule: Resource
    settings: Mapping[str, Any]
    where: str

    @property
    def mode(self) -> Any:
        return self.settings.get("mode", "DISABLE")  # the proto enum's zero value


class DestinationRules:
    """The DestinationRules that apply to one proxy, by host."""

    def __init__(
        self, rules: Iterable[Resource], client_namespace: str, mesh: MeshSettings, known: Collection[str] = ()
    ) -> None:
        best: dict[str, tuple[int, int, Resource]] = {}
        for order, rule in enumerate(rules):
            host = resolve(str(rule.spec.get("host", "")), rule.namespace, mesh.domain, known)
            if not host:
                continue
            rank = self._rank(rule, host, client_namespace, mesh)
            if host not in best or (rank, order) < best[host][:2]:
                best[host] = (rank, order, rule)
        self._exact = {h: r for h, (_, _, r) in best.items() if not h.startswith("*")}
        self._wildcards = sorted(
            ((h, r) for h, (_, _, r) in best.items() if h.startswith("*")), key=lambda hr: -len(hr[0])
        )

    @staticmethod
    def _rank(rule: Resource, host: str, client_namespace: str, mesh: MeshSettings) -> int:
        parts = host.split(".")
        host_namespace = parts[1] if len(parts) > 2 and parts[2] == "svc" else None
        if rule.namespace == client_namespace:
            return 0
        if rule.namespace == host_namespace:
            return 1
        if mesh.is_root_namespace(rule.namespace):
            return 2
        return 3

    def for_host(self, fqdn: str) -> Resource | None:
        """The rule applying to `fqdn`, or None."""
        rule = self._exact.get(fqdn)
        if rule is not None:
            return rule
        for pattern, wildcard_rule in self._wildcards:
            if covers(pattern, fqdn):
                return wildcard_rule
        return None

    def subset_labels(self, fqdn: str, subset: str) -> Mapping[str, str] | None:
        """The labels selecting `subset` of `fqdn`, or None when no rule defines it."""
        rule = self.for_host(fqdn)
        if rule is None:
            return None
        for entry in rule.spec.get("subsets") or ():
            if isinstance(entry, Mapping) and entry.get("name") == subset:
                return {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
        return None

    def load_balancer(self, fqdn: str, port: int, subset: str = "") -> str | None:
        """The balancer the rule for `fqdn` asks for at `port` (and `subset`), or None for the mesh default.

        Raises :class:`ResourceError` for a balancer Knotwork does not have.
        """
        rule = self.for_host(fqdn)
        if rule is None:
            return None
        policies: list[tuple[object, tuple]] = [(rule.spec.get("trafficPolicy"), ("spec", "trafficPolicy"))]
        if subset:
            for i, entry in enumerate(rule.spec.get("subsets") or ()):
                if isinstance(entry, Mapping) and entry.get("name") == subset:
                    policies.append((entry.get("trafficPolicy"), ("spec", "subsets", i, "trafficPolicy")))
        chosen: str | None = None
        for policy, where in policies:  # later (more specific) policies win
            if not isinstance(policy, Mapping):
                continue
            found = _policy_balancer(rule, policy, where, port)
            chosen = found or chosen
        return chosen

    def client_tls(self, fqdn: str, port: int, subset: str = "") -> ClientTls | None:
        """The ``tls`` settings of cluster `fqdn`:`port` (and `subset`), or None when no rule sets any.

        Istio's merge (``MergeSubsetTrafficPolicy``): the rule's policy, replaced
        by its ``portLevelSettings`` entry for `port` when there is one; then the
        subset's policy: its ``tls`` when set, and its ``portLevelSettings``
        entry for `port` when there is one. A port-level entry replaces the
        whole policy — without ``tls`` it leaves none (auto-mTLS), it does not
        inherit.
        """
        rule = self.for_host(fqdn)
        if rule is None:
            return None
        chosen: ClientTls | None = None
        policies: list[tuple[object, tuple]] = [(rule.spec.get("trafficPolicy"), ("spec", "trafficPolicy"))]
        if subset:
            found = self._subset(rule, subset)
            if found is not None:
                policies.append(found)
        for policy, where in policies:
            if not isinstance(policy, Mapping):
                continue
            level = _port_level(policy, port)
            if level is not None:
                i, entry = level
                at = (*where, "portLevelSettings", i, "tls")
                chosen = _client_tls(rule, entry.get("tls"), at)
            elif policy.get("tls") is not None:
                chosen = _client_tls(rule, policy["tls"], (*where, "tls"))
        return chosen

    def endpoint_tls_mode(self, fqdn: str, port: int, labels: Mapping[str, str]) -> Any:
        """The ``tls.mode`` the rule for `fqdn` gives an endpoint with `labels` on service port `port`, or None.

        Istio's per-endpoint check under auto-mTLS (``mtlsChecker``): the rule's
        policy mode (its port-level entry's when that sets ``tls``), overridden by
        the first subset whose labels the endpoint carries, if that subset's
        policy (or its port-level entry) sets one.
        """
        rule = self.for_host(fqdn)
        if rule is None:
            return None
        mode = _policy_tls_mode(rule.spec.get("trafficPolicy"), port)
        for entry in rule.spec.get("subsets") or ():
            if isinstance(entry, Mapping) and all(labels.get(str(k)) == str(v)
                                                  for k, v in (entry.get("labels") or {}).items()):
                return _policy_tls_mode(entry.get("trafficPolicy"), port) or mode
        return mode

    @staticmethod
    def _subset(rule: Resource, subset: str) -> tuple[object, tuple] | None:
        for i, entry in enumerate(rule.spec.get("subsets") or ()):
            if isinstance(entry, Mapping) and entry.get("name") == subset:
                return entry.get("trafficPolicy"), ("spec", "subsets", i, "trafficPolicy")
        return None


def _port_level(policy: Mapping, port: int) -> tuple[int, Mapping] | None:
    for i, level in enumerate(policy.get("portLevelSettings") or ()):
        if isinstance(level, Mapping) and (level.get("port") or {}).get("number") == port:
            return i, level
    return None


def _client_tls(rule: Resource, tls: object, where: tuple) -> ClientTls | None:
    if tls is None:
        return None
    if not isinstance(tls, Mapping):
        raise ResourceError(rule, field_path(*where), "expected a mapping (ClientTLSSettings)")
    return ClientTls(rule, tls, field_path(*where))


def _policy_tls_mode(policy: object, port: int) -> Any:
    if not isinstance(policy, Mapping):
        return None
    tls = policy.get("tls")
    mode = tls.get("mode", "DISABLE") if isinstance(tls, Mapping) else None
    level = _port_level(policy, port)
    if level is not None and isinstance(level[1].get("tls"), Mapping):
        mode = level[1]["tls"].get("mode", "DISABLE")
    return mode


def _policy_balancer(rule: Resource, policy: Mapping, where: tuple, port: int) -> str | None:
    for name in _LATER:
        if policy.get(name):
            warn_unsupported(rule, field_path(*where, name))
    chosen = _simple(rule, policy.get("loadBalancer"), (*where, "loadBalancer"))
    for i, level in enumerate(policy.get("portLevelSettings") or ()):
        if isinstance(level, Mapping) and (level.get("port") or {}).get("number") == port:
            chosen = _simple(rule, level.get("loadBalancer"), (*where, "portLevelSettings", i, "loadBalancer")) or chosen
    return chosen


def _simple(rule: Resource, lb: object, where: tuple) -> str | None:
    if not isinstance(lb, Mapping):
        return None
    for name in sorted(set(lb) - {"simple"}):
        warn_unsupported(rule, field_path(*where, name))
    simple = lb.get("simple")
    if simple in (None, "UNSPECIFIED"):
        return None
    if simple not in BALANCERS:
        raise ResourceError(rule, field_path(*where, "simple"),
                            f"expected one of {', '.join([*BALANCERS, 'UNSPECIFIED'])}, got {simple!r}")
    return BALANCERS[str(simple)]
