"""VirtualService, DestinationRule subsets and Gateway, compiled then routed."""

from __future__ import annotations

import base64

import pytest
from knotwork.proxyconfig import (
    CorsPolicy, DirectResponse, FaultPolicy, HeaderMatch, MirrorPolicy, Redirect, RetryPolicy, StringMatch, WeightedCluster,
)
from routing_helpers import (
    BOOKINFO_ENDPOINTS, BOOKINFO_GATEWAY, BOOKINFO_SERVICES, BOOKINFO_VS, REVIEWS_DR, REVIEWS_JASON_VS, Req,
    compile_snapshot, endpoint, fqdn, gateway_node, http_service, resource, router, sidecar, target,
)

from knotwork_routing import ResourceError

REVIEWS, PRODUCTPAGE = fqdn("reviews"), fqdn("productpage")


def vs(name: str, http: list, hosts=("reviews",), ns: str = "default", **spec):
    return resource("VirtualService", name, {"hosts": list(hosts), "http": http, **spec}, ns)


def to(host: str, **dest) -> dict:
    return {"destination": {"host": host, **dest}}


def mesh_route(resources, authority="reviews:9080", services=BOOKINFO_SERVICES, **req):
    snap = compile_snapshot(sidecar("productpage"), services, BOOKINFO_ENDPOINTS, resources)
    return snap, router(snap, "outbound").match(Req(authority, **req))


def only_route(http: dict, **kw):
    snap, _ = mesh_route([vs("r", [http])], **kw)
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == f"{REVIEWS}:9080")
    (route,) = vhost.routes
    return route


# ── Bookinfo ────────────────────────────────────────────────────────────────


def test_bookinfo_ingress_gateway():
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS, [BOOKINFO_GATEWAY, BOOKINFO_VS])
    listener = snap.resources["listeners"]["gateway|80"]
    assert (listener.port, listener.mode, listener.protocol, listener.route_table) == (8080, "gateway", "http", "gateway|80")
    (vhost,) = snap.resources["routes"]["gateway|80"].virtual_hosts
    assert vhost.domains == ("*",)
    assert len(vhost.routes) == 5
    r = router(snap, "gateway|80")
    for path in ("/productpage", "/productpage?u=normal", "/static/img/x.png", "/login", "/logout", "/api/v1/products/0"):
        assert target(r.match(Req("localhost:8080", path))) == f"outbound|9080||{PRODUCTPAGE}", path
    for path in ("/", "/productpage/x", "/reviews/0"):
        assert r.match(Req("localhost:8080", path)) is None, path


def test_bookinfo_jason_goes_to_reviews_v2_others_v1():
    resources = [REVIEWS_DR, REVIEWS_JASON_VS]
    snap = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS, resources)
    r = router(snap, "outbound")
    assert target(r.match(Req("reviews:9080", "/reviews/0", headers={"end-user": "jason"}))) == f"outbound|9080|v2|{REVIEWS}"
    assert target(r.match(Req("reviews:9080", "/reviews/0"))) == f"outbound|9080|v1|{REVIEWS}"
    assert target(r.match(Req("reviews", "/reviews/0", headers={"end-user": "bob"}))) == f"outbound|9080|v1|{REVIEWS}"
    v2 = snap.resources["endpoints"][f"outbound|9080|v2|{REVIEWS}"].endpoints
    assert [(ep.port, ep.labels["version"]) for ep in v2] == [(20004, "v2")]
    assert snap.resources["clusters"][f"outbound|9080|v2|{REVIEWS}"].service == REVIEWS
    # other services keep their default route
    assert target(r.match(Req("ratings:9080", "/ratings/0"))) == f"outbound|9080||{fqdn('ratings')}"


