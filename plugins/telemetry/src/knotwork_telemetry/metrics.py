"""The ``metrics`` telemetry sink: Istio's standard metrics for one listener.

Built once per listener and config (``factory(listener, settings)``); what
the listener reports comes from ``listener.observability``
(:class:`knotwork.proxyconfig.Observability`). Per request the sink queues
one tuple of raw values (see :mod:`.store`); when it is digested, the values
the labels depend on (cluster, upstream peer, status, flags, …) find their
series in a dict and the sink adds to plain lists; labels are worked out once
per distinct key. A listener without observability, or
with metrics off, gets methods that return at once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from knotwork.proxyconfig import PEER_HEADER, Listener, Observability, PeerInfo, TagOverride

from . import peers
from .expressions import compile_expression
from .naming import METRICS, NAMINGS, Naming
from .peers import UNKNOWN
from .store import PENDING, PENDING_MAX, Family, queued, store

__all__ = ["HTTP_LABELS", "TCP_LABELS", "MetricsSink"]

#: Istio's standard labels of request metrics, in Istio's order.
HTTP_LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_canonical_service", "source_canonical_revision",
    "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision",
    "request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)
#: TCP metrics carry no response code or gRPC status.
TCP_LABELS = tuple(n for n in HTTP_LABELS if n not in ("response_code", "grpc_response_status"))
_HTTP_METRICS = METRICS[:4]
_TCP_METRICS = METRICS[4:]
_MAX_CACHED = 4096
_MODES = {"source": ("CLIENT", "CLIENT_AND_SERVER"), "destination": ("SERVER", "CLIENT_AND_SERVER")}


def _nothing(*args: Any) -> None:
    return None


class _Plan:
    """How one metric's labels are made on this listener: overrides in order, and its family (None: dropped)."""

    def __init__(self, family: Family | None, overrides: Sequence[tuple[str, bool, int | None, str]]) -> None:
        self.family = family
        self.overrides = overrides  # (tag, remove, index into the dynamic values or None, literal)

    def series(self, base: list[tuple[str, str]], dynamic: Sequence[str], size: int) -> list[float]:
        if self.family is None:
            return [0] * size  # written, never exported
        labels = dict(base)
        for tag, remove, index, literal in self.overrides:
            if remove:
                labels.pop(tag, None)
            else:
                labels[tag] = dynamic[index] if index is not None else literal
        return self.family.get(tuple(labels.items()))


