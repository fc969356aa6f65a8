"""A listener's ``observability`` → Envoy's access log, tracing and peer header.

The telemetry sinks (metrics, access log) run in the sidecar agent, not in
Envoy: every HTTP connection manager and TCP proxy of a listener with
observability and a sink chain writes one JSON access-log line per request
(per TCP connection: one when the upstream connects, one at close) to its
stdout, which the agent reads (:mod:`knotwork_envoy.telemetry`).
A line is ``{"_id": DIGEST, "_knotwork": CONSTANT, "line": {…}}`` (Envoy
sorts the keys, so it is in that order): the constant is a JSON string
naming the listener, its mode, its sink chain and its
:class:`~knotwork.proxyconfig.Observability` (cattrs-unstructured), the key
under which the agent builds the chain once; the digest is the first
:data:`DIGEST_LEN` hex digits of its SHA-256, which lets the agent know a
line by its first bytes and parse only ``line``: the request view, the
response info and the connection. Empty values are left out
(``omit_empty_values``).

The upstream workload comes from the chosen endpoint's metadata
``filter_metadata["knotwork"]`` (:func:`peer_metadata`, set on EDS
endpoints) through ``%UPSTREAM_METADATA(knotwork:peer)%``, one string the
agent knows again by a dict lookup; the downstream
principal from ``%DOWNSTREAM_PEER_URI_SAN%``; the caller's workload from
``%REQ(x-knotwork-peer)%``, which outbound, ``http_proxy`` and gateway
connection managers set (the header mutation filter, replacing an app's
value) to the proxy's own workload.

Tracing is Envoy's Zipkin tracer (B3 and W3C ``traceparent`` extracted,
both injected; client and server spans apart), its collector the agent's
trace socket (the bootstrap's :data:`TRACES_CLUSTER`); the OTLP endpoint,
service name, served service (inbound) and span kind (gateways: CLIENT, as
on the native engine; Envoy would call them SERVER spans, a gateway's
listener being INBOUND so that it drains) travel in the collector path's
query string, and the agent re-exports the spans over OTLP/HTTP
(:mod:`knotwork_envoy.traces`).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from typing import Any

from knotwork.proxyconfig import PEER_HEADER, LbEndpoint, Listener, Observability, PeerInfo, wire

from .common import escape_format, header_option, typed

__all__ = [
    "HEADER_MUTATION",
    "SPANS_PATH",
    "TRACES_CLUSTER",
    "access_logs",
    "constants",
    "digest",
    "header_names",
    "http_tracing",
    "peer_filter",
    "peer_metadata",
]

#: Envoy's stdout logger (it writes to a dup of fd 1: opening /dev/stdout fails when that is a socket).
STDOUT_LOG = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
ZIPKIN = "envoy.config.trace.v3.ZipkinConfig"
HEADER_MUTATION = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
#: The bootstrap's static cluster of the agent's trace collector (a unix socket).
TRACES_CLUSTER = "knotwork_traces"  # = bootstrap.TRACES_CLUSTER (the agent does not import the translators)
#: The collector path; the query string names the OTLP endpoint and the service.
SPANS_PATH = "/api/v2/spans"
#: Listener modes whose requests carry this proxy's workload in :data:`PEER_HEADER`.
PEER_HEADER_MODES = frozenset({"outbound", "http_proxy", "gateway"})
#: Request headers every HTTP line carries (the sinks' ``request.header()``).
BASE_HEADERS = ("user-agent", "x-request-id", "x-forwarded-for", "content-type", PEER_HEADER)
#: Hex digits of the constant's SHA-256 that start a line (= the agent's ``telemetry.DIGEST_LEN``).
DIGEST_LEN = 16
_HEADER_EXPR = re.compile(r"""request\.headers\[\s*['"]([^'"]+)['"]\s*\]""")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")

# ── the JSON line ────────────────────────────────────────────────────────
_CONNECTION = {
    "start": "%START_TIME(%s.%6f)%",
    "remote": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "local": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "san": "%DOWNSTREAM_PEER_URI_SAN%",
    "tls": "%DOWNSTREAM_TLS_VERSION%",
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "peer": "%UPSTREAM_METADATA(knotwork:peer)%",
    "flags": "%RESPONSE_FLAGS%",
    "rx": "%BYTES_RECEIVED%",
    "tx": "%BYTES_SENT%",
    "ms": "%DURATION%",
}
_HTTP = {
    **_CONNECTION,
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    "trace": "%TRACE_ID%",
    "grpc": "%TRAILER(grpc-status)%",
    "grpc_h": "%RESP(grpc-status)%",
}
_TCP = {**_CONNECTION, "type": "%ACCESS_LOG_TYPE%"}


def header_names(obs: Observability) -> tuple[str, ...]:
    """The request headers a line carries: the base set and those the tag overrides read."""
    names = list(BASE_HEADERS)
    for override in obs.tag_overrides:
        for name in _HEADER_EXPR.findall(override.value):
            name = name.lower()
            if _TOKEN.match(name) and name not in names:
                names.append(name)
    return tuple(names)


def constants(lis: Listener) -> str:
    """The ``knotwork`` field: listener, mode, protocol, sink chain and observability, as one JSON string."""
    assert lis.observability is not None
    data = {"listener": lis.name, "mode": lis.mode, "protocol": lis.protocol, "sinks": list(lis.telemetry),
            "observability": wire.unstructure(lis.observability, Observability)}
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def digest(const: str) -> str:
    """The digest that starts a line of the constant `const` (hex, :data:`DIGEST_LEN` digits)."""
    return hashlib.sha256(const.encode()).hexdigest()[:DIGEST_LEN]


def access_logs(lis: Listener) -> list[dict[str, Any]]:
    """The ``access_log`` of the listener's connection manager or TCP proxy ([] when nothing listens)."""
    obs = lis.observability
    if obs is None or not lis.telemetry:
        return []
    if lis.protocol == "http":
        fields: dict[str, Any] = {**_HTTP, "headers": {h: f"%REQ({h})%" for h in header_names(obs)}}
    else:
        fields = dict(_TCP)
    const = constants(lis)
    line = {"_id": digest(const), "_knotwork": escape_format(const), "line": fields}
    log_format = {"json_format": line, "omit_empty_values": True}
    return [{"name": "envoy.access_loggers.stdout", "typed_config": typed(STDOUT_LOG, log_format=log_format)}]


