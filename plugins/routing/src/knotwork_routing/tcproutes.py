"""VirtualService ``tcp`` routes: where a sidecar's TCP upstream listener sends connections.

Each TCP upstream of a sidecar has a listener of its own (``tcp:<host>:<port>``),
so everything an ``L4MatchAttributes`` can say is known when compiling: the
``port``, the ``gateways`` (``mesh``), the proxy's own ``sourceLabels`` and
``sourceNamespace``. The first ``tcp[]`` entry with a match that applies (or
no match at all) decides the listener's weighted clusters; none applying
leaves the service's default cluster. ``destinationSubnets`` is refused:
ignoring it would widen the match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from knotwork import ProxyNode, Resource
from knotwork.proxyconfig import WeightedCluster

from .context import CompileContext
from .errors import ResourceError
from .httpmatch import match_applies
from .httproutes import _clusters
from .specs import as_mapping
from .virtualservice import MESH, owner_of

__all__ = ["tcp_route"]


def tcp_route(ctx: CompileContext, fqdn: str, port: int) -> tuple[WeightedCluster, ...] | None:
    """The clusters a mesh VirtualService's ``tcp`` routes give `fqdn:port` on this proxy, or None."""
    bound = owner_of(fqdn, ctx.virtual_services.mesh_hosts())
    if bound is None:
        return None
    vs = bound.resource
    for i, raw in enumerate(vs.spec.get("tcp") or ()):
        where = f"spec.tcp[{i}]"
        entry = as_mapping(vs, raw, where)
        matches = entry.get("match") or [{}]
        if not any(_applies(vs, m, f"{where}.match[{j}]", port, ctx.node) for j, m in enumerate(matches)):
            continue
        routes = entry.get("route")
        if not isinstance(routes, list) or not routes:
            raise ResourceError(vs, f"{where}.route", "expected at least one destination")
        clusters, _ = _clusters(vs, routes, f"{where}.route", ctx.scope(MESH, port))
        return clusters
    return None


def _applies(vs: Resource, spec: Any, where: str, port: int, node: ProxyNode) -> bool:
    if not match_applies(vs, spec, where, MESH, port):
        return False
    if spec.get("destinationSubnets"):
        raise ResourceError(vs, f"{where}.destinationSubnets", "not supported yet (ignoring it would widen the match)")
    labels = spec.get("sourceLabels") or {}
    if not isinstance(labels, Mapping):
        raise ResourceError(vs, f"{where}.sourceLabels", "expected a mapping of label names to values")
    if any(node.labels.get(str(k)) != str(v) for k, v in labels.items()):
        return False
    namespace = spec.get("sourceNamespace")
    return namespace is None or str(namespace) == node.namespace
