"""Translation of compiled resources to Envoy config: golden expectations
(Envoy's proto-JSON, snake_case) and validation against Envoy's API types."""

from __future__ import annotations

import pytest
from knotwork.proxyconfig import (
    CorsPolicy,
    FaultPolicy,
    MirrorPolicy,
    StringMatch,
    Cluster,
    DirectResponse,
    EndpointSet,
    Extension,
    HeaderMatch,
    LbEndpoint,
    Listener,
    PeerTls,
    Redirect,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    RouteTable,
    Secret,
    UpstreamTls,
    VirtualHost,
    WeightedCluster,
)

from knotwork_envoy.bootstrap import bootstrap
from knotwork_envoy.translate import TYPE_URLS, TranslateOptions, TranslationError, pack, to_message, translate
from knotwork_envoy.translate.common import duration, escape_format, stat_name

ADS = {"ads": {}, "resource_api_version": "V3"}
HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
PREVIOUS_HOSTS = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]
DEFAULT_RETRY = {"retry_on": "connect-failure,refused-stream", "num_retries": 2,
                 "retry_host_predicate": PREVIOUS_HOSTS, "host_selection_retry_max_attempts": 3}


def forward(cluster: str = "c", **kw) -> RouteAction:
    return RouteAction(clusters=(WeightedCluster(cluster),), **kw)


def one_table(*routes: Route, domains: tuple[str, ...] = ("*",)) -> RouteTable:
    return RouteTable(name="rt", virtual_hosts=(VirtualHost(name="vh", domains=domains, routes=routes),))


def envoy_routes(table: RouteTable, tunnels: bool = True) -> list[dict]:
    return translate("routes", table, tunnels=tunnels)["virtual_hosts"][0]["routes"]


# ── helpers ──────────────────────────────────────────────────────────────────


def test_small_helpers() -> None:
    assert [duration(1), duration(0.25), duration(1.5e-3), duration(0)] == ["1s", "0.25s", "0.0015s", "0s"]
    assert stat_name("outbound|tcp|reviews.default.svc.cluster.local|9080") == "outbound_tcp_reviews.default.svc.cluster.local_9080"
    assert escape_format("100%") == "100%%"


# ── listeners ────────────────────────────────────────────────────────────────


def test_inbound_http_listener() -> None:
    lis = Listener(name="inbound|9080", address="127.0.0.1", port=15006, mode="inbound", route_table="inbound|9080")
    out = translate("listeners", lis)
    hcm = out["filter_chains"][0]["filters"][0]["typed_config"]
    assert {k: v for k, v in out.items() if k != "filter_chains"} == {
        "name": "inbound|9080",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "enable_reuse_port": False,
    }
    assert out["filter_chains"][0]["filters"][0]["name"] == "envoy.filters.network.http_connection_manager"
    assert hcm["@type"] == HCM_URL
    assert hcm["stat_prefix"] == "inbound_9080"
    assert hcm["rds"] == {"route_config_name": "inbound|9080", "config_source": ADS}
    assert hcm["http_filters"] == [
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.fault",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "suppress_envoy_headers": True}},
    ]
    assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert (hcm["server_name"], hcm["server_header_transformation"]) == ("knotwork", "APPEND_IF_ABSENT")
    assert hcm["use_remote_address"] is True
    assert hcm["preserve_external_request_id"] is True  # x-request-id kept across hops, as native
    to_message("listeners", out)


