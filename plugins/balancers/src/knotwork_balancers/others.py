"""``least_request`` (power of two choices) and ``random`` balancers.

Both ignore endpoint weights for now (Envoy's ``LEAST_REQUEST`` biases by
weight when weights differ; that can come later). Randomness comes from a
:class:`random.Random` that tests may seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the kernel's proxy config types are slow to import
    from knotwork.proxyconfig import LbEndpoint

__all__ = ["LeastRequest", "Random"]


def _healthy(endpoints: Sequence[LbEndpoint]) -> tuple[LbEndpoint, ...]:
    return tuple(ep for ep in endpoints if ep.healthy)


def _scan_from(
    healthy: tuple[LbEndpoint, ...], start: int, exclude: Sequence[LbEndpoint]
) -> int:
    """Index of the first endpoint not in `exclude`, scanning from `start`; -1 if none."""
    n = len(healthy)
    for k in range(n):
        i = (start + k) % n
        if healthy[i] not in exclude:
            return i
    return -1


class Random:
    """The ``random`` balancer: a uniformly random healthy endpoint."""

    __slots__ = ("_healthy", "_random")

    def __init__(self, cluster: Any = None, settings: Any = None, *, rng: random.Random | None = None) -> None:
        self._healthy: tuple[LbEndpoint, ...] = ()
        self._random = (rng or random.Random()).random

    def update(self, endpoints: Sequence[LbEndpoint]) -> None:
        """Replace the endpoint set (healthy and unhealthy)."""
        self._healthy = _healthy(endpoints)

    def pick(self, request: Any = None, exclude: Sequence[LbEndpoint] = ()) -> LbEndpoint | None:
        """A random healthy endpoint not in `exclude`, or None."""
        healthy = self._healthy
        if not healthy:
            return None
        i = int(self._random() * len(healthy))
        if exclude:
            i = _scan_from(healthy, i, exclude)
            if i < 0:
                return None
        return healthy[i]


class LeastRequest:
    """The ``least_request`` balancer: power of two choices on active requests.

    Each pick samples two distinct healthy endpoints at random and takes the
    one with fewer requests in flight, then counts one more for it. The engine
    must call :meth:`release` with the picked endpoint when that request
    finishes (successfully or not), or the counts only grow.
    """

    __slots__ = ("_active", "_healthy", "_random", "_slots")

    def __init__(self, cluster: Any = None, settings: Any = None, *, rng: random.Random | None = None) -> None:
        self._healthy: tuple[LbEndpoint, ...] = ()
        self._active: list[int] = []
        self._slots: dict[tuple[str, int], int] = {}  # (address, port) -> index
        self._random = (rng or random.Random()).random

    def update(self, endpoints: Sequence[LbEndpoint]) -> None:
        """Replace the endpoint set; endpoints still present keep their in-flight counts."""
        before = {key: self._active[i] for key, i in self._slots.items()}
        self._healthy = _healthy(endpoints)
        self._slots = {}
        for i, ep in enumerate(self._healthy):
            self._slots.setdefault((ep.address, ep.port), i)
        self._active = [before.get((ep.address, ep.port), 0) for ep in self._healthy]

    def pick(self, request: Any = None, exclude: Sequence[LbEndpoint] = ()) -> LbEndpoint | None:
        """The less loaded of two random healthy endpoints not in `exclude`, or None."""
        healthy, active = self._healthy, self._active
        n = len(healthy)
        if n == 0:
            return None
        if exclude:
            i = self._least_excluding(exclude)
            if i < 0:
                return None
        elif n == 1:
            i = 0
        else:
            a = int(self._random() * n)
            b = int(self._random() * (n - 1))
            if b >= a:
                b += 1
            i = a if active[a] <= active[b] else b
        active[i] += 1
        return healthy[i]

    def _least_excluding(self, exclude: Sequence[LbEndpoint]) -> int:
        """Retry path: the least loaded endpoint not excluded, first one from a random start on ties."""
        healthy, active = self._healthy, self._active
        n = len(healthy)
        start = int(self._random() * n)
        best = -1
        for k in range(n):
            i = (start + k) % n
            if healthy[i] not in exclude and (best < 0 or active[i] < active[best]):
                best = i
        return best

    def release(self, endpoint: LbEndpoint) -> None:
        """A request sent to `endpoint` finished: count one fewer in flight."""
        i = self._slots.get((endpoint.address, endpoint.port))
        if i is not None and self._active[i] > 0:
            self._active[i] -= 1

    def active(self, endpoint: LbEndpoint) -> int:
        """Requests in flight to `endpoint` (for tests and debugging)."""
        i = self._slots.get((endpoint.address, endpoint.port))
        return 0 if i is None else self._active[i]