def test_mesh_virtual_service_does_not_apply_to_gateways_and_vice_versa():
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS,
                            [BOOKINFO_GATEWAY, BOOKINFO_VS, REVIEWS_DR, REVIEWS_JASON_VS])
    assert f"outbound|9080|v2|{REVIEWS}" not in snap.resources["clusters"]  # only referenced subsets
    (vhost,) = snap.resources["routes"]["gateway|80"].virtual_hosts
    assert vhost.domains == ("*",)
    side = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS, [BOOKINFO_GATEWAY, BOOKINFO_VS])
    assert all(v.domains != ("*",) for v in side.resources["routes"]["outbound"].virtual_hosts)


# ── VirtualService for the mesh ─────────────────────────────────────────────


def test_virtual_service_replaces_default_route_no_match_is_404():
    http = {"match": [{"uri": {"prefix": "/v2"}}], "route": [to("reviews")]}
    _, found = mesh_route([vs("r", [http])], path="/v2/x")
    assert target(found) == f"outbound|9080||{REVIEWS}"
    _, missing = mesh_route([vs("r", [http])], path="/other")
    assert missing is None


def test_several_match_entries_are_ored_one_route_each():
    http = {"name": "split", "match": [{"uri": {"prefix": "/a"}, "name": "first"}, {"uri": {"prefix": "/b"}}],
            "route": [to("reviews")]}
    snap, _ = mesh_route([vs("r", [http])])
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == f"{REVIEWS}:9080")
    assert [r.name for r in vhost.routes] == ["split/first", "split/1"]
    assert [r.match.prefix for r in vhost.routes] == ["/a", "/b"]


def test_route_names_default_to_resource_and_index():
    route = only_route({"route": [to("reviews")]})
    assert route.name == "default/r/0"


def test_match_conditions_translated():
    route = only_route({"match": [{
        "uri": {"regex": "/r/[0-9]+"}, "method": {"exact": "GET"}, "authority": {"prefix": "reviews"},
        "headers": {"End-User": {"prefix": "ja"}, "x-present": {}}, "withoutHeaders": {"x-debug": {"exact": "1"}},
        "queryParams": {"page": {"regex": "[0-9]+"}}, "sourceLabels": {"app": "productpage"},
    }], "route": [to("reviews")]})
    m = route.match
    assert (m.prefix, m.path, m.regex) == (None, None, "/r/[0-9]+")
    assert m.headers == (
        HeaderMatch(":method", exact="GET"), HeaderMatch(":authority", prefix="reviews"),
        HeaderMatch("end-user", prefix="ja"), HeaderMatch("x-present", present=True),
        HeaderMatch("x-debug", exact="1", invert=True),
    )
    assert m.query == (HeaderMatch("page", regex="[0-9]+"),)
    assert m.source_labels == {"app": "productpage"}
    assert m.port is None


def test_uri_exact_and_ignore_case():
    assert only_route({"match": [{"uri": {"exact": "/a"}}], "route": [to("reviews")]}).match.path == "/a"
    m = only_route({"match": [{"uri": {"prefix": "/Api"}, "ignoreUriCase": True}], "route": [to("reviews")]}).match
    assert (m.prefix, m.regex) == (None, "(?i)/Api.*")
    _, found = mesh_route([vs("r", [{"match": [{"uri": {"prefix": "/Api"}, "ignoreUriCase": True}],
                                     "route": [to("reviews")]}])], path="/aPI/x?q=1")
    assert found is not None


def test_match_port_selects_virtual_host_at_compile_time():
    svc = http_service("reviews", "default", 9080, 9081)
    http = [{"match": [{"port": 9081}], "route": [to("reviews", port={"number": 9081})]},
            {"route": [to("reviews", port={"number": 9080})]}]
    snap, _ = mesh_route([vs("r", http)], services=[svc])
    r = router(snap, "outbound")
    assert target(r.match(Req("reviews:9081"))) == f"outbound|9081||{REVIEWS}"
    assert target(r.match(Req("reviews:9080"))) == f"outbound|9080||{REVIEWS}"
    vh9081 = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name.endswith(":9081"))
    assert len(vh9081.routes) == 2 and vh9081.routes[0].match.port is None