def test_local_replies_carry_the_native_flags_and_bodies() -> None:
    lis = Listener(name="in", address="127.0.0.1", port=1, mode="inbound", route_table="rt")
    hcm = translate("listeners", lis)["filter_chains"][0]["filters"][0]["typed_config"]
    connect, *mappers = hcm["local_reply_config"]["mappers"]
    assert connect == {
        "filter": {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}}}},
        "status_code": 405,
        "body_format_override": {"text_format_source": {
            "inline_string": "CONNECT is served only by http_proxy listeners, not by listener in\n"}},
    }
    summary = [(m["filter"], m["headers_to_add"][0]["header"]["value"], m.get("status_code")) for m in mappers]
    flag = lambda *codes: {"response_flag_filter": {"flags": list(codes)}}  # noqa: E731
    assert summary == [
        ({"and_filter": {"filters": [flag("URX"), flag("UF")]}}, "URX,UF", None),
        ({"and_filter": {"filters": [flag("URX"), flag("UC")]}}, "URX,UC", None),
        ({"and_filter": {"filters": [flag("URX"), flag("UT")]}}, "URX,UT", None),
        (flag("NR"), "NR", None),
        (flag("UH"), "UH", None),
        (flag("UF"), "UF", None),
        (flag("UT"), "UT", None),
        (flag("UC"), "UC", None),
        (flag("FI"), "FI", None),
        ({"response_flag_filter": {}}, "%RESPONSE_FLAGS%", None),
    ]
    assert all(m["headers_to_add"][0]["header"]["key"] == "x-knotwork-response-flags" for m in mappers)
    body = mappers[3]["body_format_override"]["text_format_source"]["inline_string"]
    assert body == "no route for %REQ(:AUTHORITY)%%REQ(:PATH)% (listener in, route table rt)\n"


def test_http_proxy_listener_takes_connect_and_answers_502_without_route() -> None:
    lis = Listener(name="http_proxy", address="127.0.0.1", port=15001, mode="http_proxy", route_table="outbound")
    out = translate("listeners", lis)
    hcm = out["filter_chains"][0]["filters"][0]["typed_config"]
    assert out["traffic_direction"] == "OUTBOUND"
    assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}, {"upgrade_type": "CONNECT"}]
    assert hcm["http_protocol_options"] == {"accept_http_10": True, "allow_absolute_url": True}
    nr = hcm["local_reply_config"]["mappers"][3]
    assert nr["status_code"] == 502
    assert nr["body_format_override"]["text_format_source"]["inline_string"] == (
        "no route to host %REQ(:AUTHORITY)% (listener http_proxy, route table outbound)\n")
    to_message("listeners", out)


def test_tcp_listener_is_a_tcp_proxy() -> None:
    lis = Listener(name="outbound|tcp|db|5432", address="127.0.0.1", port=15010, mode="outbound", protocol="tcp",
                   cluster="outbound|5432||db")
    out = translate("listeners", lis)
    assert out["filter_chains"] == [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "outbound_tcp_db_5432", "cluster": "outbound|5432||db", "max_connect_attempts": 3}}]}]
    to_message("listeners", out)


def test_weighted_tcp_listener_splits_in_the_tcp_proxy() -> None:
    lis = Listener(name="outbound|tcp|db|5432", address="127.0.0.1", port=15010, mode="outbound", protocol="tcp",
                   weighted_clusters=(WeightedCluster("outbound|5432|v1|db", 80), WeightedCluster("outbound|5432|v2|db", 20)))
    proxy = translate("listeners", lis)["filter_chains"][0]["filters"][0]["typed_config"]
    assert "cluster" not in proxy
    assert proxy["weighted_clusters"] == {"clusters": [
        {"name": "outbound|5432|v1|db", "weight": 80}, {"name": "outbound|5432|v2|db", "weight": 20}]}
    to_message("listeners", translate("listeners", lis))


def test_server_name_can_be_left_to_envoy() -> None:
    lis = Listener(name="in", address="127.0.0.1", port=1, mode="gateway", route_table="rt")
    hcm = translate("listeners", lis, TranslateOptions(server_name=""))["filter_chains"][0]["filters"][0]["typed_config"]
    assert "server_name" not in hcm and "server_header_transformation" not in hcm


@pytest.mark.parametrize(("lis", "message"), [
    (Listener(name="l", address="a", port=1, mode="sideways", route_table="r"), "mode 'sideways'"),
    (Listener(name="l", address="a", port=1, mode="inbound", protocol="udp", route_table="r"), "protocol 'udp'"),
    (Listener(name="l", address="a", port=1, mode="inbound"), "needs a route_table"),
    (Listener(name="l", address="a", port=1, mode="outbound", protocol="tcp"), "needs a cluster"),
    (Listener(name="l", address="a", port=1, mode="http_proxy", protocol="tcp", cluster="c"), "must use protocol 'http'"),
    (Listener(name="l", address="a", port=1, mode="inbound", route_table="r", tls=PeerTls("LAX")), "tls: mode 'LAX'"),
    (Listener(name="l", address="a", port=1, mode="outbound", route_table="r", tls=PeerTls("STRICT")),
     "inbound listeners only"),
    (Listener(name="l", address="a", port=1, mode="inbound", route_table="r", authz=("tenant",)), "tenant"),
    (Listener(name="l", address="a", port=1, mode="inbound", route_table="r",
              extensions=(Extension("wasm", "acme"),)), "extension 'wasm'"),
])
def test_listeners_envoy_cannot_serve_are_refused_with_the_field(lis: Listener, message: str) -> None:
    with pytest.raises(TranslationError, match="listener 'l'") as info:
        translate("listeners", lis)
    assert message in str(info.value)


