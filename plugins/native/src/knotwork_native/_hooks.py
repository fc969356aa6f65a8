"""Hook implementations of the `native` proxy engine plugin."""

from __future__ import annotations

from knotwork import ProxyEngine, hookimpl

from .proxy import NativeProxy
from .server import NativeServer
from .settings import NativeSettings


@hookimpl
def knotwork_proxy_engines() -> list[ProxyEngine]:
    return [
        ProxyEngine(
            name="native",
            control_server=NativeServer,
            proxy=NativeProxy,
            settings=NativeSettings,
            description="asyncio sidecars and gateways (uvloop + httptools), config over grpclib",
        )
    ]