def test_match_gateways_restrict_entries():
    http = [{"match": [{"gateways": ["bookinfo-gateway"], "uri": {"prefix": "/gw"}}], "route": [to("reviews")]},
            {"route": [to("ratings")]}]
    snap, _ = mesh_route([vs("r", http, gateways=["mesh", "bookinfo-gateway"])])
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == f"{REVIEWS}:9080")
    assert [target(r) for r in vhost.routes] == [f"outbound|9080||{fqdn('ratings')}"]


def test_weighted_destinations():
    route = only_route({"route": [to("reviews", subset="v1") | {"weight": 75},
                                  to("reviews", subset="v3") | {"weight": 25}]})
    assert route.action.clusters == (
        WeightedCluster(f"outbound|9080|v1|{REVIEWS}", 75), WeightedCluster(f"outbound|9080|v3|{REVIEWS}", 25),
    )


def test_weights_omitted_split_evenly_and_single_destination_gets_100():
    route = only_route({"route": [to("reviews", subset="v1"), to("reviews", subset="v2")]})
    assert [w.weight for w in route.action.clusters] == [1, 1]
    assert only_route({"route": [to("reviews")]}).action.clusters == (WeightedCluster(f"outbound|9080||{REVIEWS}", 100),)


def test_timeout_retries_rewrite_headers():
    route = only_route({
        "route": [to("reviews")], "timeout": "0.5s",
        "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,503"},
        "rewrite": {"uri": "/v1/reviews", "authority": "reviews.internal"},
        "headers": {"request": {"set": {"X-Route": "canary"}}},
    })
    action = route.action
    assert action.timeout == 0.5
    assert action.retry == RetryPolicy(attempts=3, per_try_timeout=2.0,
                                       retry_on=("gateway-error", "connect-failure", "retriable-status-codes"),
                                       retriable_status_codes=(503,))
    assert (action.prefix_rewrite, action.host_rewrite) == ("/v1/reviews", "reviews.internal")
    assert route.request_headers_set == {"x-route": "canary"}


def test_retries_without_retry_on_get_istios_default_conditions():
    retry = only_route({"route": [to("reviews")], "retries": {"attempts": 2}}).action.retry
    assert retry == RetryPolicy(attempts=2, retry_on=("connect-failure", "refused-stream", "retriable-status-codes"),
                                retriable_status_codes=(503,))
    only_5xx = only_route({"route": [to("reviews")], "retries": {"attempts": 2, "retryOn": "5xx"}}).action.retry
    assert (only_5xx.retry_on, only_5xx.retriable_status_codes) == (("5xx",), ())


def test_no_timeout_or_retries_when_not_written():
    action = only_route({"route": [to("reviews")]}).action
    assert action.timeout is None and action.retry is None


def test_redirect_and_direct_response():
    redirect = only_route({"redirect": {"uri": "/new", "authority": "x.example.com", "redirectCode": 302}})
    assert (redirect.redirect, redirect.action) == (Redirect(path="/new", host="x.example.com", status=302), None)
    direct = only_route({"directResponse": {"status": 418, "body": {"string": "teapot"}}})
    assert direct.direct == DirectResponse(418, "teapot")
    raw = base64.b64encode(b"bytes!").decode()
    assert only_route({"directResponse": {"status": 200, "body": {"bytes": raw}}}).direct.body == "bytes!"
    assert only_route({"directResponse": {"status": 204}}).direct == DirectResponse(204, "")


def test_redirect_scheme_and_port():
    to_https = only_route({"redirect": {"scheme": "https", "port": 8443}}).redirect
    assert (to_https.scheme, to_https.port, to_https.status) == ("https", 8443, 301)
    assert only_route({"redirect": {"derivePort": "FROM_PROTOCOL_DEFAULT", "scheme": "https"}}).redirect.port == 0
    assert only_route({"redirect": {"derivePort": "FROM_REQUEST_PORT"}}).redirect.port is None
    assert only_route({"redirect": {"port": 8080, "derivePort": "FROM_PROTOCOL_DEFAULT"}}).redirect.port == 8080
    with pytest.raises(ResourceError, match=r"redirect\.scheme: expected http or https, got 'ftp'"):
        only_route({"redirect": {"scheme": "ftp"}})


