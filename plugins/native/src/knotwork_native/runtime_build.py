"""Validating compiled resources and building a :class:`~knotwork_native.runtime.Runtime`.

The NACK point of the native engine: :func:`build_runtime` raises
``ConsistencyError`` when references do not resolve yet and ``ValueError``
naming the resource and field when the config is invalid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from knotwork.proxyconfig import PEER_HEADER, PEER_MODES, RESOLUTIONS, EndpointSet, Listener, RouteTable, check_consistency
from knotwork.records import ProxyContext, Strategy

from .downstream_tls import build_tls_plan
from .mesh_tls import InboundMtls
from .passthrough import PassthroughBalancer
from .runtime import ClusterRuntime, ListenerRuntime, RoutePlan, Runtime
from .tracing import ListenerTracer
from .upstream_tls import build_upstream_tls

__all__ = ["LISTENER_MODES", "LISTENER_PROTOCOLS", "build_runtime"]

LISTENER_MODES = frozenset({"inbound", "outbound", "http_proxy", "gateway"})
LISTENER_PROTOCOLS = frozenset({"http", "tcp"})
_PEER_SETTING_MODES = frozenset({"outbound", "http_proxy", "gateway"})  # client side: say who is calling


def _strategy(ctx: ProxyContext, kind: str, name: str, where: str) -> Strategy:
    records = ctx.strategies.get(kind, {})
    record = records.get(name)
    if record is None:
        raise ValueError(f"{where}: unknown {kind} strategy {name!r} (installed: {', '.join(sorted(records)) or 'none'})")
    if "native" not in record.engines:
        raise ValueError(f"{where}: {kind} strategy {name!r} does not support the native engine")
    return record


def _make(ctx: ProxyContext, kind: str, name: str, resource: Any, where: str) -> Any:
    record = _strategy(ctx, kind, name, where)
    try:
        return record.factory(resource, ctx.strategy_settings.get(name))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{where}: {kind} strategy {name!r} refused the config: {exc}") from exc


def _check_extensions(resource: Any, where: str, known: frozenset[str]) -> None:
    for ext in resource.extensions:
        if ext.name not in known or "native" not in ext.engines:
            raise ValueError(f"{where}: extension {ext.name!r} (plugin {ext.plugin!r}) is not supported by the native engine")


def _validate_listener(lis: Listener, where: str) -> None:
    if lis.mode not in LISTENER_MODES:
        raise ValueError(f"{where}: mode {lis.mode!r} is not one of {sorted(LISTENER_MODES)}")
    if lis.protocol not in LISTENER_PROTOCOLS:
        raise ValueError(f"{where}: protocol {lis.protocol!r} is not one of {sorted(LISTENER_PROTOCOLS)}")
    if not 0 <= lis.port <= 65535:
        raise ValueError(f"{where}: port {lis.port} out of range")
    if lis.protocol == "http" and not lis.route_table:
        raise ValueError(f"{where}: an http listener needs a route_table")
    if lis.protocol == "tcp" and not (lis.cluster or lis.weighted_clusters):
        raise ValueError(f"{where}: a tcp listener needs a cluster")
    if lis.weighted_clusters and sum(w.weight for w in lis.weighted_clusters) <= 0:
        raise ValueError(f"{where}: weighted_clusters need a positive total weight")
    if lis.mode == "http_proxy" and lis.protocol != "http":
        raise ValueError(f"{where}: an http_proxy listener must use protocol 'http'")


def _inbound_mtls(lis: Listener, mesh: Any, where: str) -> InboundMtls | None:
    """What a listener's PeerTls asks of the data plane (None: plaintext only).

    STRICT without a workload identity is refused (a NACK) rather than served
    in plaintext; PERMISSIVE without one serves plaintext, which it accepts anyway.
    """
    tls = lis.tls
    if tls is None:
        return None
    if tls.mode not in PEER_MODES:
        raise ValueError(f"{where}: tls mode {tls.mode!r} is not one of {list(PEER_MODES)}")
    if tls.mode == "DISABLE":
        return None
    if lis.server_tls:
        raise ValueError(f"{where}: a listener takes either server_tls (gateway TLS) or mesh mTLS (tls), not both")
    if mesh is None:
        if tls.mode == "STRICT":
            raise ValueError(f"{where}: tls mode STRICT needs the proxy's workload identity, and this proxy has none "
                             "(start it with --ca and --identity)")
        return None
    return InboundMtls(tls, mesh)


def build_runtime(
    ctx: ProxyContext,
    resources: Mapping[str, Mapping[str, Any]],
    previous: Runtime | None = None,
    known_extensions: frozenset[str] = frozenset(),
    mesh: Any = None,
) -> Runtime:
    """Validate `resources` and build a :class:`Runtime`.

    Raises ConsistencyError when references do not resolve (yet), ValueError
    naming the resource and field when the config is invalid. A cluster equal
    to one in `previous` keeps its balancer object; its endpoints are updated
    when the runtime is applied, so stateful balancers continue. `mesh`: the
    proxy's :class:`~knotwork_native.mesh_tls.MeshIdentity` (None: no SVID,
    so mesh mTLS is refused).
    """
    check_consistency(resources)
    rt = Runtime(resources)
    endpoint_sets: Mapping[str, EndpointSet] = resources.get("endpoints", {})
    old_clusters = previous.clusters if previous is not None else {}
    old_plans = previous.tls_plans if previous is not None else {}
    secrets = resources.get("secrets", {})
    for name, cluster in resources.get("clusters", {}).items():
        where = f"cluster {name!r}"
        _check_extensions(cluster, where, known_extensions)
        tls = None
        if cluster.tls is not None:
            tls = build_upstream_tls(cluster, secrets, mesh, old_plans, where)
            rt.tls_plans[tls.tag] = tls
        if cluster.connect_timeout <= 0:
            raise ValueError(f"{where}: connect_timeout must be > 0")
        if cluster.resolution not in RESOLUTIONS:
            raise ValueError(f"{where}: resolution {cluster.resolution!r} is not one of {list(RESOLUTIONS)}")
        endpoints = tuple(endpoint_sets[name].endpoints)
        old = old_clusters.get(name)
        if old is not None and old.resource == cluster:
            balancer = old.balancer
            reuse = True
        elif cluster.resolution == "passthrough":  # the request names its destination (see .passthrough)
            balancer = PassthroughBalancer()
            reuse = False
        else:
            balancer = _make(ctx, "load_balancers", cluster.lb, cluster, where)
            reuse = False
        for method in ("update", "pick"):
            if not callable(getattr(balancer, method, None)):
                raise ValueError(f"{where}: load balancer {cluster.lb!r} has no {method}() method")
        crt = ClusterRuntime(cluster, balancer, endpoints, tls)
        if reuse:
            crt.pending_update = old is not None and old.endpoints != endpoints
        else:
            balancer.update(endpoints)
        rt.clusters[name] = crt
    plans_by_table: dict[str, dict[int, RoutePlan]] = {}
    for name, table in resources.get("routes", {}).items():
        where = f"route table {name!r}"
        plans_by_table[name] = _build_plans(table, rt.clusters, where, known_extensions)
        router = _make(ctx, "routers", table.router, table, where)
        if not callable(getattr(router, "match", None)):
            raise ValueError(f"{where}: router {table.router!r} has no match() method")
        rt.routers[name] = router
    seen: dict[tuple[str, int], str] = {}
    for name, lis in resources.get("listeners", {}).items():
        where = f"listener {name!r}"
        _validate_listener(lis, where)
        _check_extensions(lis, where, known_extensions)
        if lis.port and (lis.address, lis.port) in seen:
            raise ValueError(f"{where}: {lis.address}:{lis.port} is also used by listener {seen[(lis.address, lis.port)]!r}")
        seen[(lis.address, lis.port)] = name
        lrt = ListenerRuntime(lis, _inbound_mtls(lis, mesh, where))
        lrt.clusters = rt.clusters
        if lis.server_tls:
            if lis.protocol != "http":
                raise ValueError(f"{where}: server_tls: TLS is terminated on http listeners only")
            lrt.tls = build_tls_plan(lis.server_tls, resources.get("secrets", {}), where)
        if lis.protocol == "http":
            assert lis.route_table is not None
            lrt.router = rt.routers[lis.route_table]
            lrt.plans = plans_by_table[lis.route_table]
        elif lis.weighted_clusters:
            lrt.split = ([rt.clusters[w.cluster] for w in lis.weighted_clusters],
                         [w.weight for w in lis.weighted_clusters])
        else:
            assert lis.cluster is not None
            lrt.cluster = rt.clusters[lis.cluster]
        lrt.authn = _chain(ctx, "authenticators", lis.authn, lis, where, "authenticate")
        lrt.authz = _chain(ctx, "authorizers", lis.authz, lis, where, "authorize")
        lrt.telemetry = _chain(ctx, "telemetry", lis.telemetry, lis, where, "request_finished")
        _observe(lrt, ctx.node_id, where)
        rt.listeners[name] = lrt
    return rt


def _observe(lrt: ListenerRuntime, node_id: str, where: str) -> None:
    """What the listener's observability asks of the request path: tcp sink methods, the peer line, tracing."""
    lis = lrt.listener
    # request_started is optional (knotwork.protocols): only the sinks that have one are called per request
    lrt.started = tuple(m for m in (getattr(s, "request_started", None) for s in lrt.telemetry) if callable(m))
    if lis.protocol == "tcp":
        lrt.tcp_opened = tuple(m for m in (getattr(s, "tcp_opened", None) for s in lrt.telemetry) if callable(m))
        lrt.tcp_closed = tuple(m for m in (getattr(s, "tcp_closed", None) for s in lrt.telemetry) if callable(m))
    obs = lis.observability
    if obs is None:
        return
    if lis.mode in _PEER_SETTING_MODES:
        value = obs.workload.header()
        if any(c in value for c in "\r\n"):
            raise ValueError(f"{where}: observability.workload has a line break in a field")
        lrt.peer_line = b"%s: %s\r\n" % (PEER_HEADER.encode(), value.encode("latin-1", "replace"))
    if obs.tracing is not None and lis.protocol == "http":
        if not obs.tracing.endpoint:
            raise ValueError(f"{where}: observability.tracing.endpoint is empty")
        lrt.tracer = ListenerTracer(lis, obs.tracing, node_id)


def _build_plans(table: RouteTable, clusters: Mapping[str, ClusterRuntime], where: str, known: frozenset[str]) -> dict[int, RoutePlan]:
    plans: dict[int, RoutePlan] = {}
    for vh in table.virtual_hosts:
        if not vh.domains:
            raise ValueError(f"{where}: virtual host {vh.name!r} has no domains")
        for route in vh.routes:
            rwhere = f"{where} virtual host {vh.name!r} route {route.name!r}"
            _check_extensions(route, rwhere, known)
            plans[id(route)] = RoutePlan(route, clusters, rwhere)
    return plans


def _chain(ctx: ProxyContext, kind: str, names: Sequence[str], lis: Listener, where: str, method: str) -> tuple[Any, ...]:
    chain = []
    for name in names:
        obj = _make(ctx, kind, name, lis, where)
        if not callable(getattr(obj, method, None)):
            raise ValueError(f"{where}: {kind} strategy {name!r} has no {method}() method")
        chain.append(obj)
    return tuple(chain)
