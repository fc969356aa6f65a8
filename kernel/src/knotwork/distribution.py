"""The shared core of config distribution, used by every engine's server.

:class:`SnapshotCache` holds each proxy's latest compiled snapshot and wakes
streams on change. :class:`AdsSession` is the state-of-the-world ADS state
machine of one stream: per resource type a version, a nonce, ACK/NACK, the
names subscribed; it decides what to send and in which order (SDS, CDS, EDS,
LDS, RDS; removals in reverse). Engines only encode and transport.

Both also keep the control plane's distribution counters, as plain numbers on
each node's :class:`StreamStatus` (the control plane exports them at scrape
time): responses sent and NACKs received per type, and the push latency, from
a snapshot being stored to the proxy's ACK of it.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import attrs

from .proxyconfig import TYPE_ORDER, ProxySnapshot

__all__ = ["LATENCY_BUCKETS", "AdsSession", "DiscoveryRequest", "Latency", "Push", "ResourceCache", "SnapshotCache",
           "StreamStatus"]

#: Types subscribed by wildcard; the others are requested by name. Secrets are by
#: name, as in Envoy's SDS: a listener naming a new secret subscribes to it and is
#: owed a response (a proxy asking with no names gets them all).
WILDCARD_TYPES = frozenset({"listeners", "clusters"})
#: A re-sent parent obliges an answer to the child's next request (Envoy warming).
_CHILD = {"clusters": "endpoints", "listeners": "routes"}

_nonces = itertools.count(1)

#: Upper bounds (seconds) of the push latency histogram: Istio's pilot_proxy_convergence_time
#: buckets (0.1 s to 30 s) with finer ones below, where a loopback mesh converges.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0)


@attrs.define
class Latency:
    """A histogram as plain numbers: `counts[i]` observations of at most ``LATENCY_BUCKETS[i]``
    seconds (and above the one before); the last slot is for those above every bound."""

    counts: list[int] = attrs.Factory(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


@attrs.define
class StreamStatus:
    """Per type, what one proxy was sent and what it accepted (proxy-status), and its counters.

    It outlives the proxy's streams (the cache keeps one per node), so the
    counters only grow: `pushes` and `nacks` per type, `latency` of pushes
    from the snapshot being stored (`changed_at`, monotonic, set by
    :meth:`SnapshotCache.set`) or the proxy's request, whichever came later,
    to the proxy's ACK.
    """

    sent: dict[str, str] = attrs.Factory(dict)
    acked: dict[str, str] = attrs.Factory(dict)
    nacked: dict[str, str] = attrs.Factory(dict)  # type -> error detail of the last NACK
    pushes: dict[str, int] = attrs.Factory(dict)
    nacks: dict[str, int] = attrs.Factory(dict)
    latency: Latency = attrs.Factory(Latency)
    changed_at: float = 0.0


class SnapshotCache:
    """The latest snapshot of every proxy, and the status of their streams."""

    def __init__(self) -> None:
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._changed = anyio.Event()
        self.status: dict[str, StreamStatus] = {}
        self.connected: dict[str, int] = {}

    def set(self, node_id: str, snapshot: ProxySnapshot) -> bool:
        """Store a node's snapshot; return True if it changed."""
        old = self._snapshots.get(node_id)
        if old is not None and old.version == snapshot.version:
            return False
        self._snapshots[node_id] = snapshot
        self.status.setdefault(node_id, StreamStatus()).changed_at = time.monotonic()
        return True

    def notify(self) -> None:
        """Wake every stream waiting for a change (call after a batch of `set`)."""
        self._changed.set()
        self._changed = anyio.Event()

    def get(self, node_id: str) -> ProxySnapshot | None:
        return self._snapshots.get(node_id)

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    async def wait_change(self, node_id: str, seen: str | None) -> ProxySnapshot:
        """Return the node's snapshot once its version differs from `seen`."""
        while True:
            event = self._changed
            snap = self._snapshots.get(node_id)
            if snap is not None and snap.version != seen:
                return snap
            await event.wait()


class ResourceCache:
    """Encoded resources keyed by (type, name, version), shared by all streams."""

    def __init__(self, limit: int = 20_000) -> None:
        self._data: dict[tuple[str, str, str], Any] = {}
        self._limit = limit

    def get(self, key: tuple[str, str, str], encode: Callable[[], Any]) -> Any:
        try:
            return self._data[key]
        except KeyError:
            if len(self._data) >= self._limit:
                self._data.clear()
            value = self._data[key] = encode()
            return value