def collector_path(lis: Listener) -> str:
    """Where the listener's spans go: the agent's collector path, the OTLP endpoint and span details in the query."""
    obs = lis.observability
    assert obs is not None and obs.tracing is not None
    params = {"endpoint": obs.tracing.endpoint, "service": obs.tracing.service}
    if obs.service:  # inbound: spans are named after the served service, as Istio's decorator does
        params["host"] = obs.service
    if lis.mode == "gateway":  # Envoy makes SERVER spans on INBOUND listeners; a gateway's are CLIENT spans
        params["kind"] = "CLIENT"
    query = urllib.parse.urlencode(params)
    return f"{SPANS_PATH}?{query}"


def http_tracing(lis: Listener) -> dict[str, Any] | None:
    """The connection manager's ``tracing`` (None: not traced)."""
    obs = lis.observability
    if obs is None or obs.tracing is None:
        return None
    tracing = obs.tracing
    zipkin = typed(
        ZIPKIN, collector_cluster=TRACES_CLUSTER, collector_endpoint=collector_path(lis),
        collector_endpoint_version="HTTP_JSON", trace_id_128bit=True, shared_span_context=False,
        trace_context_option="USE_B3_WITH_W3C_PROPAGATION")
    out: dict[str, Any] = {
        "random_sampling": {"value": float(tracing.sampling)},
        "max_path_tag_length": tracing.max_path_tag_length,
        "provider": {"name": "envoy.tracers.zipkin", "typed_config": zipkin},
    }
    tags = (("istio.canonical_service", obs.workload.app), ("istio.namespace", obs.workload.namespace),
            *tracing.custom_tags)
    out["custom_tags"] = [{"tag": name, "literal": {"value": value}} for name, value in tags]
    return out


def peer_filter(lis: Listener) -> dict[str, Any] | None:
    """The header mutation filter that sets :data:`PEER_HEADER` on a client-side listener (None: none)."""
    obs = lis.observability
    if obs is None or lis.mode not in PEER_HEADER_MODES:
        return None
    mutation = {"append": header_option(PEER_HEADER, escape_format(obs.workload.header()))}
    return {"name": "envoy.filters.http.header_mutation",
            "typed_config": typed(HEADER_MUTATION, mutations={"request_mutations": [mutation]})}


def peer_metadata(ep: LbEndpoint) -> dict[str, str] | None:
    """An endpoint's ``filter_metadata["knotwork"]``: its :class:`PeerInfo` fields, and ``peer``, the five
    as one JSON array string, which the access log carries (None: all unknown)."""
    peer = ep.peer()
    if peer == PeerInfo():
        return None
    fields = [peer.workload, peer.namespace, peer.app, peer.version, peer.principal]
    return {"workload": peer.workload, "namespace": peer.namespace, "app": peer.app, "version": peer.version,
            "principal": peer.principal, "peer": json.dumps(fields, separators=(",", ":"))}