# ── routes ───────────────────────────────────────────────────────────────────


def test_default_route_with_connect_tunnel_and_domain_without_port() -> None:
    table = RouteTable(name="outbound", virtual_hosts=(
        VirtualHost(name="reviews:9080", domains=("reviews", "reviews:9080"), routes=(Route(name="default", action=forward()),)),
    ))
    assert translate("routes", table, tunnels=True) == {
        "name": "outbound",
        "validate_clusters": False,
        "max_direct_response_body_size_bytes": 1 << 20,
        "virtual_hosts": [{"name": "reviews:9080", "domains": ["reviews", "reviews:9080", "reviews:*"], "routes": [
            {"name": "default/connect", "match": {"connect_matcher": {}}, "route": {
                "cluster": "c", "timeout": "0s", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}},
            {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s", "retry_policy": DEFAULT_RETRY}},
        ]}],
    }
    to_message("routes", translate("routes", table, tunnels=True))
    # behind any other listener a CONNECT route would open a tunnel all the same: none there
    assert [r["name"] for r in translate("routes", table)["virtual_hosts"][0]["routes"]] == ["default"]


def test_domain_without_port_is_not_doubled_when_claimed() -> None:
    table = RouteTable(name="rt", virtual_hosts=(
        VirtualHost(name="a", domains=("a",), routes=()),
        VirtualHost(name="b", domains=("a:*", "*.b", "*"), routes=()),
    ))
    vhosts = translate("routes", table)["virtual_hosts"]
    assert [v["domains"] for v in vhosts] == [["a"], ["a:*", "*.b", "*"]]


def test_matches() -> None:
    routes = envoy_routes(one_table(
        Route(name="exact", match=RouteMatch(prefix=None, path="/p", headers=(
            HeaderMatch(":method", exact="GET"), HeaderMatch("x-pre", prefix="a"), HeaderMatch("X-Re", regex="v[0-9]+"),
            HeaderMatch("x-any", present=True), HeaderMatch("x-absent", present=False), HeaderMatch("x-not", exact="n", invert=True),
            HeaderMatch("x-empty-prefix", prefix=""),
        )), action=forward()),
        Route(name="regex", match=RouteMatch(prefix=None, regex="/r/[a-z]+", query=(
            HeaderMatch("q", exact="1"), HeaderMatch("flag", present=True))), action=forward()),
        Route(name="port", match=RouteMatch(prefix="/x", port=9080), action=forward()),
    ))
    assert [r["match"] for r in routes[:3]] == [
        {"path": "/p", "headers": [
            {"name": ":method", "string_match": {"exact": "GET"}},
            {"name": "x-pre", "string_match": {"prefix": "a"}},
            {"name": "x-re", "string_match": {"safe_regex": {"regex": "v[0-9]+"}}},
            {"name": "x-any", "present_match": True},
            {"name": "x-absent", "present_match": False},
            {"name": "x-not", "string_match": {"exact": "n"}, "invert_match": True},
            {"name": "x-empty-prefix", "present_match": True},
        ]},
        {"safe_regex": {"regex": "/r/[a-z]+"}, "query_parameters": [
            {"name": "q", "string_match": {"exact": "1"}}, {"name": "flag", "present_match": True}]},
        {"prefix": "/x", "headers": [{"name": ":authority", "string_match": {"safe_regex": {"regex": ".*:9080"}}}]},
    ]
    to_message("routes", translate("routes", one_table(*[Route(name=r["name"], action=forward()) for r in routes])))


def test_routes_with_source_labels_are_left_out_and_no_catch_all_means_no_connect() -> None:
    routes = envoy_routes(one_table(
        Route(name="from-v1", match=RouteMatch(source_labels={"version": "v1"}), action=forward()),
        Route(name="api", match=RouteMatch(prefix="/api"), action=forward()),
    ))
    assert [r["name"] for r in routes] == ["api"]


def test_action_weights_timeouts_retries_rewrites_and_headers() -> None:
    route = Route(
        name="r", request_headers_set={"X-Tenant": "a%b"},
        action=RouteAction(
            clusters=(WeightedCluster("v1", 90), WeightedCluster("v2", 10), WeightedCluster("v3", 0)), timeout=2.5,
            retry=RetryPolicy(attempts=3, per_try_timeout=0.5, retry_on=("5xx", "retriable-status-codes"), retriable_status_codes=(409,)),
            prefix_rewrite="/v2/", host_rewrite="backend",
        ),
    )
    (connect, out) = envoy_routes(one_table(route))
    assert out == {
        "name": "r",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {"clusters": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]},
            "timeout": "2.5s",
            "retry_policy": {"retry_on": "5xx,retriable-status-codes", "num_retries": 3, "retry_host_predicate": PREVIOUS_HOSTS,
                             "host_selection_retry_max_attempts": 3, "per_try_timeout": "0.5s", "retriable_status_codes": [409]},
            "prefix_rewrite": "/v2/",
            "host_rewrite_literal": "backend",
        },
        "metadata": {"filter_metadata": {"knotwork": {"timeout": "2.5s"}}},
        "request_headers_to_add": [{"header": {"key": "x-tenant", "value": "a%%b"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }
    assert connect["route"]["weighted_clusters"] == out["route"]["weighted_clusters"]
    to_message("routes", translate("routes", one_table(route)))


def test_fault_mirror_header_operations_and_cors() -> None:
    route = Route(
        name="r", action=forward(),
        request_headers_set={"x-s": "1"}, request_headers_add={"x-a": "2"}, request_headers_remove=("X-Gone",),
        response_headers_set={"x-rs": "3"}, response_headers_add={"x-ra": "4%"}, response_headers_remove=("server",),
        fault=FaultPolicy(delay=0.25, delay_percent=12.5, abort_status=503, abort_percent=0.1),
        mirror=(MirrorPolicy("shadow", 50.0),),
        cors=CorsPolicy(allow_origins=(StringMatch(exact="https://a"), StringMatch(prefix="https://p"), StringMatch(regex=".*x")),
                        allow_methods=("GET", "POST"), allow_headers=("x-h",), expose_headers=("x-e", "x-f"), max_age=60,
                        allow_credentials=True),
    )
    (_, out) = envoy_routes(one_table(route))
    assert out["route"]["request_mirror_policies"] == [
        {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 500000, "denominator": "MILLION"}}}]
    assert out["request_headers_to_add"] == [
        {"header": {"key": "x-s", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-a", "value": "2"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert out["request_headers_to_remove"] == ["x-gone"]
    assert out["response_headers_to_add"] == [
        {"header": {"key": "x-rs", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-ra", "value": "4%%"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert out["response_headers_to_remove"] == ["server"]
    assert out["typed_per_filter_config"] == {
        "envoy.filters.http.fault": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": "0.25s", "percentage": {"numerator": 125000, "denominator": "MILLION"}},
            "abort": {"http_status": 503, "percentage": {"numerator": 1000, "denominator": "MILLION"}},
        },
        "envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": "https://a"}, {"prefix": "https://p"}, {"safe_regex": {"regex": ".*x"}}],
            "allow_methods": "GET,POST", "allow_headers": "x-h", "expose_headers": "x-e,x-f", "max_age": "60",
            "allow_credentials": True,
        },
    }
    pack("routes", one_table(route))  # Envoy's API takes it
    plain = envoy_routes(one_table(Route(name="r", action=forward())))[1]
    assert not {"typed_per_filter_config", "request_headers_to_remove", "response_headers_to_add"} & set(plain)
    assert "request_mirror_policies" not in plain["route"]
    with pytest.raises(TranslationError, match="percentage 120"):
        translate("routes", one_table(Route(name="r", action=forward(), mirror=(MirrorPolicy("s", 120),))))


def test_no_retries_means_no_policy() -> None:
    (_, out) = envoy_routes(one_table(Route(name="r", action=forward(retry=RetryPolicy(attempts=0)))))
    assert "retry_policy" not in out["route"]


def test_direct_responses_and_redirects() -> None:
    routes = envoy_routes(one_table(
        Route(name="d", match=RouteMatch(prefix="/d"), direct=DirectResponse(status=418, body="teapot")),
        Route(name="e", match=RouteMatch(prefix="/e"), direct=DirectResponse(status=204)),
        Route(name="r", match=RouteMatch(prefix="/r"), redirect=Redirect(path="/new", host="example.com", status=302)),
    ))
    assert [{k: v for k, v in r.items() if k not in ("name", "match")} for r in routes] == [
        {"direct_response": {"status": 418, "body": {"inline_string": "teapot"}}},
        {"direct_response": {"status": 204}},
        {"redirect": {"response_code": "FOUND", "path_redirect": "/new", "host_redirect": "example.com"}},
    ]
    to_message("routes", translate("routes", one_table(*[Route(name="d", direct=DirectResponse(200, "x"))])))


@pytest.mark.parametrize(("route", "message"), [
    (Route(name="x"), "exactly one of"),
    (Route(name="x", action=RouteAction(clusters=(WeightedCluster("c", 0),))), "positive weight"),
    (Route(name="x", action=RouteAction(clusters=(WeightedCluster("c", -1),))), "negative"),
    (Route(name="x", action=forward(retry=RetryPolicy(1, None, ("sometimes",)))), "unknown retry_on"),
    (Route(name="x", action=forward(timeout=-1)), "timeout"),
    (Route(name="x", direct=DirectResponse(status=700)), "out of range"),
    (Route(name="x", redirect=Redirect(status=399)), "redirect status"),
    (Route(name="x", match=RouteMatch(query=(HeaderMatch("q", exact="1", invert=True),)), action=forward()), "absence"),
    (Route(name="x", action=forward(), extensions=(Extension("fault", "chaos"),)), "extension 'fault'"),
])
def test_routes_envoy_cannot_serve_are_refused(route: Route, message: str) -> None:
    with pytest.raises(TranslationError, match="route table 'rt' virtual host 'vh' route 'x'") as info:
        translate("routes", one_table(route))
    assert message in str(info.value)


def test_only_the_host_router_compiles() -> None:
    with pytest.raises(TranslationError, match="router 'custom'"):
        translate("routes", RouteTable(name="rt", router="custom"))


# ── clusters, endpoints, secrets ─────────────────────────────────────────────


def test_cluster() -> None:
    assert translate("clusters", Cluster(name="outbound|9080||reviews", connect_timeout=0.5)) == {
        "name": "outbound|9080||reviews",
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS, "service_name": "outbound|9080||reviews"},
        "connect_timeout": "0.5s",
        "lb_policy": "ROUND_ROBIN",
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                             "max_requests": 4294967295, "max_retries": 4294967295}]},
    }


