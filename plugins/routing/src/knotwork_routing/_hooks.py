"""Hook implementations of the `routing` plugin: the host router and the networking compiler."""

from __future__ import annotations

from knotwork import Compiler, Strategy, hookimpl

from .compile import SLOTS, compile_proxy
from .router import HostRouter


@hookimpl
def knotwork_routers() -> list[Strategy]:
    """The ``host`` router: virtual host by domain, then routes in order."""
    return [
        Strategy(
            name="host",
            factory=HostRouter,
            description="domain lookup (exact, wildcards, *) then the first matching route, compiled once",
            engines=frozenset({"native", "envoy"}),
        )
    ]


@hookimpl
def knotwork_compilers() -> list[Compiler]:
    """The ``networking`` compiler: listeners, routes, clusters and endpoints of every proxy."""
    return [
        Compiler(
            name="networking",
            area="networking",
            slots=SLOTS,
            compile=compile_proxy,
            description="services, VirtualService, DestinationRule subsets and Gateway → listeners, routes, clusters",
        )
    ]
