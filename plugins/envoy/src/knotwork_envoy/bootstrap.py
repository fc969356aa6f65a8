"""The Envoy bootstrap a sidecar agent writes: who it is, where its config comes from.

Everything but the xDS server's cluster comes over one ADS stream; LDS and
CDS wait for the control plane as long as it takes (no initial fetch
timeout), so Envoy is LIVE only once it has a real config. The node is sent
on the first message only: a full node description on every ACK costs the
Python server ~14 ms of parsing each (see BENCHMARKS.md). Envoy's admin
binds 127.0.0.1 on a free port, written to a file the agent reads.

With a workload identity (`sds_path`) the bootstrap also has the static
cluster ``sds-grpc`` to the agent's secret discovery socket
(:mod:`.sds`), and the control channel is mTLS: Envoy presents the proxy's
SVID (secret ``default``), verifies the control plane with the trust bundle
(``ROOTCA``) and accepts it when its certificate names `control_identity`
(URI SAN) or the control address's host (IP or DNS SAN, as the native
engine's host name check does); ALPN ``h2``.

With `traces_path` the bootstrap has the static cluster ``knotwork_traces``
to the agent's trace collector (HTTP/1.1 on a unix socket, see
:mod:`.traces`), which connection managers with tracing name as their Zipkin
collector, and a runtime layer that has Envoy's Zipkin tracer post its spans
every :data:`TRACE_FLUSH_MS` (Envoy: 5 s).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .httpio import parse_address
from .sds import CERT_SECRET, ROOT_SECRET, SDS_CLUSTER, mesh_secret

#: The collector cluster connection managers' Zipkin tracers name (see translate.observe).
TRACES_CLUSTER = "knotwork_traces"
#: How often Envoy's Zipkin tracer posts its buffered spans to the agent.
TRACE_FLUSH_MS = 200

__all__ = ["TRACES_CLUSTER", "XDS_CLUSTER", "bootstrap", "control_channel_tls", "sds_cluster", "traces_cluster"]

XDS_CLUSTER = "knotwork_xds"
_CONNECTIONS = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
#: Downstream connections one Envoy accepts (set, so Envoy does not warn that there is no limit).
MAX_CONNECTIONS = 65536
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": _HTTP_OPTIONS,
    "explicit_http_config": {"http2_protocol_options": {"connection_keepalive": {"interval": "10s", "timeout": "5s"}}},
}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def sds_cluster(path: str) -> dict[str, Any]:
    """The static cluster of the agent's SDS server: gRPC (HTTP/2) on the unix socket `path`."""
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _H2_OPTIONS,
        "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": path}}}},
        ]}]},
    }


def traces_cluster(path: str) -> dict[str, Any]:
    """The static cluster of the agent's trace collector: HTTP/1.1 on the unix socket `path`."""
    return {
        "name": TRACES_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": TRACES_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": path}}}},
        ]}]},
    }


def control_channel_tls(host: str, control_identity: str | None) -> dict[str, Any]:
    """The xDS cluster's mTLS transport socket (see the module docstring)."""
    names = [{"san_type": "IP_ADDRESS" if _is_ip(host) else "DNS", "matcher": {"exact": host}}]
    if control_identity:
        names.insert(0, {"san_type": "URI", "matcher": {"exact": control_identity}})
    context: dict[str, Any] = {
        "@type": _UPSTREAM_TLS,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [mesh_secret(CERT_SECRET)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": names},
                "validation_context_sds_secret_config": mesh_secret(ROOT_SECRET),
            },
        },
    }
    if not _is_ip(host):
        context["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def bootstrap(node_id: str, control_address: str, *, cluster: str = "knotwork", engine_version: str = "",
              sds_path: str | None = None, control_identity: str | None = None,
              traces_path: str | None = None) -> dict[str, Any]:
    """The bootstrap (JSON, which Envoy reads as YAML) of one sidecar or gateway.

    `sds_path`: the agent's SDS socket (the proxy has a workload identity: mTLS to
    the control plane, whose SVID names `control_identity`); None: plaintext.
    `traces_path`: the agent's trace collector socket (None: no tracing).
    """
    host, port = parse_address(control_address)
    ads = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    xds: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _H2_OPTIONS,
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}},
        ]}]},
    }
    clusters = [xds]
    if sds_path is not None:
        xds["transport_socket"] = control_channel_tls(host, control_identity)
        clusters.insert(0, sds_cluster(sds_path))  # defined before the clusters whose TLS needs it
    extra: dict[str, Any] = {}
    if traces_path is not None:
        clusters.append(traces_cluster(traces_path))
        extra["layered_runtime"] = {"layers": [
            {"name": "knotwork", "static_layer": {"tracing.zipkin.flush_interval_ms": TRACE_FLUSH_MS}},
            {"name": "admin", "admin_layer": {}},
        ]}
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
        "static_resources": {"clusters": clusters},
        **extra,
    }