@pytest.mark.parametrize(("lb", "policy"), [("round_robin", "ROUND_ROBIN"), ("least_request", "LEAST_REQUEST"), ("random", "RANDOM")])
def test_cluster_balancers(lb: str, policy: str) -> None:
    out = translate("clusters", Cluster(name="c", lb=lb))
    assert out["lb_policy"] == policy
    assert ("least_request_lb_config" in out) is (lb == "least_request")
    if lb == "least_request":
        assert out["least_request_lb_config"] == {"choice_count": 2}
    to_message("clusters", out)


def test_http2_cluster() -> None:
    out = translate("clusters", Cluster(name="c", protocol="grpc"))
    options = out["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    to_message("clusters", out)


@pytest.mark.parametrize(("cluster", "message"), [
    (Cluster(name="c", lb="maglev-ish"), "balancer 'maglev-ish' has no Envoy equivalent"),
    (Cluster(name="c", connect_timeout=0), "connect_timeout"),
    (Cluster(name="c", tls=UpstreamTls("PLAIN")), "tls: mode 'PLAIN'"),
    (Cluster(name="c", tls=UpstreamTls("MUTUAL")), "needs a client certificate"),
    (Cluster(name="c", tls=UpstreamTls("SIMPLE", certificate="cert")), "MUTUAL only"),
    (Cluster(name="c", resolution="passthrough", tls=UpstreamTls("ISTIO_MUTUAL")), "a passthrough cluster has none"),
    (Cluster(name="c", extensions=(Extension("x", "p"),)), "extension 'x'"),
])
def test_clusters_envoy_cannot_serve_are_refused(cluster: Cluster, message: str) -> None:
    with pytest.raises(TranslationError, match="cluster 'c'") as info:
        translate("clusters", cluster)
    assert message in str(info.value)


def test_endpoints() -> None:
    eps = EndpointSet(name="c", endpoints=(
        LbEndpoint("127.0.0.1", 9001, instance="reviews-v1-1"),
        LbEndpoint("127.0.0.1", 9002, weight=3, healthy=False),
        LbEndpoint("127.0.0.1", 9003, weight=0),
    ))
    assert translate("endpoints", eps) == {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}, "hostname": "reviews-v1-1"},
         "health_status": "HEALTHY", "load_balancing_weight": 1},
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9002}}},
         "health_status": "UNHEALTHY", "load_balancing_weight": 3},
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9003}}},
         "health_status": "HEALTHY", "load_balancing_weight": 1},
    ]}]}
    assert translate("endpoints", EndpointSet(name="empty")) == {"cluster_name": "empty"}
    to_message("endpoints", translate("endpoints", eps))


