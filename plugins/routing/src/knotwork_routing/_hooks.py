"""Hook implementations of the `routing` plugin: the host router and the networking compiler.

The compiler (and with it Gateway TLS's ``cryptography``) is imported on the
first compile, by the control plane; the router (and the kernel's proxy config
types) when a proxy builds its first route table. Every `knotwork` command loads
this module; few of them compile or route.
"""

from __future__ import annotations

from knotwork import Compiler, Strategy, hookimpl, lazy

from .slots import SLOTS


@hookimpl
def knotwork_routers() -> list[Strategy]:
    """The ``host`` router: virtual host by domain, then routes in order."""
    return [
        Strategy(
            name="host",
            factory=lazy("knotwork_routing.router:HostRouter"),
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
            compile=lazy("knotwork_routing.compile:compile_proxy"),
            description="services, ServiceEntry, VirtualService, DestinationRule, Gateway, Sidecar and "
                        "PeerAuthentication → listeners, routes, clusters (with mTLS)",
        )
    ]
