"""The per-config objects the data plane calls per request.

:func:`build_runtime` turns the compiled resources (``resources[type][name]``)
into a :class:`Runtime`: a router and route plans per route table, a balancer
per cluster, strategy chains per listener. Everything here is built once per
config; the request path only reads plain ``__slots__`` objects.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from knotwork.proxyconfig import Cluster, ConsistencyError, EndpointSet, LbEndpoint, Listener, Route, RouteTable
from knotwork.records import ProxyContext, Strategy

__all__ = [
    "DEFAULT_RETRY",
    "REPLAY_LIMIT",
    "ClusterRuntime",
    "ListenerRuntime",
    "RetryPlan",
    "RoutePlan",
    "Runtime",
    "Shared",
    "build_runtime",
    "install_event_loop",
]

#: Largest request (head and body) kept for replay on retries.
REPLAY_LIMIT = 64 * 1024
LISTENER_MODES = frozenset({"inbound", "outbound", "http_proxy", "gateway"})
LISTENER_PROTOCOLS = frozenset({"http", "tcp"})
RETRY_TOKENS = frozenset({
    "5xx", "gateway-error", "connect-failure", "reset", "reset-before-request", "retriable-4xx",
    "retriable-status-codes", "refused-stream",
    # gRPC conditions (Istio's defaults name them): accepted, never true on HTTP/1.1.
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})


def install_event_loop() -> bool:
    """Install uvloop's event loop policy when uvloop is importable; return whether it was."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class RetryPlan:
    """A route's retry policy, pre-digested for the request path."""

    __slots__ = ("attempts", "on_connect", "on_reset", "on_timeout", "per_try_timeout", "statuses")

    def __init__(self, attempts: int, retry_on: Iterable[str], codes: Iterable[int] = (), per_try_timeout: float | None = None):
        on = set(retry_on)
        unknown = on - RETRY_TOKENS
        if unknown:
            raise ValueError(f"unknown retry_on condition(s) {sorted(unknown)} (known: {', '.join(sorted(RETRY_TOKENS))})")
        if attempts < 0:
            raise ValueError(f"retry attempts must be >= 0, got {attempts}")
        if per_try_timeout is not None and per_try_timeout <= 0:
            raise ValueError(f"per_try_timeout must be > 0, got {per_try_timeout}")
        broad = bool(on & {"5xx", "gateway-error"})
        self.attempts = attempts
        self.per_try_timeout = per_try_timeout
        self.on_connect = broad or "connect-failure" in on
        self.on_reset = broad or bool(on & {"reset", "reset-before-request"})
        self.on_timeout = broad
        statuses: set[int] = set()
        if "5xx" in on:
            statuses.update(range(500, 600))
        if "gateway-error" in on:
            statuses.update((502, 503, 504))
        if "retriable-4xx" in on:
            statuses.add(409)
        if "retriable-status-codes" in on:
            statuses.update(codes)
        self.statuses = frozenset(statuses)


#: Istio's default when a route names no policy: 2 retries on connect failure.
DEFAULT_RETRY = RetryPlan(2, ("connect-failure", "refused-stream"))


class ClusterRuntime:
    """One cluster: its balancer and endpoints; counters for /status."""

    __slots__ = ("balancer", "connect_timeout", "endpoints", "name", "pick", "release", "resource", "rq_total", "pending_update")

    def __init__(self, resource: Cluster, balancer: Any, endpoints: tuple[LbEndpoint, ...]):
        self.resource = resource
        self.name = resource.name
        self.connect_timeout = resource.connect_timeout
        self.balancer = balancer
        self.pick = balancer.pick
        self.release = getattr(balancer, "release", None)
        self.endpoints = endpoints
        self.rq_total = 0
        self.pending_update = False  # reused balancer: update(endpoints) at apply time

    @property
    def healthy(self) -> int:
        return sum(1 for e in self.endpoints if e.healthy)


