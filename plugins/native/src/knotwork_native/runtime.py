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
import re
from collections.abc import Iterable, Mapping
from typing import Any

from knotwork.proxyconfig import Cluster, CorsPolicy, LbEndpoint, Listener, PeerInfo, Route

__all__ = [
    "DEFAULT_RETRY",
    "REPLAY_LIMIT",
    "ClusterRuntime",
    "CorsPlan",
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

    __slots__ = ("balancer", "connect_timeout", "endpoints", "name", "peers", "pick", "release", "resource", "rq_total",
                 "pending_update", "tls")

    def __init__(self, resource: Cluster, balancer: Any, endpoints: tuple[LbEndpoint, ...], tls: Any = None):
        self.resource = resource
        self.tls = tls  # an UpstreamTlsPlan (see .upstream_tls), or None: plaintext
        self.name = resource.name
        self.connect_timeout = resource.connect_timeout
        self.balancer = balancer
        self.pick = balancer.pick
        self.release = getattr(balancer, "release", None)
        self.endpoints = endpoints
        # id(endpoint) → (endpoint, its PeerInfo): telemetry's upstream_peer without an attrs object per request
        self.peers: dict[int, tuple[LbEndpoint, PeerInfo]] = {id(e): (e, e.peer()) for e in endpoints}
        self.rq_total = 0
        self.pending_update = False  # reused balancer: update(endpoints) at apply time

    def peer_of(self, endpoint: LbEndpoint) -> PeerInfo:
        """The endpoint's :meth:`~knotwork.proxyconfig.LbEndpoint.peer` (cached; a balancer's own endpoints too)."""
        hit = self.peers.get(id(endpoint))
        if hit is not None and hit[0] is endpoint:
            return hit[1]
        peer = endpoint.peer()
        if len(self.peers) >= 4096 + len(self.endpoints):  # endpoints a passthrough balancer made up: bounded
            self.peers = {id(e): (e, e.peer()) for e in self.endpoints}
        self.peers[id(endpoint)] = (endpoint, peer)
        return peer

    @property
    def healthy(self) -> int:
        return sum(1 for e in self.endpoints if e.healthy)


def _lines(*mappings: Mapping[str, str]) -> bytes:
    """Pre-encoded header lines (names lower-case)."""
    return b"".join(
        b"%s: %s\r\n" % (k.lower().encode("latin-1"), v.encode("latin-1")) for m in mappings for k, v in m.items()
    )


def _names(*groups: Iterable[str]) -> frozenset[bytes]:
    return frozenset(k.lower().encode("latin-1") for g in groups for k in g)


#: Response headers the CORS policy writes (an upstream's own values are replaced).
CORS_RESPONSE_NAMES = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                                 b"access-control-expose-headers"})


class CorsPlan:
    """A route's CORS policy, pre-digested: the origin test and the header lines to send.

    As Envoy's cors filter: a preflight from an allowed origin gets
    ``access-control-allow-origin`` (the origin), ``-allow-credentials``,
    ``-allow-methods``, ``-allow-headers``, ``-max-age``; an actual response
    gets ``access-control-allow-origin``, ``-allow-credentials`` and
    ``-expose-headers``. Origins match exactly (case-sensitive), by prefix, or
    by a regex matching the whole origin.
    """

    __slots__ = ("actual_lines", "exact", "preflight_lines", "prefixes", "regexes")

    def __init__(self, cors: CorsPolicy, where: str) -> None:
        self.exact = frozenset(o.exact for o in cors.allow_origins if o.exact is not None)
        self.prefixes = tuple(o.prefix for o in cors.allow_origins if o.exact is None and o.prefix is not None)
        regexes = []
        for o in cors.allow_origins:
            if o.exact is None and o.prefix is None and o.regex is not None:
                try:
                    regexes.append(re.compile(o.regex))
                except re.error as exc:
                    raise ValueError(f"{where}: cors origin regex {o.regex!r}: {exc}") from None
        self.regexes = tuple(regexes)
        credentials = b"access-control-allow-credentials: true\r\n" if cors.allow_credentials else b""
        pre = [credentials]
        if cors.allow_methods:
            pre.append(b"access-control-allow-methods: %s\r\n" % ",".join(cors.allow_methods).encode("latin-1"))
        if cors.allow_headers:
            pre.append(b"access-control-allow-headers: %s\r\n" % ",".join(cors.allow_headers).encode("latin-1"))
        if cors.max_age is not None:
            pre.append(b"access-control-max-age: %d\r\n" % cors.max_age)
        self.preflight_lines = b"".join(pre)
        actual = [credentials]
        if cors.expose_headers:
            actual.append(b"access-control-expose-headers: %s\r\n" % ",".join(cors.expose_headers).encode("latin-1"))
        self.actual_lines = b"".join(actual)

    def allows(self, origin: str) -> bool:
        if origin in self.exact:
            return True
        if any(origin.startswith(p) for p in self.prefixes):
            return True
        return any(r.fullmatch(origin) for r in self.regexes)

    def preflight(self, origin: str) -> bytes:
        return b"access-control-allow-origin: %s\r\n%s" % (origin.encode("latin-1"), self.preflight_lines)

    def actual(self, origin: str) -> bytes:
        return b"access-control-allow-origin: %s\r\n%s" % (origin.encode("latin-1"), self.actual_lines)


