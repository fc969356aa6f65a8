"""The host router against hand-written route tables."""

from __future__ import annotations

import pytest
from knotwork.protocols import Router
from knotwork.proxyconfig import (
    HeaderMatch, Route, RouteAction, RouteMatch, RouteTable, VirtualHost, WeightedCluster,
)
from routing_helpers import Conn, Req

from knotwork_routing import _hooks
from knotwork_routing.router import HostRouter, compile_virtual_host, strip_port


def route(name: str, **match) -> Route:
    return Route(name=name, match=RouteMatch(**match), action=RouteAction((WeightedCluster(f"c-{name}"),)))


def table(*vhosts: VirtualHost) -> HostRouter:
    return HostRouter(RouteTable(name="t", virtual_hosts=vhosts))


def vh(name: str, *domains: str, routes=None) -> VirtualHost:
    return VirtualHost(name, domains, tuple(routes) if routes is not None else (route(name),))


def name_of(r: HostRouter, authority: str, **kw) -> str | None:
    found = r.match(Req(authority, **kw))
    return None if found is None else found.name


# ── registration ────────────────────────────────────────────────────────────


def test_router_strategy_record():
    (record,) = _hooks.knotwork_routers()
    assert record.name == "host"
    assert record.engines == frozenset({"native", "envoy"})
    assert isinstance(record.factory(RouteTable(name="t"), None), Router)


# ── domains ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("authority", "host"), [
    ("reviews:9080", "reviews"), ("reviews", "reviews"), ("[::1]:80", "[::1]"), ("[::1]", "[::1]"),
    ("::1", "::1"), ("a:b", "a:b"),
])
def test_strip_port(authority, host):
    assert strip_port(authority) == host


def test_exact_domain_with_and_without_port():
    r = table(vh("a", "reviews", "reviews:9080"), vh("b", "reviews:9081"))
    assert name_of(r, "reviews") == "a"
    assert name_of(r, "reviews:9080") == "a"
    assert name_of(r, "reviews:9081") == "b"
    assert name_of(r, "reviews:1234") == "a"  # falls back to the name without port
    assert name_of(r, "ratings") is None


def test_wildcards_longest_first_then_star():
    r = table(vh("short", "*.com"), vh("long", "*.example.com"), vh("star", "*"), vh("exact", "www.example.com"))
    assert name_of(r, "www.example.com") == "exact"
    assert name_of(r, "api.example.com") == "long"
    assert name_of(r, "a.b.example.com:8080") == "long"
    assert name_of(r, "other.com") == "short"
    assert name_of(r, "example.com") == "short"
    assert name_of(r, "localhost:8080") == "star"


def test_suffix_wildcard_needs_at_least_one_character():
    r = table(vh("w", "*.example.com"))
    assert name_of(r, ".example.com") is None
    assert name_of(r, "x.example.com") == "w"


def test_wildcard_with_port_in_domain():
    r = table(vh("p", "*.example.com:8080"), vh("np", "*.example.com"))
    assert name_of(r, "a.example.com:8080") == "p"
    assert name_of(r, "a.example.com:9090") == "np"


def test_prefix_wildcard():
    r = table(vh("p", "api.*"))
    assert name_of(r, "api.internal:80") == "p"
    assert name_of(r, "web.internal") is None


def test_domains_are_case_insensitive_in_config():
    r = table(vh("a", "Reviews.Default"))
    assert name_of(r, "reviews.default") == "a"


def test_duplicate_domain_is_refused():
    with pytest.raises(ValueError, match="'reviews' is in virtual hosts 'a' and 'b'"):
        table(vh("a", "reviews"), vh("b", "reviews"))


def test_bad_wildcard_is_refused():
    with pytest.raises(ValueError, match="bad wildcard"):
        table(vh("a", "a.*.com"))


def test_no_virtual_hosts():
    assert name_of(table(), "anything") is None


def test_virtual_host_without_routes():
    assert name_of(table(vh("a", "*", routes=())), "x") is None


# ── routes ──────────────────────────────────────────────────────────────────


def test_default_route_is_returned_without_looking():
    only = route("default")
    matcher = compile_virtual_host(VirtualHost("v", ("*",), (only, route("never", prefix="/x"))))
    assert matcher(object()) is only  # not even a request


def test_first_match_wins_in_order():
    r = table(vh("v", "*", routes=[route("a", prefix="/api"), route("b", prefix="/api/v1"), route("c")]))
    assert name_of(r, "x", path="/api/v1/products") == "a"
    assert name_of(r, "x", path="/other") == "c"


def test_prefix_exact_and_regex_paths():
    r = table(vh("v", "*", routes=[
        route("exact", prefix=None, path="/productpage"),
        route("regex", prefix=None, regex=r"/books/\d+"),
        route("prefix", prefix="/static"),
    ]))
    assert name_of(r, "x", path="/productpage") == "exact"
    assert name_of(r, "x", path="/productpage?u=normal") == "exact"
    assert name_of(r, "x", path="/productpage/x") is None
    assert name_of(r, "x", path="/books/12?x=1") == "regex"
    assert name_of(r, "x", path="/books/12a") is None
    assert name_of(r, "x", path="/static/css/app.css") == "prefix"
    assert name_of(r, "x", path="/statics") == "prefix"  # string prefix, like Envoy and Istio
    assert name_of(r, "x", path="/") is None


