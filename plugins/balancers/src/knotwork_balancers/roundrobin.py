"""Round robin: plain when weights are equal, smooth weighted (nginx) otherwise.

Deterministic: over N healthy endpoints of equal weight, N consecutive picks
hit each exactly once, starting with the first. With unequal weights the
order is nginx's *smooth weighted round robin* (weights 5, 1, 1 give
``a a b a c a a``), so heavy endpoints are spread out rather than hit in bursts.

Both cases are served by one precomputed *ring* of endpoint references: a pick
is an index increment, allocation-free. When the weighted period is too long
to precompute, the nginx algorithm runs online instead (O(N) per pick, still
allocation-free).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the kernel's proxy config types are slow to import
    from knotwork.proxyconfig import LbEndpoint

__all__ = ["MAX_RING_WORK", "RoundRobin", "smooth_weighted_order"]

#: Above this many steps (ring length times endpoints) the weighted ring is not
#: precomputed; smooth weighted round robin then runs online.
MAX_RING_WORK = 200_000


def _weight(endpoint: LbEndpoint) -> int:
    """An endpoint's effective weight: weights below 1 count as 1 (Envoy refuses 0)."""
    return endpoint.weight if endpoint.weight > 1 else 1


def smooth_weighted_order(weights: Sequence[int], steps: int) -> list[int]:
    """The first `steps` indexes chosen by nginx's smooth weighted round robin.

    Each step adds every weight to its running `current`, picks the largest
    (the first on ties) and subtracts the total from the winner.
    """
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(steps):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        order.append(best)
    return order


class RoundRobin:
    """The ``round_robin`` balancer of one cluster (see :class:`knotwork.protocols.Balancer`)."""

    __slots__ = ("_current", "_healthy", "_next", "_ring", "_total", "_weights")

    def __init__(self, cluster: Any = None, settings: Any = None) -> None:
        self._healthy: tuple[LbEndpoint, ...] = ()
        self._ring: tuple[LbEndpoint, ...] = ()  # empty when none healthy or in online mode
        self._next = 0
        # online smooth weighted round robin, used only when the ring would be too long
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0

    # ── configuration time ────────────────────────────────────────────────

    def update(self, endpoints: Sequence[LbEndpoint]) -> None:
        """Replace the endpoint set; unchanged healthy endpoints keep the rotation."""
        healthy = tuple(ep for ep in endpoints if ep.healthy)
        if healthy == self._healthy:
            return
        upcoming = self._ring[self._next] if self._ring else None
        self._healthy = healthy
        self._weights, self._current, self._total = [], [], 0
        weights = [_weight(ep) for ep in healthy]
        if len(set(weights)) <= 1:
            self._ring = healthy
        else:
            divisor = math.gcd(*weights)
            weights = [w // divisor for w in weights]
            period = sum(weights)
            if period * len(weights) <= MAX_RING_WORK:
                self._ring = tuple(healthy[i] for i in smooth_weighted_order(weights, period))
            else:
                self._ring = ()
                self._weights, self._current, self._total = weights, [0] * len(weights), period
        self._next = self._resume_at(upcoming)

    def _resume_at(self, upcoming: LbEndpoint | None) -> int:
        """Where to continue after an update: at the endpoint that was next, if still here."""
        ring = self._ring
        if not ring:
            return 0
        if upcoming is not None:
            for i, ep in enumerate(ring):
                if ep == upcoming:
                    return i
        return self._next % len(ring)

    # ── per request ───────────────────────────────────────────────────────

    def pick(self, request: Any = None, exclude: Sequence[LbEndpoint] = ()) -> LbEndpoint | None:
        """The next healthy endpoint not in `exclude`, or None."""
        ring = self._ring
        if ring and not exclude:
            i = self._next
            self._next = i + 1 if i + 1 < len(ring) else 0
            return ring[i]
        if ring:
            return self._pick_ring_excluding(exclude)
        if self._weights:
            return self._pick_online(exclude)
        return None

    def _pick_ring_excluding(self, exclude: Sequence[LbEndpoint]) -> LbEndpoint | None:
        """Walk the ring from the current position to the first endpoint not excluded."""
        ring, n = self._ring, len(self._ring)
        i = self._next
        for _ in range(n):
            ep = ring[i]
            i = i + 1 if i + 1 < n else 0
            if ep not in exclude:
                self._next = i
                return ep
        return None

    def _pick_online(self, exclude: Sequence[LbEndpoint]) -> LbEndpoint | None:
        """One step of nginx's smooth weighted round robin over the endpoints not excluded."""
        healthy, weights, current = self._healthy, self._weights, self._current
        best = -1
        total = self._total
        for i in range(len(weights)):
            if exclude and healthy[i] in exclude:
                total -= weights[i]
                continue
            current[i] += weights[i]
            if best == -1 or current[i] > current[best]:
                best = i
        if best == -1:
            return None
        current[best] -= total
        return healthy[best]
