"""``Listener`` → Envoy ``config.listener.v3.Listener``.

- ``inbound`` and ``gateway`` (traffic direction INBOUND, drained on stop)
  and ``http_proxy`` / ``outbound`` (OUTBOUND);
- ``http``: an HTTP connection manager whose routes come over RDS
  (``route_config_name`` = the listener's route table), the router filter,
  and the native engine's local replies (:mod:`.replies`); ``http_proxy``
  also takes absolute-form requests and terminates ``CONNECT``; ``http_proxy``
  and ``gateway`` listeners carry the dynamic forward proxy filter, which
  resolves the host of passthrough clusters (and does nothing for others);
- ``tcp``: a TCP proxy to the listener's cluster (3 connect attempts, as
  the native engine).

Listeners bind exclusively (no ``SO_REUSEPORT``), as the native engine's do,
so a port already in use is refused (NACK) instead of shared.

A listener with ``server_tls`` (a gateway's HTTPS servers) gets the TLS
inspector listener filter and one filter chain per
:class:`~knotwork.proxyconfig.ServerTls`: ``filter_chain_match.server_names``
(none: the fallback chain) and a ``DownstreamTlsContext`` whose certificate
and client CA come over SDS on the ADS stream (``tls_certificate_sds_secret_configs``,
``validation_context_sds_secret_config`` with ``require_client_certificate``),
TLS 1.2 at least unless the chain says otherwise. Every chain runs the same
HTTP connection manager.

An inbound listener's ``tls`` (:class:`~knotwork.proxyconfig.PeerTls`, the
mesh mTLS it accepts, see :mod:`.tls`): ``STRICT`` — one filter chain whose
``DownstreamTlsContext`` requires a client SVID of the trust domain (a
plaintext client fails the handshake); ``PERMISSIVE`` — the TLS inspector
and two chains, ``transport_protocol: tls`` → that mTLS chain, ``raw_buffer``
→ plaintext (a client that sends nothing for 1 s, a server-first protocol,
gets the plaintext chain), as Istio's inbound does; ``DISABLE`` —
plaintext. Over mTLS the connection manager sets
``x-forwarded-client-cert`` for the app (``SANITIZE_SET``:
``By=<own id>;Hash=<peer cert hash>;URI=<peer id>``, whatever the client
sent is dropped); on plaintext chains it removes any the client sent.
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import PEER_MODES, Listener, ServerTls

from .clusters import DFP_FILTER, DNS_CACHE
from .common import ADS, TranslationError, socket_address, stat_name, typed
from .observe import access_logs, http_tracing, peer_filter
from .replies import local_reply_config
from .tls import DOWNSTREAM_TLS, mesh_downstream_tls

__all__ = ["HCM", "MODES", "TCP_PROXY", "listener"]

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
CORS = "envoy.extensions.filters.http.cors.v3.Cors"
FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
TLS_INSPECTOR_FILTER = {"name": "envoy.filters.listener.tls_inspector", "typed_config": typed(TLS_INSPECTOR)}
#: How long a PERMISSIVE listener waits for a first byte before taking the connection as plaintext.
PEEK_TIMEOUT = "1s"
TLS_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}
MODES = {"inbound": "INBOUND", "gateway": "INBOUND", "outbound": "OUTBOUND", "http_proxy": "OUTBOUND"}
#: HTTP listeners whose routes may send to passthrough clusters (ALLOW_ANY, ServiceEntry resolution NONE).
PASSTHROUGH_MODES = frozenset({"http_proxy", "gateway"})
#: Connect attempts of a TCP listener (the native engine tries 3 endpoints).
TCP_CONNECT_ATTEMPTS = 3


def _check(lis: Listener, where: str) -> None:
    if lis.mode not in MODES:
        raise TranslationError(f"{where}: mode {lis.mode!r} is not one of {sorted(MODES)}")
    if lis.protocol not in ("http", "tcp"):
        raise TranslationError(f"{where}: protocol {lis.protocol!r} is not one of ['http', 'tcp']")
    if not 0 <= lis.port <= 65535:
        raise TranslationError(f"{where}: port {lis.port} out of range")
    if lis.protocol == "http" and not lis.route_table:
        raise TranslationError(f"{where}: an http listener needs a route_table")
    if lis.protocol == "tcp" and not (lis.cluster or lis.weighted_clusters):
        raise TranslationError(f"{where}: a tcp listener needs a cluster")
    if lis.mode == "http_proxy" and lis.protocol != "http":
        raise TranslationError(f"{where}: an http_proxy listener must use protocol 'http'")
    if lis.tls is not None:
        if lis.tls.mode not in PEER_MODES:
            raise TranslationError(f"{where}: tls: mode {lis.tls.mode!r} is not one of {list(PEER_MODES)}")
        if lis.mode != "inbound" and lis.tls.mode != "DISABLE":
            raise TranslationError(f"{where}: tls: mesh mTLS is accepted on inbound listeners only, not {lis.mode}")
        if lis.server_tls and lis.tls.mode != "DISABLE":
            raise TranslationError(f"{where}: tls: a listener terminates either mesh mTLS or server_tls, not both")
    if lis.server_tls and lis.protocol != "http":
        raise TranslationError(f"{where}: server_tls: TLS is terminated on http listeners only")
    if lis.authn or lis.authz:
        raise TranslationError(f"{where}: authn/authz: Python access-control strategies "
                               f"({', '.join((*lis.authn, *lis.authz))}) cannot run in Envoy yet")
    for ext in lis.extensions:
        raise TranslationError(f"{where}: extension {ext.name!r} (plugin {ext.plugin!r}) is not supported by the envoy engine")


def http_connection_manager(lis: Listener, server_name: str = "knotwork", *, mtls: bool = False) -> dict[str, Any]:
    """The ``HttpConnectionManager`` of an HTTP listener (`mtls`: of its mesh mTLS chain)."""
    upgrades: list[dict[str, Any]] = [{"upgrade_type": "websocket"}]
    if lis.mode == "http_proxy":
        upgrades.append({"upgrade_type": "CONNECT"})
    config: dict[str, Any] = {
        "stat_prefix": stat_name(lis.name),
        "codec_type": "AUTO",
        "rds": {"route_config_name": lis.route_table, "config_source": ADS},
        "http_filters": [
            # CORS and fault injection act only on routes whose typed_per_filter_config asks for them
            {"name": "envoy.filters.http.cors", "typed_config": typed(CORS)},
            {"name": "envoy.filters.http.fault", "typed_config": typed(FAULT)},
            {"name": "envoy.filters.http.router", "typed_config": typed(ROUTER, suppress_envoy_headers=True)},
        ],
        "use_remote_address": True,
        # keep the caller's x-request-id (generate one only when absent), as the native engine
        # does: every hop of a loopback mesh looks "external" to Envoy (the request has an XFF)
        "preserve_external_request_id": True,
        "upgrade_configs": upgrades,
        "http_protocol_options": {"accept_http_10": True, "allow_absolute_url": True},
        "local_reply_config": local_reply_config(lis),
    }
    if lis.mode in PASSTHROUGH_MODES:  # before the router: resolves the host of passthrough clusters only
        config["http_filters"].insert(-1, {"name": "envoy.filters.http.dynamic_forward_proxy",
                                           "typed_config": typed(DFP_FILTER, dns_cache_config=DNS_CACHE)})
    peer = peer_filter(lis)
    if peer is not None:  # first: this proxy's workload, whatever the app sent
        config["http_filters"].insert(0, peer)
    logs = access_logs(lis)
    if logs:
        config["access_log"] = logs
    tracing = http_tracing(lis)
    if tracing is not None:
        config["tracing"] = tracing
    if server_name:
        config["server_name"] = server_name
        config["server_header_transformation"] = "APPEND_IF_ABSENT"
    if mtls:  # the app learns the authenticated peer; nothing the client claims survives
        config["forward_client_cert_details"] = "SANITIZE_SET"
        config["set_current_client_cert_details"] = {"uri": True}
    elif lis.tls is not None:
        config["forward_client_cert_details"] = "SANITIZE"
    return typed(HCM, **config)


def downstream_tls(chain: ServerTls, where: str) -> dict[str, Any]:
    """The ``envoy.transport_sockets.tls`` transport socket of one TLS chain."""
    params: dict[str, Any] = {}
    for field, value in (("tls_minimum_protocol_version", chain.min_version or "1.2"),
                         ("tls_maximum_protocol_version", chain.max_version)):
        if value is None:
            continue
        if value not in TLS_VERSIONS:
            raise TranslationError(f"{where}: server_tls: version {value!r} is not one of {sorted(TLS_VERSIONS)}")
        params[field] = TLS_VERSIONS[value]
    common: dict[str, Any] = {
        "tls_params": params,
        "tls_certificate_sds_secret_configs": [{"name": chain.certificate, "sds_config": ADS}],
    }
    if chain.alpn:
        common["alpn_protocols"] = list(chain.alpn)
    context: dict[str, Any] = {"common_tls_context": common}
    if chain.client_ca:
        common["validation_context_sds_secret_config"] = {"name": chain.client_ca, "sds_config": ADS}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed(DOWNSTREAM_TLS, **context)}


def _network_filter(lis: Listener, server_name: str, mtls: bool = False) -> dict[str, Any]:
    if lis.protocol == "http":
        return {"name": "envoy.filters.network.http_connection_manager",
                "typed_config": http_connection_manager(lis, server_name, mtls=mtls)}
    if lis.weighted_clusters:
        target: dict[str, Any] = {"weighted_clusters": {"clusters": [
            {"name": w.cluster, "weight": w.weight} for w in lis.weighted_clusters]}}
    else:
        target = {"cluster": lis.cluster}
    logs = access_logs(lis)
    if logs:  # a line when the upstream connects (tcp_opened) and one at close (tcp_closed)
        target["access_log"] = logs
        target["access_log_options"] = {"flush_access_log_on_connected": True}
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": typed(
        TCP_PROXY, stat_prefix=stat_name(lis.name), max_connect_attempts=TCP_CONNECT_ATTEMPTS, **target)}


def _mesh_chains(lis: Listener, server_name: str) -> list[dict[str, Any]]:
    """The filter chains of an inbound listener with mesh mTLS (see the module docstring)."""
    assert lis.tls is not None
    mtls = {"filters": [_network_filter(lis, server_name, mtls=True)], "transport_socket": mesh_downstream_tls(lis.tls)}
    if lis.tls.mode == "STRICT":
        return [mtls]
    plain = {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [_network_filter(lis, server_name)]}
    if lis.tls.mode == "DISABLE":
        return [{"filters": plain["filters"]}]
    return [{"filter_chain_match": {"transport_protocol": "tls"}, **mtls}, plain]


def _filter_chains(lis: Listener, server_name: str, where: str) -> list[dict[str, Any]]:
    if lis.tls is not None and not lis.server_tls:
        return _mesh_chains(lis, server_name)
    net = _network_filter(lis, server_name)
    if not lis.server_tls:
        return [{"filters": [net]}]
    chains = []
    for chain in lis.server_tls:
        out: dict[str, Any] = {"filters": [net], "transport_socket": downstream_tls(chain, where)}
        if chain.server_names:
            out["filter_chain_match"] = {"server_names": list(chain.server_names)}
        chains.append(out)
    return chains


def listener(lis: Listener, server_name: str = "knotwork") -> dict[str, Any]:
    """The Envoy listener of `lis` (proto-JSON); raises TranslationError."""
    where = f"listener {lis.name!r}"
    _check(lis, where)
    out: dict[str, Any] = {
        "name": lis.name,
        "address": socket_address(lis.address, lis.port),
        "traffic_direction": MODES[lis.mode],
        "enable_reuse_port": False,
        "filter_chains": _filter_chains(lis, server_name, where),
    }
    if lis.server_tls:
        out["listener_filters"] = [TLS_INSPECTOR_FILTER]
    elif lis.tls is not None and lis.tls.mode == "PERMISSIVE":
        out["listener_filters"] = [TLS_INSPECTOR_FILTER]
        out["listener_filters_timeout"] = PEEK_TIMEOUT
        out["continue_on_listener_filters_timeout"] = True
    return out