def test_destination_port_required_for_multi_port_service_without_context():
    svc = http_service("web", "default", 80, 8080)
    http = [{"route": [to("web")]}]
    gw_vs = vs("g", http, hosts=["*"], gateways=["bookinfo-gateway"])
    with pytest.raises(ResourceError, match=r"spec\.http\[0\]\.route\[0\]\.destination\.port\.number.*several ports"):
        compile_snapshot(gateway_node({"gateway:81": 8081}), [svc], [],
                         [gw_vs, resource("Gateway", "bookinfo-gateway", {
                             "selector": {"istio": "ingressgateway"},
                             "servers": [{"port": {"number": 81, "protocol": "HTTP"}, "hosts": ["*"]}]})])


def test_destination_port_taken_from_virtual_host_for_multi_port_service():
    svc = http_service("reviews", "default", 9080, 9081)
    snap, _ = mesh_route([vs("r", [{"route": [to("reviews")]}])], services=[svc])
    r = router(snap, "outbound")
    assert target(r.match(Req("reviews:9081"))) == f"outbound|9081||{REVIEWS}"
    assert target(r.match(Req("reviews:9080"))) == f"outbound|9080||{REVIEWS}"


def test_unknown_destination_and_undefined_subset_get_empty_clusters():
    http = {"route": [to("nowhere", port={"number": 80}) | {"weight": 50}, to("reviews", subset="v9") | {"weight": 50}]}
    snap, route = mesh_route([vs("r", [http])])
    for w in route.action.clusters:
        assert snap.resources["endpoints"][w.cluster].endpoints == ()
    assert [w.cluster for w in route.action.clusters] == [f"outbound|80||{fqdn('nowhere')}", f"outbound|9080|v9|{REVIEWS}"]


def test_hosts_resolved_relative_to_the_virtual_service_namespace():
    services = [*BOOKINFO_SERVICES, http_service("reviews", "prod")]
    prod_vs = vs("r", [{"route": [to("reviews", subset="v2")]}], hosts=["reviews"], ns="prod")
    snap, _ = mesh_route([prod_vs], services=services)
    r = router(snap, "outbound")
    assert target(r.match(Req("reviews.prod:9080"))) == f"outbound|9080|v2|{fqdn('reviews', 'prod')}"
    assert target(r.match(Req("reviews:9080"))) == f"outbound|9080||{REVIEWS}"


def test_first_virtual_service_for_a_host_wins_in_the_mesh():
    first = vs("a", [{"route": [to("reviews", subset="v1")]}])
    second = vs("b", [{"route": [to("reviews", subset="v2")]}], hosts=["reviews.default.svc.cluster.local"])
    _, found = mesh_route([first, second])
    assert target(found) == f"outbound|9080|v1|{REVIEWS}"


def test_wildcard_virtual_service_covers_services_exact_wins():
    wildcard = vs("w", [{"route": [to("ratings")]}], hosts=["*.default.svc.cluster.local"])
    exact = vs("e", [{"route": [to("reviews", subset="v3")]}])
    snap, _ = mesh_route([wildcard, exact])
    r = router(snap, "outbound")
    assert target(r.match(Req("details:9080"))) == f"outbound|9080||{fqdn('ratings')}"
    assert target(r.match(Req("reviews:9080"))) == f"outbound|9080|v3|{REVIEWS}"


def test_external_host_gets_its_own_virtual_host():
    ext = vs("ext", [{"route": [to("ratings")]}], hosts=["httpbin.org"])
    _, found = mesh_route([ext], authority="httpbin.org")
    assert target(found) == f"outbound|9080||{fqdn('ratings')}"


