"""DestinationRule (networking.istio.io): which rule applies to a host, and its subsets.

Read here: ``host``, ``subsets[].{name, labels}`` and the simple load
balancer of ``trafficPolicy`` — per rule, per port (``portLevelSettings``)
and per subset (a subset's policy overrides the rule's; within a policy a
port's setting overrides the policy's own). Connection pools, outlier
detection, hashing, locality and TLS come in later issues and are reported
as not supported yet when written. When several rules name one host, the one in the
client's namespace wins, then the one in the host's namespace, then the
root namespace's, then the first written — Istio's order. A rule for a
wildcard host (``*.example.com``) applies to hosts it covers when no rule
names the host exactly; the longest wildcard wins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from knotwork import MeshSettings, Resource

from .errors import ResourceError, field_path, warn_unsupported
from .hosts import covers, resolve

__all__ = ["BALANCERS", "DestinationRules"]

#: Istio's ``loadBalancer.simple`` -> Knotwork balancer strategy (``LEAST_CONN`` is Istio's deprecated alias).
BALANCERS = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request", "LEAST_CONN": "least_request",
             "RANDOM": "random"}
_LATER = ("connectionPool", "outlierDetection", "tls", "tunnel", "proxyProtocol")


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
