"""The per-config objects the data plane calls per request.

A :class:`Runtime` (built by :func:`knotwork_native.runtime_build.build_runtime`)
holds a router and route plans per route table, a balancer per cluster and
strategy chains per listener. Everything here is built once per config; the
request path only reads plain ``__slots__`` objects.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Iterable, Mapping
from typing import Any

from knotwork.proxyconfig import Cluster, LbEndpoint, Listener, Route

__all__ = [
    "DEFAULT_RETRY",
    "REPLAY_LIMIT",
    "ClusterRuntime",
    "ListenerRuntime",
    "RetryPlan",
    "RoutePlan",
    "Runtime",
    "Shared",
    "install_event_loop",
]

#: Largest request (head and body) kept for replay on retries.
REPLAY_LIMIT = 64 * 1024
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
