"""Hook implementations of the `native` proxy engine plugin.

The distribution server and the proxy (uvloop, httptools, the data plane)
are imported only when the kernel calls their factory: every `knotwork`
command loads this module, few of them run a proxy or a control plane.
"""

from __future__ import annotations

from typing import Any

from knotwork import ComponentContext, ProxyContext, ProxyEngine, hookimpl

from .settings import NativeSettings


def control_server(ctx: ComponentContext, cache: Any) -> Any:
    from .server import NativeServer

    return NativeServer(ctx, cache)


def proxy(ctx: ProxyContext) -> Any:
    from .proxy import NativeProxy

    return NativeProxy(ctx)


@hookimpl
def knotwork_proxy_engines() -> list[ProxyEngine]:
    return [
        ProxyEngine(
            name="native",
            control_server=control_server,
            proxy=proxy,
            settings=NativeSettings,
            description="asyncio sidecars and gateways (uvloop + httptools), config over grpclib",
        )
    ]