class MetricsSink:
    """Counts one listener's requests and TCP connections into the process's metric store."""

    def __init__(self, listener: Listener, settings: Any = None) -> None:
        obs: Observability | None = listener.observability
        self._cache: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        if obs is None or not obs.metrics:
            self.request_finished = self.tcp_opened = self.tcp_closed = _nothing
            return
        naming = NAMINGS.get(obs.naming)
        if naming is None:
            raise ValueError(f"observability.naming: expected one of {', '.join(NAMINGS)}, got {obs.naming!r}")
        if obs.reporter not in _MODES:
            raise ValueError(f"observability.reporter: expected source or destination, got {obs.reporter!r}")
        self._obs, self._naming = obs, naming
        self._scale = naming.duration_scale
        self._dbounds, self._bbounds = naming.duration_bounds, naming.bytes_bounds
        self._dynamic: tuple[Callable[[Any, Any], str], ...] = ()
        self._plans = self._make_plans(obs, naming)
        self._workload = obs.workload
        self._service = (obs.service, *peers.split_fqdn(obs.service)) if obs.service else None
        # the digest of this listener's tuples, bound once (a bound method read from the class is made per read)
        self._digest = self._digest_source if obs.reporter == "source" else self._digest_destination
        if obs.reporter == "source":
            self.request_finished = self._finished_source if not self._dynamic else self._finished_source_dynamic
        else:
            self.request_finished = (self._finished_destination if not self._dynamic
                                     else self._finished_destination_dynamic)

    # ── plans: families and tag overrides, once per listener ────────────────

    def _make_plans(self, obs: Observability, naming: Naming) -> dict[str, _Plan]:
        st = store()
        modes = _MODES[obs.reporter]
        expressions: dict[str, int] = {}
        plans: dict[str, _Plan] = {}
        for metric in METRICS:
            name = naming.names[metric]
            if metric in ("REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE"):
                bounds = naming.duration_bounds if metric == "REQUEST_DURATION" else naming.bytes_bounds
                family: Family | None = st.histogram(name, naming.help[metric], bounds, naming.le(bounds))
            else:
                family = st.counter(name, naming.help[metric])
            if metric in obs.disabled_metrics:  # Telemetry API `disabled`
                family = None
            overrides: list[tuple[str, bool, int | None, str]] = []
            for override in obs.tag_overrides:
                if override.mode not in modes or override.metric not in (metric, "ALL_METRICS"):
                    continue
                overrides.append(self._override(override, expressions))
            plans[metric] = _Plan(family, overrides)
        return plans

    def _override(self, override: TagOverride, expressions: dict[str, int]) -> tuple[str, bool, int | None, str]:
        if override.remove:
            return (override.tag, True, None, "")
        value = override.value.strip()
        if value[:1] in ("'", '"') and "|" not in value:
            return (override.tag, False, None, compile_expression(value)(None, None))
        if value not in expressions:
            expressions[value] = len(self._dynamic)
            self._dynamic = (*self._dynamic, compile_expression(value))
        return (override.tag, False, expressions[value], "")

    # ── requests ────────────────────────────────────────────────────────────

    # Per request only the raw values go to the store's pending list (see .store); `_digest_*` turn them into
    # counter updates when the pending tuples are flushed. Dynamic tag values read the request: worked out now.

    def _finished_source(self, request: Any, response: Any) -> None:
        PENDING.append((self._digest, response.cluster, response.upstream_peer, response.status, response.flags,
                        response.grpc_status, request.header("content-type"), request.authority, (),
                        response.duration, response.bytes_received, response.bytes_sent))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _finished_source_dynamic(self, request: Any, response: Any) -> None:
        PENDING.append((self._digest, response.cluster, response.upstream_peer, response.status, response.flags,
                        response.grpc_status, request.header("content-type"), request.authority,
                        tuple(f(request, response) for f in self._dynamic),
                        response.duration, response.bytes_received, response.bytes_sent))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _finished_destination(self, request: Any, response: Any) -> None:
        PENDING.append((self._digest, request.header(PEER_HEADER), request.connection.peer_identity,
                        response.status, response.flags, response.grpc_status, request.header("content-type"),
                        response.cluster, request.authority, (),
                        response.duration, response.bytes_received, response.bytes_sent))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _finished_destination_dynamic(self, request: Any, response: Any) -> None:
        PENDING.append((self._digest, request.header(PEER_HEADER), request.connection.peer_identity,
                        response.status, response.flags, response.grpc_status, request.header("content-type"),
                        response.cluster, request.authority, tuple(f(request, response) for f in self._dynamic),
                        response.duration, response.bytes_received, response.bytes_sent))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _digest_source(self, entry: tuple[Any, ...]) -> None:
        _, cluster, upstream, status, flags, grpc_status, ctype, authority, dyn, duration, received, sent = entry
        # the upstream peer by identity (kept in the series, so its id stays its own)
        key = (cluster, id(upstream), status, flags, grpc_status,
               ctype is not None and ctype.startswith("application/grpc"), authority, *dyn)
        found = self._cache.get(key)
        if found is None or found[4] is not upstream:
            found = self._http_series(key, dyn, self._source_base(key, upstream), upstream)
        self._record(found, duration, received, sent)

    def _digest_destination(self, entry: tuple[Any, ...]) -> None:
        _, header, identity, status, flags, grpc_status, ctype, cluster, authority, dyn, duration, received, sent = entry
        key = (header, identity, status, flags, grpc_status,
               ctype is not None and ctype.startswith("application/grpc"),
               None if self._service else cluster, None if self._service else authority, *dyn)
        found = self._cache.get(key)
        if found is None:
            found = self._http_series(key, dyn, self._destination_base(key), None)
        self._record(found, duration, received, sent)

    def _record(self, series: tuple[Any, ...], seconds: float, received_bytes: int, sent_bytes: int) -> None:
        count, duration, received, sent, _ = series
        count[0] += 1
        value = seconds * self._scale
        duration[0] += 1
        duration[1] += value
        duration[2 + bisect_left(self._dbounds, value)] += 1
        received[0] += 1
        received[1] += received_bytes
        received[2 + bisect_left(self._bbounds, received_bytes)] += 1
        sent[0] += 1
        sent[1] += sent_bytes
        sent[2 + bisect_left(self._bbounds, sent_bytes)] += 1

    def _http_series(self, key: tuple[Any, ...], dynamic: Sequence[str], base: list[tuple[str, str]],
                     upstream: PeerInfo | None) -> tuple[Any, ...]:
        """The four series of a request key, and the upstream peer whose id the key holds."""
        plans = self._plans
        counter_size, dsize, bsize = 1, 3 + len(self._dbounds), 3 + len(self._bbounds)
        found = (plans["REQUEST_COUNT"].series(base, dynamic, counter_size),
                 plans["REQUEST_DURATION"].series(base, dynamic, dsize),
                 plans["REQUEST_SIZE"].series(base, dynamic, bsize),
                 plans["RESPONSE_SIZE"].series(base, dynamic, bsize),
                 upstream)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _source_base(self, key: tuple[Any, ...], upstream: PeerInfo | None) -> list[tuple[str, str]]:
        cluster, _, status, flags, grpc_status, grpc, authority = key[:7]
        return _labels(HTTP_LABELS, "source", self._workload, upstream or peers.UNKNOWN_PEER,
                       peers.service_of(cluster, authority), "grpc" if grpc else "http", str(status), grpc_status,
                       flags, UNKNOWN)

    def _destination_base(self, key: tuple[Any, ...]) -> list[tuple[str, str]]:
        header, identity, status, flags, grpc_status, grpc, cluster, authority = key[:8]
        service = self._service or peers.service_of(cluster, authority)
        return _labels(HTTP_LABELS, "destination", peers.source_peer(header, identity), self._workload, service,
                       "grpc" if grpc else "http", str(status), grpc_status, flags,
                       "mutual_tls" if identity else "none")

    # ── TCP connections ─────────────────────────────────────────────────────

    def tcp_opened(self, info: Any) -> None:
        self._tcp(info)[0][0] += 1

    def tcp_closed(self, info: Any) -> None:
        _, closed, sent, received = self._tcp(info)
        closed[0] += 1
        sent[0] += info.bytes_sent
        received[0] += info.bytes_received

    def _tcp(self, info: Any) -> tuple[list[float], ...]:
        dynamic = tuple(f(None, info) for f in self._dynamic) if self._dynamic else ()
        if self._obs.reporter == "source":
            key: tuple[Any, ...] = ("tcp", info.cluster, info.upstream_peer, info.flags, *dynamic)
        else:
            key = ("tcp", info.connection.peer_identity, info.flags, *dynamic)
        found = self._cache.get(key)
        if found is None:
            if self._obs.reporter == "source":
                base = _labels(TCP_LABELS, "source", self._workload, info.upstream_peer or peers.UNKNOWN_PEER,
                               peers.service_of(info.cluster, None), "tcp", "", "", info.flags, UNKNOWN)
            else:
                identity = info.connection.peer_identity
                base = _labels(TCP_LABELS, "destination", peers.source_peer(None, identity), self._workload,
                               self._service or peers.service_of(info.cluster, None), "tcp", "", "", info.flags,
                               "mutual_tls" if identity else "none")
            found = tuple(self._plans[m].series(base, dynamic, 1) for m in _TCP_METRICS)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = found
        return found


def _labels(names: tuple[str, ...], reporter: str, source: PeerInfo, destination: PeerInfo,
            service: tuple[str, str, str], protocol: str, code: str, grpc_status: str, flags: str,
            security: str) -> list[tuple[str, str]]:
    values = {
        "reporter": reporter,
        "source_workload": source.workload, "source_workload_namespace": source.namespace,
        "source_principal": source.principal, "source_app": source.app, "source_version": source.version,
        "source_canonical_service": peers.canonical(source)[0], "source_canonical_revision": peers.canonical(source)[1],
        "destination_workload": destination.workload, "destination_workload_namespace": destination.namespace,
        "destination_principal": destination.principal, "destination_app": destination.app,
        "destination_version": destination.version,
        "destination_service": service[0], "destination_service_name": service[1],
        "destination_service_namespace": service[2],
        "destination_canonical_service": peers.canonical(destination)[0],
        "destination_canonical_revision": peers.canonical(destination)[1],
        "request_protocol": protocol, "response_code": code, "grpc_response_status": grpc_status,
        "response_flags": flags or "-", "connection_security_policy": security,
    }
    return [(n, values[n]) for n in names]