def test_unknown_short_host_on_a_gateway_defaults_to_the_server_port():
    lost = vs("lost", [{"route": [to("reviews")]}], hosts=["*"], ns="knotwork-system", gateways=["gw"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [gw(), lost])
    cluster = f"outbound|80||{fqdn('reviews', 'knotwork-system')}"
    assert target(router(snap, "gateway|80").match(Req("x"))) == cluster
    assert snap.resources["endpoints"][cluster].endpoints == ()


def test_star_host_is_ignored_for_the_mesh():
    snap, found = mesh_route([vs("s", [{"route": [to("ratings")]}], hosts=["*"])])
    assert target(found) == f"outbound|9080||{REVIEWS}"
    assert all("*" not in v.domains for v in snap.resources["routes"]["outbound"].virtual_hosts)


# ── DestinationRule ─────────────────────────────────────────────────────────


def test_destination_rule_in_client_namespace_wins():
    services = [*BOOKINFO_SERVICES]
    mine = resource("DestinationRule", "mine", {"host": "reviews", "subsets": [{"name": "x", "labels": {"version": "v3"}}]})
    other = resource("DestinationRule", "root", {"host": "reviews.default.svc.cluster.local",
                                                 "subsets": [{"name": "x", "labels": {"version": "v1"}}]},
                     ns="knotwork-system")
    snap, _ = mesh_route([other, mine, vs("r", [{"route": [to("reviews", subset="x")]}])], services=services)
    (ep,) = snap.resources["endpoints"][f"outbound|9080|x|{REVIEWS}"].endpoints
    assert ep.labels["version"] == "v3"


# ── Gateways ────────────────────────────────────────────────────────────────


def gw(name="gw", hosts=("*",), port=80, ns="knotwork-system", selector=None, protocol="HTTP"):
    return resource("Gateway", name, {
        "selector": selector if selector is not None else {"istio": "ingressgateway"},
        "servers": [{"port": {"number": port, "protocol": protocol}, "hosts": list(hosts)}],
    }, ns)


def test_gateway_selector_must_match_node_labels():
    snap = compile_snapshot(gateway_node(labels={"istio": "egress"}), BOOKINFO_SERVICES, [], [BOOKINFO_GATEWAY, BOOKINFO_VS])
    assert snap.count("listeners") == 0


def test_gateway_server_port_needs_a_node_port():
    snap = compile_snapshot(gateway_node({"gateway:443": 8443}), BOOKINFO_SERVICES, [], [BOOKINFO_GATEWAY, BOOKINFO_VS])
    assert snap.count("listeners") == 0


def test_gateway_named_hosts_and_namespaced_gateway_reference():
    site = vs("site", [{"route": [to("productpage.default.svc.cluster.local")]}], hosts=["bookinfo.example.com"], ns="web",
              gateways=["knotwork-system/gw"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [gw(), site])
    (vhost,) = snap.resources["routes"]["gateway|80"].virtual_hosts
    assert vhost.domains == ("bookinfo.example.com", "bookinfo.example.com:80")
    r = router(snap, "gateway|80")
    assert target(r.match(Req("bookinfo.example.com:8080"))) == f"outbound|9080||{PRODUCTPAGE}"
    assert r.match(Req("other.example.com")) is None


def test_two_label_gateway_host_is_not_read_as_a_service():
    site = vs("site", [{"route": [to("productpage")]}], hosts=["bookinfo.com"], gateways=["knotwork-system/gw"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [gw(), site])
    (vhost,) = snap.resources["routes"]["gateway|80"].virtual_hosts
    assert vhost.domains[0] == "bookinfo.com"


def test_gateway_server_hosts_narrow_virtual_service_hosts():
    narrow = gw(hosts=["web/*.example.com"])
    allowed = vs("a", [{"route": [to("productpage.default.svc.cluster.local")]}], hosts=["*"], ns="web", gateways=["knotwork-system/gw"])
    refused = vs("b", [{"route": [to("productpage.default.svc.cluster.local")]}], hosts=["x.example.com"], ns="other",
                 gateways=["knotwork-system/gw"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [narrow, allowed, refused])
    (vhost,) = snap.resources["routes"]["gateway|80"].virtual_hosts
    assert vhost.domains == ("*.example.com", "*.example.com:80")


def test_gateway_merges_virtual_services_for_one_host():
    a = vs("a", [{"match": [{"uri": {"prefix": "/a"}}], "route": [to("reviews.default.svc.cluster.local")]}], hosts=["*"],
           ns="knotwork-system", gateways=["gw"])
    b = vs("b", [{"match": [{"uri": {"prefix": "/b"}}], "route": [to("ratings.default.svc.cluster.local")]}], hosts=["*"],
           ns="knotwork-system", gateways=["gw"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [gw(), a, b])
    r = router(snap, "gateway|80")
    assert target(r.match(Req("x", "/a"))) == f"outbound|9080||{REVIEWS}"
    assert target(r.match(Req("x", "/b"))) == f"outbound|9080||{fqdn('ratings')}"


def test_gateway_servers_sharing_a_port_share_listener():
    g1, g2 = gw("g1", hosts=["a.example.com"]), gw("g2", hosts=["b.example.com"])
    va = vs("va", [{"route": [to("reviews.default.svc.cluster.local")]}], hosts=["a.example.com"], ns="knotwork-system", gateways=["g1"])
    vb = vs("vb", [{"route": [to("ratings.default.svc.cluster.local")]}], hosts=["b.example.com"], ns="knotwork-system", gateways=["g2"])
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, [], [g1, g2, va, vb])
    assert list(snap.resources["listeners"]) == ["gateway|80"]
    r = router(snap, "gateway|80")
    assert target(r.match(Req("a.example.com:8080"))) == f"outbound|9080||{REVIEWS}"
    assert target(r.match(Req("b.example.com:8080"))) == f"outbound|9080||{fqdn('ratings')}"


def test_tcp_servers_are_skipped_and_https_needs_tls():
    http = gw(port=443, protocol="HTTP")
    tcp = gw("t", port=31400, protocol="TCP")
    node = gateway_node({"gateway:443": 8443, "gateway:31400": 31400})
    snap = compile_snapshot(node, BOOKINFO_SERVICES, [], [http, tcp])
    assert set(snap.resources["listeners"]) == {"gateway|443"}
    assert snap.resources["listeners"]["gateway|443"].server_tls == ()
    with pytest.raises(ResourceError, match="an HTTPS server needs tls mode SIMPLE or MUTUAL"):
        compile_snapshot(node, BOOKINFO_SERVICES, [], [gw(port=443, protocol="HTTPS")])


def test_empty_selector_selects_every_gateway():
    snap = compile_snapshot(gateway_node(labels={}), BOOKINFO_SERVICES, [], [gw(selector={})])
    assert "gateway|80" in snap.resources["listeners"]


# ── errors ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("spec", "field"), [
    ({"hosts": [], "http": []}, "spec.hosts"),
    ({"hosts": ["reviews"], "http": [{"route": [to("reviews")], "timeout": "3"}]}, r"spec.http\[0\].timeout"),
    ({"hosts": ["reviews"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [to("reviews")]}]},
     r"spec.http\[0\].match\[0\].uri"),
    ({"hosts": ["reviews"], "http": [{"match": [{"uri": {"regex": "("}}], "route": [to("reviews")]}]},
     r"spec.http\[0\].match\[0\].uri.regex"),
    ({"hosts": ["reviews"], "http": [{"match": [{"scheme": {"exact": "https"}}], "route": [to("reviews")]}]},
     r"spec.http\[0\].match\[0\].scheme"),
    ({"hosts": ["reviews"], "http": [{}]}, r"spec.http\[0\]: expected exactly one of route"),
    ({"hosts": ["reviews"], "http": [{"route": [{"destination": {}}]}]}, r"spec.http\[0\].route\[0\].destination.host"),
    ({"hosts": ["reviews"], "http": [{"route": [to("reviews")], "retries": {"attempts": "x"}}]},
     r"spec.http\[0\].retries.attempts"),
    ({"hosts": ["reviews"], "http": "nope"}, "spec.http"),
])
def test_errors_name_resource_and_field(spec, field):
    bad = resource("VirtualService", "bad", spec)
    with pytest.raises(ResourceError, match=rf"plugin/routing: VirtualService/default/bad: {field}"):
        compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, [], [bad])