def test_match_with_empty_prefix_and_nothing_else_matches_all():
    r = table(vh("v", "*", routes=[route("all", prefix=None)]))
    assert name_of(r, "x", path="/anything") == "all"


@pytest.mark.parametrize(("header", "value", "expected"), [
    (HeaderMatch("end-user", exact="jason"), "jason", True),
    (HeaderMatch("end-user", exact="jason"), "json", False),
    (HeaderMatch("end-user", exact="jason"), None, False),
    (HeaderMatch("end-user", prefix="ja"), "jason", True),
    (HeaderMatch("end-user", prefix="ja"), None, False),
    (HeaderMatch("end-user", regex="j.*n"), "jason", True),
    (HeaderMatch("end-user", regex="j.*n"), "jasonx", False),
    (HeaderMatch("end-user", present=True), "", True),
    (HeaderMatch("end-user", present=True), None, False),
    (HeaderMatch("end-user", present=False), None, True),
    (HeaderMatch("end-user", present=False), "x", False),
    (HeaderMatch("end-user", exact="jason", invert=True), "jason", False),
    (HeaderMatch("end-user", exact="jason", invert=True), "bob", True),
    (HeaderMatch("end-user", exact="jason", invert=True), None, True),
    (HeaderMatch("end-user", present=True, invert=True), None, True),
    (HeaderMatch("End-User", exact="jason"), "jason", True),  # names compared lower-case
])
def test_header_matches(header, value, expected):
    r = table(vh("v", "*", routes=[route("h", headers=(header,))]))
    headers = {} if value is None else {"end-user": value}
    assert (name_of(r, "x", headers=headers) == "h") is expected


def test_pseudo_headers_method_and_authority():
    r = table(vh("v", "*", routes=[
        route("post", headers=(HeaderMatch(":method", exact="POST"),)),
        route("auth", headers=(HeaderMatch(":authority", prefix="api."),)),
        route("path", headers=(HeaderMatch(":path", regex=r"/x\?.*"),)),
    ]))
    assert name_of(r, "web", method="POST") == "post"
    assert name_of(r, "api.example.com") == "auth"
    assert name_of(r, "web", path="/x?y=1") == "path"
    assert name_of(r, "web", method="GET") is None


def test_all_conditions_of_a_route_must_hold():
    r = table(vh("v", "*", routes=[route(
        "both", prefix="/api", headers=(HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", present=True)),
    )]))
    assert name_of(r, "x", path="/api", headers={"x-a": "1", "x-b": ""}) == "both"
    assert name_of(r, "x", path="/api", headers={"x-a": "1"}) is None
    assert name_of(r, "x", path="/web", headers={"x-a": "1", "x-b": ""}) is None


@pytest.mark.parametrize(("path", "expected"), [
    ("/p?debug=1", True), ("/p?a=2&debug=1", True), ("/p?debug=10", False), ("/p", False),
    ("/p?debug", False), ("/p?xdebug=1", False),
])
def test_query_exact(path, expected):
    r = table(vh("v", "*", routes=[route("q", query=(HeaderMatch("debug", exact="1"),))]))
    assert (name_of(r, "x", path=path) == "q") is expected


def test_query_prefix_regex_present():
    r = table(vh("v", "*", routes=[
        route("pre", query=(HeaderMatch("user", prefix="ja"),)),
        route("re", query=(HeaderMatch("id", regex=r"\d+"),)),
        route("has", query=(HeaderMatch("flag", present=True),)),
    ]))
    assert name_of(r, "x", path="/?user=jason") == "pre"
    assert name_of(r, "x", path="/?id=42") == "re"
    assert name_of(r, "x", path="/?flag") == "has"
    assert name_of(r, "x", path="/?id=4x") is None


def test_source_labels_subset():
    r = table(vh("v", "*", routes=[route("src", source_labels={"app": "productpage", "version": "v1"})]))
    assert name_of(r, "x", source_labels={"app": "productpage", "version": "v1", "extra": "y"}) == "src"
    assert name_of(r, "x", source_labels={"app": "productpage"}) is None
    assert name_of(r, "x") is None


def test_port_from_authority_else_local_port():
    r = table(vh("v", "*", routes=[route("p", port=9080)]))
    assert name_of(r, "reviews:9080") == "p"
    assert name_of(r, "reviews:9081") is None
    assert name_of(r, "reviews", connection=Conn(local_address=("127.0.0.1", 9080))) == "p"
    assert name_of(r, "reviews", connection=Conn(local_address=("127.0.0.1", 15001))) is None


def test_regex_compiled_once_not_per_request(monkeypatch):
    import re

    r = table(vh("v", "*", routes=[route("re", prefix=None, regex="/a.*")]))

    def boom(*a, **k):
        raise AssertionError("compiled per request")

    monkeypatch.setattr(re, "compile", boom)
    assert name_of(r, "x", path="/abc") == "re"


def test_wildcard_resolution_cache_is_bounded(monkeypatch):
    from knotwork_routing import router as router_module

    monkeypatch.setattr(router_module, "CACHE_SIZE", 3)
    r = table(vh("w", "*.example.com"), vh("star", "*"))
    for i in range(10):
        assert name_of(r, f"h{i}.example.com") == "w"
        assert name_of(r, f"other{i}") == "star"
        assert len(r._cache) <= 3
    assert name_of(r, "h1.example.com") == "w"  # still right after clearing
