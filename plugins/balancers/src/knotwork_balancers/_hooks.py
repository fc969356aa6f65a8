"""Hook implementations of the `balancers` plugin: the load balancer strategies."""

from __future__ import annotations

from knotwork import Strategy, hookimpl

from .others import LeastRequest, Random
from .roundrobin import RoundRobin

_ENGINES = frozenset({"native", "envoy"})


@hookimpl
def knotwork_load_balancers() -> list[Strategy]:
    """Round robin (the default), least request (power of two choices) and random."""
    return [
        Strategy(
            name="round_robin",
            factory=RoundRobin,
            description="round robin over healthy endpoints; smooth weighted (nginx) when weights differ",
            engines=_ENGINES,
        ),
        Strategy(
            name="least_request",
            factory=LeastRequest,
            description="power of two choices: the less busy of two random healthy endpoints",
            engines=_ENGINES,
        ),
        Strategy(
            name="random",
            factory=Random,
            description="a uniformly random healthy endpoint",
            engines=_ENGINES,
        ),
    ]