def test_unsupported_fields_are_ignored_not_fatal():
    route = only_route({"route": [to("reviews")], "delegate": {"name": "x"},
                        "fault": {"delay": {"exponentialDelay": "5s"}, "abort": {"grpcStatus": "UNAVAILABLE"}},
                        "corsPolicy": {}})
    assert target(route) == f"outbound|9080||{REVIEWS}"
    assert route.fault is None and route.cors is None


def test_fault_delay_and_abort_with_percentages():
    route = only_route({"route": [to("reviews")], "fault": {
        "delay": {"fixedDelay": "1.5s", "percentage": {"value": 12.5}},
        "abort": {"httpStatus": 503, "percentage": {"value": 0.1}},
    }})
    assert route.fault == FaultPolicy(delay=1.5, delay_percent=12.5, abort_status=503, abort_percent=0.1)
    # percentage absent: every request; the legacy integer `percent` still read
    assert only_route({"route": [to("reviews")], "fault": {"delay": {"fixedDelay": "5s"}}}).fault == FaultPolicy(delay=5.0)
    assert only_route({"route": [to("reviews")], "fault": {"delay": {"fixedDelay": "5s", "percent": 30}}}).fault == \
        FaultPolicy(delay=5.0, delay_percent=30.0)
    assert only_route({"route": [to("reviews")], "fault": {"abort": {"httpStatus": 418}}}).fault == FaultPolicy(abort_status=418)