def test_secrets() -> None:
    cert = translate("secrets", Secret(name="default", certificate_chain="CHAIN", private_key="KEY"))
    bundle = translate("secrets", Secret(name="ROOTCA", trust_bundle="ROOTS"))
    assert cert == {"name": "default", "tls_certificate": {"certificate_chain": {"inline_string": "CHAIN"},
                                                            "private_key": {"inline_string": "KEY"}}}
    assert bundle == {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": "ROOTS"}}}
    to_message("secrets", cert)
    with pytest.raises(TranslationError, match="secret 'x'"):
        translate("secrets", Secret(name="x"))


# ── packing and the bootstrap ────────────────────────────────────────────────


def test_pack_gives_the_type_url_and_round_trips() -> None:
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster as EnvoyCluster

    packed = pack("clusters", Cluster(name="c"))
    assert packed.type_url == TYPE_URLS["clusters"]
    assert EnvoyCluster.parse(packed.value).name == "c"


def test_api_validation_errors_name_the_resource() -> None:
    with pytest.raises(TranslationError, match="clusters 'c': not valid Envoy config"):
        to_message("clusters", {"name": "c", "no_such_field": 1})


def test_bootstrap() -> None:
    out = bootstrap("sidecar~reviews-v1-1", "127.0.0.1:15010")
    assert out["node"]["id"] == "sidecar~reviews-v1-1"
    ads = out["dynamic_resources"]["ads_config"]
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "knotwork_xds"
    assert out["dynamic_resources"]["cds_config"]["initial_fetch_timeout"] == "0s"
    assert out["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 0}
    (xds,) = out["static_resources"]["clusters"]
    assert xds["type"] == "STATIC"
    assert xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 15010}
    assert bootstrap("n", "control.knotwork-system:15010")["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
    import envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3  # noqa: F401
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    Bootstrap.from_dict(out)


@pytest.mark.parametrize("endpoints", [
    (),
    (LbEndpoint("127.0.0.1", 0),),
    (LbEndpoint("10.0.0.1", 65535, weight=300, healthy=False, instance="reviews-v2-1"), LbEndpoint("::1", 9080)),
])
def test_fast_endpoint_encoding_is_byte_for_byte_the_typed_message(endpoints) -> None:
    from knotwork_envoy.translate.fastwire import encode_cluster_load_assignment

    config = translate("endpoints", EndpointSet(name="outbound|9080||reviews.default.svc.cluster.local", endpoints=endpoints))
    assert encode_cluster_load_assignment(config) == bytes(to_message("endpoints", config))
    assert pack("endpoints", EndpointSet(name="outbound|9080||reviews.default.svc.cluster.local", endpoints=endpoints)).value == \
        bytes(to_message("endpoints", config))


def test_fast_endpoint_encoding_refuses_fields_it_does_not_know() -> None:
    from knotwork_envoy.translate.fastwire import encode_cluster_load_assignment

    with pytest.raises(KeyError, match="policy"):
        encode_cluster_load_assignment({"cluster_name": "c", "policy": {}})
