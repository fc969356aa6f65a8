"""The Envoy bootstrap a sidecar agent writes: who it is, where its config comes from.

Everything but the xDS server's cluster comes over one ADS stream; LDS and
CDS wait for the control plane as long as it takes (no initial fetch
timeout), so Envoy is LIVE only once it has a real config. The node is sent
on the first message only: a full node description on every ACK costs the
Python server ~14 ms of parsing each (see BENCHMARKS.md). Envoy's admin
binds 127.0.0.1 on a free port, written to a file the agent reads.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .httpio import parse_address

__all__ = ["XDS_CLUSTER", "bootstrap"]

XDS_CLUSTER = "knotwork_xds"
_CONNECTIONS = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
#: Downstream connections one Envoy accepts (set, so Envoy does not warn that there is no limit).
MAX_CONNECTIONS = 65536
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bootstrap(node_id: str, control_address: str, *, cluster: str = "knotwork", engine_version: str = "") -> dict[str, Any]:
    """The bootstrap (JSON, which Envoy reads as YAML) of one sidecar or gateway."""
    host, port = parse_address(control_address)
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": {"knotwork_engine": "envoy", "knotwork_version": engine_version}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    # reconnect as the native client does: 0.1 s doubling to 2 s (Envoy: 0.5 s to 30 s)
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "2s"}},
                }}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": _CONNECTIONS, "max_active_downstream_connections": MAX_CONNECTIONS},
        }]},
        "static_resources": {"clusters": [{
            "name": XDS_CLUSTER,
            "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _HTTP_OPTIONS,
                    "explicit_http_config": {"http2_protocol_options": {
                        "connection_keepalive": {"interval": "10s", "timeout": "5s"},
                    }},
                },
            },
            "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}},
            ]}]},
        }]},
    }
