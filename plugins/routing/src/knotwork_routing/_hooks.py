"""Hook implementations of the `routing` plugin: the host router and the networking compiler.

The compiler (and with it Gateway TLS's ``cryptography``) is imported on the
first compile, by the control plane; the router (and the kernel's proxy config
types) when a proxy builds its first route table. Every `knotwork` command loads
this module; few of them compile or route.
"""

from __future__ import annotations

from typing import Any

from knotwork import Compiler, Strategy, hookimpl

from .slots import SLOTS

_compile_proxy: Any = None


def host_router(table: Any, settings: Any = None) -> Any:
    """A :class:`knotwork_routing.router.HostRouter` for `table`."""
    from .router import HostRouter

    return HostRouter(table, settings)


def compile_proxy(builder: Any, inp: Any) -> None:
    """:func:`knotwork_routing.compile.compile_proxy`, imported on the first call."""
    global _compile_proxy
    if _compile_proxy is None:
        from .compile import compile_proxy as _compile_proxy
    _compile_proxy(builder, inp)


@hookimpl
def knotwork_routers() -> list[Strategy]:
    """The ``host`` router: virtual host by domain, then routes in order."""
    return [
        Strategy(
            name="host",
            factory=host_router,
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
            description="services, ServiceEntry, VirtualService, DestinationRule, Gateway and Sidecar → listeners, routes, clusters",
        )
    ]