def test_mirror_mirror_percentage_and_mirrors_create_clusters():
    snap, _ = mesh_route([vs("r", [{
        "route": [to("reviews", subset="v1")],
        "mirror": {"host": "ratings", "port": {"number": 9080}}, "mirrorPercentage": {"value": 25.0},
        "mirrors": [{"destination": {"host": "details"}}, {"destination": {"host": "reviews", "subset": "v2"},
                                                            "percentage": {"value": 5}}],
    }]), REVIEWS_DR])
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == f"{REVIEWS}:9080")
    (route,) = vhost.routes
    assert route.mirror == (
        MirrorPolicy(f"outbound|9080||{fqdn('ratings')}", 25.0),
        MirrorPolicy(f"outbound|9080||{fqdn('details')}", 100.0),
        MirrorPolicy(f"outbound|9080|v2|{REVIEWS}", 5.0),
    )
    for m in route.mirror:
        assert m.cluster in snap.resources["clusters"] and m.cluster in snap.resources["endpoints"]
    legacy = only_route({"route": [to("reviews")], "mirror": {"host": "ratings"}, "mirrorPercent": 50})
    assert legacy.mirror == (MirrorPolicy(f"outbound|9080||{fqdn('ratings')}", 50.0),)


def test_request_and_response_headers_set_add_remove_and_single_destination_headers():
    route = only_route({
        "route": [to("reviews") | {"headers": {"request": {"set": {"X-Dest": "d"}}, "response": {"remove": ["x-b"]}}}],
        "headers": {
            "request": {"set": {"X-Set": "1"}, "add": {"X-Add": "2"}, "remove": ["X-Gone"]},
            "response": {"set": {"X-Rs": "3"}, "add": {"X-Ra": "4"}, "remove": ["X-A"]},
        },
    })
    assert route.request_headers_set == {"x-set": "1", "x-dest": "d"}
    assert route.request_headers_add == {"x-add": "2"}
    assert route.request_headers_remove == ("x-gone",)
    assert route.response_headers_set == {"x-rs": "3"}
    assert route.response_headers_add == {"x-ra": "4"}
    assert route.response_headers_remove == ("x-a", "x-b")
    several = only_route({"route": [to("reviews", subset="v1") | {"headers": {"request": {"set": {"a": "b"}}}},
                                    to("reviews", subset="v2")]})
    assert several.request_headers_set == {}
    direct = only_route({"directResponse": {"status": 200}, "headers": {"response": {"set": {"x": "y"}}}})
    assert direct.response_headers_set == {"x": "y"}


