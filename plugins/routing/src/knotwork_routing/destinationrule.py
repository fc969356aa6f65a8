"""DestinationRule (networking.istio.io): which rule applies to a host, and its subsets.

Only ``host`` and ``subsets[].{name, labels}`` are read here; traffic policies
(load balancer, connection pool, outlier detection, TLS) belong to other
areas and come later. When several rules name one host, the one in the
client's namespace wins, then the one in the host's namespace, then the
root namespace's, then the first written — Istio's order. A rule for a
wildcard host (``*.example.com``) applies to hosts it covers when no rule
names the host exactly; the longest wildcard wins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from knotwork import MeshSettings, Resource

from .hosts import covers, resolve

__all__ = ["DestinationRules"]


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