class RoutePlan:
    """One route, pre-digested: which clusters with what weights, timeouts, rewrites."""

    __slots__ = (
        "clusters", "cumulative", "direct", "host_rewrite", "kind", "name", "prefix", "prefix_rewrite",
        "redirect", "retry", "route", "set_headers", "set_names", "single", "timeout", "total",
    )

    ACTION, DIRECT, REDIRECT = 0, 1, 2

    def __init__(self, route: Route, clusters: Mapping[str, ClusterRuntime], where: str):
        self.route = route
        self.name = route.name
        kinds = [k for k in (route.action, route.direct, route.redirect) if k is not None]
        if len(kinds) != 1:
            raise ValueError(f"{where}: a route needs exactly one of action, direct, redirect (has {len(kinds)})")
        self.set_headers = b"".join(
            b"%s: %s\r\n" % (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in route.request_headers_set.items()
        )
        self.set_names = frozenset(k.lower().encode("latin-1") for k in route.request_headers_set)
        self.clusters: tuple[ClusterRuntime, ...] = ()
        self.cumulative: list[int] = []
        self.total = 0
        self.single: ClusterRuntime | None = None
        self.timeout: float | None = None
        self.retry = DEFAULT_RETRY
        self.prefix = route.match.prefix if route.match.path is None and route.match.regex is None else None
        self.prefix_rewrite: str | None = None
        self.host_rewrite: bytes | None = None
        self.direct: tuple[int, bytes] | None = None
        self.redirect = route.redirect
        if route.direct is not None:
            self.kind = self.DIRECT
            self.direct = (route.direct.status, route.direct.body.encode())
            if not 100 <= route.direct.status <= 599:
                raise ValueError(f"{where}: direct response status {route.direct.status} out of range")
            return
        if route.redirect is not None:
            self.kind = self.REDIRECT
            return
        self.kind = self.ACTION
        action = route.action
        assert action is not None
        picked = [(clusters[w.cluster], w.weight) for w in action.clusters if w.weight > 0]
        if any(w.weight < 0 for w in action.clusters):
            raise ValueError(f"{where}: negative cluster weight")
        if not picked:
            raise ValueError(f"{where}: route action has no cluster with a positive weight")
        self.clusters = tuple(c for c, _ in picked)
        total = 0
        for _, weight in picked:
            total += weight
            self.cumulative.append(total)
        self.total = total
        if len(picked) == 1:
            self.single = picked[0][0]
        if action.timeout is not None and action.timeout <= 0:
            raise ValueError(f"{where}: timeout must be > 0, got {action.timeout}")
        self.timeout = action.timeout
        if action.retry is not None:
            r = action.retry
            try:
                self.retry = RetryPlan(r.attempts, r.retry_on, r.retriable_status_codes, r.per_try_timeout)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        self.prefix_rewrite = action.prefix_rewrite
        self.host_rewrite = action.host_rewrite.lower().encode("latin-1") if action.host_rewrite else None

    def choose(self, _random: Any = random.random) -> ClusterRuntime:
        """The cluster for one request (weighted choice when there are several)."""
        single = self.single
        if single is not None:
            return single
        return self.clusters[bisect.bisect_right(self.cumulative, _random() * self.total)]

    def rewrite_path(self, path: str) -> str:
        """Apply ``prefix_rewrite`` the way Envoy does (the matched prefix is replaced)."""
        new = self.prefix_rewrite
        assert new is not None
        prefix = self.prefix
        if prefix is not None and path.startswith(prefix):
            return new + path[len(prefix):]
        query = path.find("?")
        return new + (path[query:] if query >= 0 else "")


class ListenerRuntime:
    """One listener's chain: router and plans (http) or cluster (tcp), strategies."""

    __slots__ = ("authn", "authz", "cluster", "clusters", "key", "listener", "name", "plans", "router", "telemetry")

    def __init__(self, listener: Listener):
        self.listener = listener
        self.name = listener.name
        self.key = (listener.address, listener.port, listener.mode, listener.protocol)
        self.router: Any = None
        self.plans: dict[int, RoutePlan] = {}
        self.clusters: Mapping[str, ClusterRuntime] = {}
        self.cluster: ClusterRuntime | None = None
        self.authn: tuple[Any, ...] = ()
        self.authz: tuple[Any, ...] = ()
        self.telemetry: tuple[Any, ...] = ()

    def plan(self, route: Route) -> RoutePlan:
        """The plan of a route the router returned (built on the fly if it is not one of ours)."""
        plan = self.plans.get(id(route))
        if plan is None or plan.route is not route:
            plan = RoutePlan(route, self.clusters, f"route {route.name!r}")
        return plan


class Runtime:
    """A validated, built config, ready for :meth:`DataPlane.apply`."""

    def __init__(self, resources: Mapping[str, Mapping[str, Any]]):
        self.resources = resources
        self.listeners: dict[str, ListenerRuntime] = {}
        self.clusters: dict[str, ClusterRuntime] = {}
        self.routers: dict[str, Any] = {}

    def endpoint_keys(self) -> set[tuple[str, int]]:
        """Every (address, port) any cluster may send to."""
        return {(e.address, e.port) for c in self.clusters.values() for e in c.endpoints}


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


def check_consistency(resources: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ConsistencyError unless every reference resolves (as ProxySnapshot.check)."""
    clusters, endpoints = resources.get("clusters", {}), resources.get("endpoints", {})
    routes = resources.get("routes", {})
    problems = []
    for table in routes.values():
        problems += [f"route table {table.name!r} references missing cluster {n!r}" for n in table.referenced_clusters() if n not in clusters]
    problems += [f"cluster {n!r} has no endpoint set" for n in clusters if n not in endpoints]
    for lis in resources.get("listeners", {}).values():
        if lis.route_table and lis.route_table not in routes:
            problems.append(f"listener {lis.name!r} references missing route table {lis.route_table!r}")
        if lis.cluster and lis.cluster not in clusters:
            problems.append(f"listener {lis.name!r} references missing cluster {lis.cluster!r}")
    if problems:
        raise ConsistencyError("; ".join(sorted(set(problems))))


def _validate_listener(lis: Listener, where: str) -> None:
    if lis.mode not in LISTENER_MODES:
        raise ValueError(f"{where}: mode {lis.mode!r} is not one of {sorted(LISTENER_MODES)}")
    if lis.protocol not in LISTENER_PROTOCOLS:
        raise ValueError(f"{where}: protocol {lis.protocol!r} is not one of {sorted(LISTENER_PROTOCOLS)}")
    if not 0 <= lis.port <= 65535:
        raise ValueError(f"{where}: port {lis.port} out of range")
    if lis.protocol == "http" and not lis.route_table:
        raise ValueError(f"{where}: an http listener needs a route_table")
    if lis.protocol == "tcp" and not lis.cluster:
        raise ValueError(f"{where}: a tcp listener needs a cluster")
    if lis.mode == "http_proxy" and lis.protocol != "http":
        raise ValueError(f"{where}: an http_proxy listener must use protocol 'http'")
    if lis.tls:
        raise ValueError(f"{where}: TLS on listeners is not supported by the native data plane yet")


def build_runtime(
    ctx: ProxyContext,
    resources: Mapping[str, Mapping[str, Any]],
    previous: Runtime | None = None,
    known_extensions: frozenset[str] = frozenset(),
) -> Runtime:
    """Validate `resources` and build a :class:`Runtime`.

    Raises ConsistencyError when references do not resolve (yet), ValueError
    naming the resource and field when the config is invalid. A cluster equal
    to one in `previous` keeps its balancer object; its endpoints are updated
    when the runtime is applied, so stateful balancers continue.
    """
    check_consistency(resources)
    rt = Runtime(resources)
    endpoint_sets: Mapping[str, EndpointSet] = resources.get("endpoints", {})
    old_clusters = previous.clusters if previous is not None else {}
    for name, cluster in resources.get("clusters", {}).items():
        where = f"cluster {name!r}"
        _check_extensions(cluster, where, known_extensions)
        if cluster.tls:
            raise ValueError(f"{where}: upstream TLS is not supported by the native data plane yet")
        if cluster.connect_timeout <= 0:
            raise ValueError(f"{where}: connect_timeout must be > 0")
        endpoints = tuple(endpoint_sets[name].endpoints)
        old = old_clusters.get(name)
        if old is not None and old.resource == cluster:
            balancer = old.balancer
            reuse = True
        else:
            balancer = _make(ctx, "load_balancers", cluster.lb, cluster, where)
            reuse = False
        for method in ("update", "pick"):
            if not callable(getattr(balancer, method, None)):
                raise ValueError(f"{where}: load balancer {cluster.lb!r} has no {method}() method")
        crt = ClusterRuntime(cluster, balancer, endpoints)
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
        lrt = ListenerRuntime(lis)
        lrt.clusters = rt.clusters
        if lis.protocol == "http":
            assert lis.route_table is not None
            lrt.router = rt.routers[lis.route_table]
            lrt.plans = plans_by_table[lis.route_table]
        else:
            assert lis.cluster is not None
            lrt.cluster = rt.clusters[lis.cluster]
        lrt.authn = _chain(ctx, "authenticators", lis.authn, lis, where, "authenticate")
        lrt.authz = _chain(ctx, "authorizers", lis.authz, lis, where, "authorize")
        lrt.telemetry = _chain(ctx, "telemetry", lis.telemetry, lis, where, "request_finished")
        rt.listeners[name] = lrt
    return rt


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


class Shared:
    """Data-plane-wide state the request path touches: pools and plain counters."""

    __slots__ = ("codes", "flag_counts", "idle", "inflight", "last_error", "loop", "pools", "requests", "stats", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, pools: Any, stats: dict[str, int]) -> None:
        self.loop = loop
        self.pools = pools
        self.stats = stats
        self.codes = [0] * 6  # responses by status class: index status // 100
        self.flag_counts: dict[str, int] = {}
        self.inflight = 0
        self.requests = 0
        self.tick = 0  # a coarse clock for idle timeouts, advanced by the data plane's sweeper
        self.idle: asyncio.Event | None = None  # set when inflight drops to 0 (while draining)
        self.last_error = ""  # the last internal error on the request path, for /status

    def count_flags(self, flags: str) -> None:
        """Count each flag of a combined flag string (``URX,UF``)."""
        if flags != "-":
            counts = self.flag_counts
            for flag in flags.split(","):
                counts[flag] = counts.get(flag, 0) + 1

    def request_done(self, flags: str, status: int) -> None:
        """Account one finished request (called once per request)."""
        self.inflight -= 1
        if status:
            self.codes[status // 100 if status < 600 else 5] += 1
        if flags != "-":
            counts = self.flag_counts
            for flag in flags.split(","):
                counts[flag] = counts.get(flag, 0) + 1
        if self.inflight <= 0 and self.idle is not None:
            self.idle.set()