def test_cors_policy():
    route = only_route({"route": [to("reviews")], "corsPolicy": {
        "allowOrigins": [{"exact": "https://a.example"}, {"prefix": "https://b."}, {"regex": ".*\\.c\\.example"}],
        "allowMethods": ["GET", "POST"], "allowHeaders": ["x-h"], "exposeHeaders": ["x-e"],
        "maxAge": "24h", "allowCredentials": True,
    }})
    assert route.cors == CorsPolicy(
        allow_origins=(StringMatch(exact="https://a.example"), StringMatch(prefix="https://b."),
                       StringMatch(regex=r".*\.c\.example")),
        allow_methods=("GET", "POST"), allow_headers=("x-h",), expose_headers=("x-e",), max_age=86400,
        allow_credentials=True,
    )
    assert only_route({"route": [to("reviews")], "corsPolicy": {"allowOrigin": ["https://old"]}}).cors == \
        CorsPolicy(allow_origins=(StringMatch(exact="https://old"),))


@pytest.mark.parametrize(("http", "field"), [
    ({"fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 150}}}}, r"fault.delay.percentage.value"),
    ({"fault": {"delay": {"percent": 5}}}, r"fault.delay.fixedDelay"),
    ({"fault": {"abort": {"httpStatus": 99}}}, r"fault.abort.httpStatus"),
    ({"mirror": {"port": {"number": 9080}}}, r"mirror.host"),
    ({"mirror": {"host": "ratings"}, "mirrorPercentage": {"value": -1}}, r"mirrorPercentage.value"),
    ({"corsPolicy": {"allowOrigins": [{"exact": "a", "prefix": "b"}]}}, r"corsPolicy.allowOrigins\[0\]"),
    ({"corsPolicy": {"maxAge": "10"}}, r"corsPolicy.maxAge"),
    ({"headers": {"request": {"remove": "x"}}}, r"headers.request.remove"),
])
def test_policy_errors_name_the_field(http, field):
    with pytest.raises(ResourceError, match=rf"spec.http\[0\].{field}"):
        only_route({"route": [to("reviews")], **http})


def test_consistency_with_everything_at_once():
    resources = [BOOKINFO_GATEWAY, BOOKINFO_VS, REVIEWS_DR, REVIEWS_JASON_VS]
    for node in (sidecar("productpage"), sidecar("reviews"), gateway_node()):
        compile_snapshot(node, BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS + (endpoint("reviews", "10.1.1.1"),), resources)


def test_same_destination_twice_sums_weights():
    route = only_route({"route": [to("reviews", subset="v1") | {"weight": 30}, to("reviews", subset="v2") | {"weight": 40},
                                  to("reviews", subset="v1") | {"weight": 30}]})
    assert [(w.cluster.split("|")[2], w.weight) for w in route.action.clusters] == [("v1", 60), ("v2", 40)]


def test_ignore_uri_case_on_regex_and_exact():
    assert only_route({"match": [{"uri": {"regex": "/a+"}, "ignoreUriCase": True}],
                       "route": [to("reviews")]}).match.regex == "(?i)/a+"
    assert only_route({"match": [{"uri": {"exact": "/a.b"}, "ignoreUriCase": True}],
                       "route": [to("reviews")]}).match.regex == r"(?i)/a\.b"


def test_direct_response_bad_base64():
    with pytest.raises(ResourceError, match=r"directResponse\.body\.bytes: expected base64"):
        only_route({"directResponse": {"status": 200, "body": {"bytes": "***"}}})


def test_error_message_names_the_source_file():
    from knotwork import Resource
    from knotwork.model import SourceRef

    bad = Resource("networking.istio.io/v1", "VirtualService", "bad", "default",
                   {"hosts": ["reviews"], "http": [{"route": [to("reviews")], "timeout": "soon"}]},
                   source=SourceRef("mesh/routes.yaml", 12))
    with pytest.raises(ResourceError, match=r"VirtualService/default/bad \(mesh/routes.yaml:12\): spec.http\[0\].timeout"):
        compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, [], [bad])