class RoutePlan:
    """One route, pre-digested: which clusters with what weights, timeouts, rewrites, header operations.

    `policies` is true when the route has a fault, mirrors or CORS: only then
    does the request path look at them. `rebuild` is true when responses
    need their head rewritten (response header operations, CORS).
    """

    __slots__ = (
        "clusters", "cors", "cumulative", "direct", "fault", "host_rewrite", "kind", "mirrors", "name", "policies", "prefix",
        "prefix_rewrite", "rebuild", "redirect", "resp_drop", "resp_lines", "retry", "route", "set_headers", "set_names",
        "single", "timeout", "total",
    )

    ACTION, DIRECT, REDIRECT = 0, 1, 2

    def __init__(self, route: Route, clusters: Mapping[str, ClusterRuntime], where: str):
        self.route = route
        self.name = route.name
        kinds = [k for k in (route.action, route.direct, route.redirect) if k is not None]
        if len(kinds) != 1:
            raise ValueError(f"{where}: a route needs exactly one of action, direct, redirect (has {len(kinds)})")
        # request: headers removed (and replaced) first, then the set and added lines
        self.set_headers = _lines(route.request_headers_set, route.request_headers_add)
        self.set_names = _names(route.request_headers_set, route.request_headers_remove)
        self.resp_lines = _lines(route.response_headers_set, route.response_headers_add)
        self.resp_drop = _names(route.response_headers_set, route.response_headers_remove)
        # Envoy's cors filter acts on routes with an action only (not direct responses, redirects)
        self.cors = CorsPlan(route.cors, where) if route.cors is not None and route.action is not None else None
        self.rebuild = bool(self.resp_lines or self.resp_drop or self.cors)
        self.fault: tuple[float | None, float, int | None, float] | None = None
        fault = route.fault
        if fault is not None and (fault.delay is not None or fault.abort_status is not None):
            if fault.delay is not None and fault.delay < 0:
                raise ValueError(f"{where}: fault delay must be >= 0, got {fault.delay}")
            if fault.abort_status is not None and not 200 <= fault.abort_status <= 599:
                raise ValueError(f"{where}: fault abort status {fault.abort_status} out of range")
            for p in (fault.delay_percent, fault.abort_percent):
                if not 0 <= p <= 100:
                    raise ValueError(f"{where}: fault percentage {p} is not between 0 and 100")
            self.fault = (fault.delay, fault.delay_percent, fault.abort_status, fault.abort_percent)
        self.mirrors: tuple[tuple[ClusterRuntime, float], ...] = ()
        if route.mirror:
            if route.action is None:
                raise ValueError(f"{where}: mirror needs a route action")
            for m in route.mirror:
                if not 0 <= m.percent <= 100:
                    raise ValueError(f"{where}: mirror percentage {m.percent} is not between 0 and 100")
            self.mirrors = tuple((clusters[m.cluster], m.percent) for m in route.mirror if m.percent > 0)
        self.policies = bool(self.fault or self.mirrors or self.cors)
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
    """One listener's chain: router and plans (http) or cluster (tcp), strategies; `tls`:
    the :class:`~knotwork_native.downstream_tls.TlsPlan` of a listener terminating TLS;
    `mtls`: the :class:`~knotwork_native.mesh_tls.InboundMtls` of an inbound listener
    accepting mesh mTLS (STRICT or PERMISSIVE).

    `key` decides whether a bound listener is kept across configs: a change of
    its TLS chains (not of their secrets' content), or between mesh mTLS and
    plaintext only, rebinds it (STRICT ↔ PERMISSIVE does not).
    """

    __slots__ = ("authn", "authz", "cluster", "clusters", "key", "listener", "mtls", "name", "peer_line", "plans", "reports_peer",
                 "router", "split", "started", "tcp_closed", "tcp_opened", "telemetry", "tls", "tracer")

    def __init__(self, listener: Listener, mtls: Any = None):
        self.listener = listener
        self.name = listener.name
        self.mtls = mtls
        self.key = (listener.address, listener.port, listener.mode, listener.protocol, listener.server_tls, mtls is not None)
        self.tls: Any = None
        self.router: Any = None
        self.plans: dict[int, RoutePlan] = {}
        self.clusters: Mapping[str, ClusterRuntime] = {}
        self.cluster: ClusterRuntime | None = None
        self.split: tuple[list[ClusterRuntime], list[int]] | None = None  # tcp: clusters and weights
        self.authn: tuple[Any, ...] = ()
        self.authz: tuple[Any, ...] = ()
        self.telemetry: tuple[Any, ...] = ()
        self.started: tuple[Any, ...] = ()  # the bound request_started of the sinks that have one
        self.tcp_opened: tuple[Any, ...] = ()  # the sinks' bound tcp_opened / tcp_closed (tcp listeners)
        self.tcp_closed: tuple[Any, ...] = ()
        self.tracer: Any = None  # a ListenerTracer (see .tracing) when the listener's observability traces
        # outbound, http_proxy and gateway listeners with observability: the x-knotwork-peer line they set
        self.peer_line = b""
        self.reports_peer = listener.mode != "inbound"  # upstream_peer is the chosen endpoint's (not the local app)

    def tcp_cluster(self) -> ClusterRuntime | None:
        """The cluster a new tcp connection goes to: the listener's, or one drawn by weight."""
        if self.split is None:
            return self.cluster
        clusters, weights = self.split
        return random.choices(clusters, weights)[0]

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
        self.tls_plans: dict[str, Any] = {}  # UpstreamTlsPlan by tag, for the next config to reuse

    def endpoint_keys(self) -> set[tuple[Any, ...]]:
        """The pool key of every endpoint any cluster may send to: (address, port), plus the TLS plan."""
        return {(e.address, e.port) if c.tls is None else c.tls.key(e) for c in self.clusters.values() for e in c.endpoints}


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
