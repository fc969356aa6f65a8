"""Hook implementations of the `native` proxy engine plugin.

The distribution server and the proxy (uvloop, httptools, the data plane)
are imported only when the kernel calls their factory: every `knotwork`
command loads this module, few of them run a proxy or a control plane.
"""

from __future__ import annotations

from knotwork import ProxyEngine, hookimpl, lazy

from .settings import NativeSettings


@hookimpl
def knotwork_proxy_engines() -> list[ProxyEngine]:
    return [
        ProxyEngine(
            name="native",
            control_server=lazy("knotwork_native.server:NativeServer"),
            proxy=lazy("knotwork_native.proxy:NativeProxy"),
            settings=NativeSettings,
            description="asyncio sidecars and gateways (uvloop + httptools), config over grpclib",
        )
    ]