@attrs.frozen
class DiscoveryRequest:
    """An ADS request (or ACK/NACK) from a proxy, engine-neutral."""

    type: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    error_detail: str | None = None


@attrs.frozen
class Push:
    """One response to send: the type's whole subscribed set (`resources`,
    for state-of-the-world) plus which of them changed and which were removed."""

    type: str
    version: str
    nonce: str
    resources: dict[str, Any]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


class AdsSession:
    """The ADS state of one stream from one proxy."""

    def __init__(self, node_id: str, status: StreamStatus | None = None) -> None:
        self.node_id = node_id
        self.status = status if status is not None else StreamStatus()
        self._sent: dict[str, dict[str, str]] = {}  # type -> name -> version sent
        self._nonce: dict[str, str] = {}
        self._names: dict[str, frozenset[str]] = {}
        self._pending: set[str] = set()  # types that owe a response
        self._asked: dict[str, float] = {}  # type -> when the proxy last asked for a response (monotonic)
        self._unacked: dict[str, float] = {}  # type -> latency start of the last push, until its ACK or NACK

    def on_request(self, req: DiscoveryRequest) -> str:
        """Account for a request; returns 'ack', 'nack', 'subscribe' or 'stale'.

        A 'subscribe' (first request, changed names, or a child of a re-sent
        parent) means the type owes a response; ACK and NACK never do.
        """
        names = frozenset(req.resource_names)
        last = self._nonce.get(req.type)
        if req.response_nonce and req.response_nonce != last:
            return "stale"
        changed_names = req.type not in WILDCARD_TYPES and names != self._names.get(req.type)
        self._names[req.type] = names
        if not req.response_nonce:
            self._pending.add(req.type)
            self._asked[req.type] = time.monotonic()
            if req.version_info:
                self.status.acked[req.type] = req.version_info
            return "subscribe"
        pushed = self._unacked.pop(req.type, None)
        if req.error_detail:
            self.status.nacked[req.type] = req.error_detail
            self.status.nacks[req.type] = self.status.nacks.get(req.type, 0) + 1
            verdict = "nack"
        else:
            self.status.acked[req.type] = req.version_info
            self.status.nacked.pop(req.type, None)
            if pushed is not None:
                self.status.latency.observe(time.monotonic() - pushed)
            verdict = "ack"
        if changed_names or req.type in self._pending:
            self._pending.add(req.type)
            self._asked[req.type] = time.monotonic()
            return "subscribe"
        return verdict

    def _subscribed(self, type_key: str, snapshot: ProxySnapshot) -> dict[str, Any]:
        available = snapshot.resources[type_key]
        if type_key in WILDCARD_TYPES or not self._names.get(type_key):
            return dict(available)
        return {n: available[n] for n in self._names[type_key] if n in available}

    def plan(self, snapshot: ProxySnapshot, types: Iterable[str] | None = None) -> list[Push]:
        """The responses to send now, in xDS order; removals come last, reversed.

        Only types the proxy subscribed to are considered; a type is sent when
        it owes a response or its subscribed resources changed.
        """
        wanted = set(types) if types is not None else set(self._names)
        pushes: list[Push] = []
        removals: list[Push] = []
        for type_key in TYPE_ORDER:
            if type_key not in wanted or type_key not in self._names:
                continue
            current = self._subscribed(type_key, snapshot)
            versions = {n: snapshot.versions[type_key][n] for n in current}
            before = self._sent.get(type_key)
            if before == versions and type_key not in self._pending:
                continue
            before = before or {}
            changed = tuple(sorted(n for n, v in versions.items() if before.get(n) != v))
            removed = tuple(sorted(set(before) - set(versions)))
            nonce = str(next(_nonces))
            push = Push(type_key, snapshot.type_version(type_key), nonce, current, changed, removed)
            self._sent[type_key] = versions
            self._nonce[type_key] = nonce
            self._pending.discard(type_key)
            self.status.sent[type_key] = push.version
            self.status.pushes[type_key] = self.status.pushes.get(type_key, 0) + 1
            self._unacked[type_key] = max(self.status.changed_at, self._asked.get(type_key, 0.0))
            if changed and type_key in _CHILD:
                self._pending.add(_CHILD[type_key])
            (removals if removed and not changed else pushes).append(push)
        return pushes + removals[::-1]
