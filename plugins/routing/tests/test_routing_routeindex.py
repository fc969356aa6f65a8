"""The indexed route lookup against a naive reference: every route tried in order.

The reference below is written from Envoy's ``RouteMatch`` semantics (as
documented in :mod:`knotwork_routing.matching`), independently of the router's
code, and scans routes one by one. Generated route tables and requests (fixed
seed) must give the same route in both, so the index never changes which route
wins — only how it is found.
"""

from __future__ import annotations

import random
import re

import pytest
from knotwork.proxyconfig import HeaderMatch, Route, RouteAction, RouteMatch, RouteTable, VirtualHost, WeightedCluster
from routing_helpers import Conn, Req

from knotwork_routing import routeindex
from knotwork_routing.matching import literal_prefix
from knotwork_routing.router import HostRouter, compile_virtual_host

# ── the naive reference ─────────────────────────────────────────────────────


def _value_ok(m: HeaderMatch, value: str | None) -> bool:
    if m.exact is not None:
        ok = value is not None and value == m.exact
    elif m.prefix is not None:
        ok = value is not None and value.startswith(m.prefix)
    elif m.regex is not None:
        ok = value is not None and re.fullmatch(m.regex, value) is not None
    else:
        ok = (value is not None) == (m.present is not False)
    return ok != m.invert


def _header_value(req: Req, name: str) -> str | None:
    name = name.lower()
    pseudo = {":method": req.method, ":authority": req.authority, ":path": req.path}
    return pseudo[name] if name in pseudo else req.headers.get(name)


def _query_value(full_path: str, name: str) -> str | None:
    if "?" not in full_path:
        return None
    for pair in full_path.split("?", 1)[1].split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def _port_of(req: Req) -> int:
    host, sep, port = req.authority.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return int(port)
    return req.connection.local_address[1]


def reference_matches(m: RouteMatch, req: Req) -> bool:
    full = req.path
    bare = full.split("?", 1)[0]
    if m.path is not None:
        if bare != m.path:
            return False
    elif m.regex is not None:
        if re.fullmatch(m.regex, bare) is None:
            return False
    elif m.prefix is not None and not full.startswith(m.prefix):
        return False
    if not all(_value_ok(h, _header_value(req, h.name)) for h in m.headers):
        return False
    if not all(_value_ok(q, _query_value(full, q.name)) for q in m.query):
        return False
    if any(req.source_labels.get(k) != v for k, v in m.source_labels.items()):
        return False
    return m.port is None or _port_of(req) == m.port


def reference(routes: tuple[Route, ...], req: Req) -> Route | None:
    for route in routes:
        if reference_matches(route.match, req):
            return route
    return None


# ── generated tables and requests ───────────────────────────────────────────

PATHS = ("/", "/a", "/a/", "/a/b", "/a/bc", "/ab", "/abc", "/b", "/b/a", "/api/v1/products", "/api/v1",
         "/api", "/productpage", "/static/app.css", "/x?y", "")
PREFIXES = ("/a", "/a/", "/a/b", "/ab", "/b", "/api", "/api/v1", "/static", "/", "", "/a?d", "/p")
REGEXES = (r"/a/.*", r"/[ab]+", r"/api/v\d+.*", r"/b.*", r".*c", r"/ab?c", r"/a|/b.*", r"/x{0}a.*", r"/a/b", r"(?i)/A.*")
QUERIES = ("", "?debug=1", "?debug=2&u=jason", "?u=jason", "?debug", "?u=bob&debug=1")


def _header_match(rng: random.Random) -> HeaderMatch:
    name = rng.choice(("end-user", "x-v", ":method", ":authority"))
    values = {"end-user": ("jason", "bob"), "x-v": ("1", "2"), ":method": ("GET", "POST"),
              ":authority": ("svc", "svc:80")}[name]
    how = rng.randrange(5)
    invert = rng.random() < 0.15
    if how == 0:
        return HeaderMatch(name, exact=rng.choice(values), invert=invert)
    if how == 1:
        return HeaderMatch(name, prefix=rng.choice(values)[:2], invert=invert)
    if how == 2:
        return HeaderMatch(name, regex=rng.choice(values)[0] + ".*", invert=invert)
    return HeaderMatch(name, present=rng.choice((True, False)), invert=invert)


KINDS = ("none", "prefix", "exact", "regex")


def _route_match(rng: random.Random, kinds: tuple[str, ...] = KINDS) -> RouteMatch:
    kind = rng.choices(kinds, weights=(2, 5, 4, 2)[:len(kinds)])[0]
    path: dict = {"prefix": None}
    if kind == "prefix":
        path = {"prefix": rng.choice(PREFIXES)}
    elif kind == "exact":
        path = {"prefix": None, "path": rng.choice(PATHS)}
    elif kind == "regex":
        path = {"prefix": None, "regex": rng.choice(REGEXES)}
    headers = tuple(_header_match(rng) for _ in range(rng.choices((0, 1, 2), weights=(6, 3, 1))[0]))
    query = ()
    if rng.random() < 0.15:
        query = (rng.choice((HeaderMatch("debug", exact="1"), HeaderMatch("u", prefix="ja"),
                             HeaderMatch("debug", present=True))),)
    source = {"app": "productpage"} if rng.random() < 0.08 else {}
    port = rng.choice((80, 9080)) if rng.random() < 0.08 else None
    return RouteMatch(**path, headers=headers, query=query, source_labels=source, port=port)


def _routes(rng: random.Random, count: int, kinds: tuple[str, ...] = KINDS) -> tuple[Route, ...]:
    routes = [Route(name=f"r{i}", match=_route_match(rng, kinds), action=RouteAction((WeightedCluster(f"c{i}"),)))
              for i in range(count)]
    if rng.random() < 0.3:  # a catch-all somewhere, often last
        at = count if rng.random() < 0.7 else rng.randrange(count + 1)
        routes.insert(at, Route(name="catch-all", action=RouteAction((WeightedCluster("c-all"),))))
    return tuple(routes)


def _request(rng: random.Random) -> Req:
    path = rng.choice(PATHS) or "/"
    if rng.random() < 0.3:
        path += rng.choice(("x", "/z", "c"))
    path += rng.choice(QUERIES)
    headers = {}
    if rng.random() < 0.5:
        headers["end-user"] = rng.choice(("jason", "bob", "jasper"))
    if rng.random() < 0.3:
        headers["x-v"] = rng.choice(("1", "2", "12"))
    return Req(rng.choice(("svc", "svc:80", "svc:9080")), path=path, method=rng.choice(("GET", "POST")),
               headers=headers, source_labels=rng.choice(({}, {"app": "productpage"}, {"app": "reviews"})),
               connection=Conn(local_address=("127.0.0.1", rng.choice((80, 15001)))))


@pytest.mark.parametrize(("seed", "kinds", "most"), [
    *((seed, KINDS, 30) for seed in range(6)),
    (10, KINDS, 8),  # small tables: some are scanned, not indexed
    (11, ("none", "prefix"), 30),  # prefixes only: looked up in the path as received
    (12, ("none", "prefix", "exact"), 30),  # no regex
])
def test_index_agrees_with_reference_on_generated_tables(seed, kinds, most):
    rng = random.Random(seed)
    checked = 0
    for _ in range(300):
        routes = _routes(rng, rng.randrange(1, most), kinds)
        matcher = compile_virtual_host(VirtualHost("v", ("*",), routes))
        for _ in range(40):
            req = _request(rng)
            want = reference(routes, req)
            got = matcher(req)
            assert got is want, (
                f"seed {seed}: {req.path!r} {req.method} {req.headers}: index gave "
                f"{None if got is None else got.name}, reference {None if want is None else want.name}; "
                f"routes: {[(r.name, r.match) for r in routes]}"
            )
            checked += got is not None
    assert checked > 1000  # the generated requests do hit routes, not only misses


# ── ordering edge cases, by hand ────────────────────────────────────────────


def route(name: str, **match) -> Route:
    return Route(name=name, match=RouteMatch(**match), action=RouteAction((WeightedCluster(f"c-{name}"),)))


def first(routes: list[Route], path: str, **kw) -> str | None:
    req = Req("svc", path=path, **kw)
    got = compile_virtual_host(VirtualHost("v", ("*",), tuple(routes)))(req)
    want = reference(tuple(routes), req)
    assert got is want
    return None if got is None else got.name


def test_prefix_route_before_exact_route_wins():
    routes = [route("prefix", prefix="/product"), route("exact", prefix=None, path="/productpage")]
    assert first(routes, "/productpage") == "prefix"
    assert first(list(reversed(routes)), "/productpage") == "exact"


def test_shorter_prefix_first_wins_over_longer_prefix():
    routes = [route("short", prefix="/api"), route("long", prefix="/api/v1")]
    assert first(routes, "/api/v1/x") == "short"
    assert first(list(reversed(routes)), "/api/v1/x") == "long"
    assert first(list(reversed(routes)), "/api/v2") == "short"


def test_header_conditioned_routes_before_catch_all():
    routes = [
        route("jason", prefix="/reviews", headers=(HeaderMatch("end-user", exact="jason"),)),
        route("post", headers=(HeaderMatch(":method", exact="POST"),)),
        route("all"),
        route("never", prefix=None, path="/reviews/1"),
    ]
    assert first(routes, "/reviews/1", headers={"end-user": "jason"}) == "jason"
    assert first(routes, "/reviews/1", method="POST") == "post"
    assert first(routes, "/reviews/1") == "all"
    assert first(routes, "/other") == "all"


def test_regex_routes_interleaved_keep_their_place():
    routes = [
        route("exact", prefix=None, path="/books/1", headers=(HeaderMatch("x-v", exact="1"),)),
        route("regex", prefix=None, regex=r"/books/\d+"),
        route("prefix", prefix="/books"),
        route("regex2", prefix=None, regex=r"/.*"),
    ]
    assert first(routes, "/books/1", headers={"x-v": "1"}) == "exact"
    assert first(routes, "/books/1") == "regex"
    assert first(routes, "/books/x") == "prefix"
    assert first(routes, "/magazines") == "regex2"


def test_prefix_with_query_is_tested_on_the_whole_path():
    routes = [route("q", prefix="/a?debug"), route("a", prefix="/a")]
    assert first(routes, "/a?debug=1") == "q"
    assert first(routes, "/a?x=1") == "a"
    assert first(routes, "/ab") == "a"


def test_exact_path_ignores_query_and_an_exact_path_with_query_never_matches():
    routes = [route("weird", prefix=None, path="/a?b"), route("exact", prefix=None, path="/a")]
    assert first(routes, "/a?b") == "exact"
    assert first(routes, "/a") == "exact"
    assert first(routes, "/ab") is None


@pytest.mark.parametrize(("pattern", "prefix"), [
    (r"/reviews/\d+", "/reviews/"), (r"/ab?c", "/a"), (r"/a|/b", ""), (r"/x{2}", "/"), (r".*c", ""),
    (r"(?i)/a", ""), (r"/a/b", "/a/b"), (r"a*", ""), (r"/[ab]", "/"),
])
def test_literal_prefix_of_a_regex(pattern, prefix):
    assert literal_prefix(pattern) == prefix


def test_regex_with_a_literal_start_is_only_tested_on_paths_with_that_start(monkeypatch):
    from knotwork_routing import matching

    tested: list[str] = []
    real = matching._regex_path

    def counting(pattern):
        check = real(pattern)

        def wrapped(request, path):
            tested.append(path)
            return check(request, path)

        return wrapped

    monkeypatch.setattr(matching, "_regex_path", counting)
    routes = [route("re", prefix=None, regex=r"/reviews/\d+"), route("all")]
    matcher = compile_virtual_host(VirtualHost("v", ("*",), tuple(routes)))
    assert matcher(Req("svc", path="/reviews/12?x=1")).name == "re"
    assert matcher(Req("svc", path="/reviews/x")).name == "all"
    assert tested == ["/reviews/12", "/reviews/x"]
    assert matcher(Req("svc", path="/productpage")).name == "all"
    assert matcher(Req("svc", path="/review")).name == "all"
    assert tested == ["/reviews/12", "/reviews/x"]  # not tested: those paths cannot match


def test_routes_after_a_catch_all_are_not_compiled(monkeypatch):
    compiled = []
    real = routeindex.compile_match
    monkeypatch.setattr(routeindex, "compile_match", lambda m: compiled.append(m) or real(m))
    compile_virtual_host(VirtualHost("v", ("*",), (
        route("h", headers=(HeaderMatch("x", present=True),)), route("all"), route("after", prefix=None, regex="/x"),
    )))
    assert [m.headers for m in compiled] == [(HeaderMatch("x", present=True),), ()]


def test_only_candidate_routes_are_evaluated():
    """A request whose path meets only the 10th route's condition tests only that route."""
    evaluated: list[str] = []

    class Counting(Req):
        def header(self, name: str) -> str | None:
            evaluated.append(name)
            return super().header(name)

    routes = [route(f"r{i}", prefix=f"/api/v{i}/", headers=(HeaderMatch(f"h{i}", present=False),)) for i in range(9)]
    routes.append(route("last", prefix="/bench", headers=(HeaderMatch("h9", present=False),)))
    router = HostRouter(RouteTable(name="t", virtual_hosts=(VirtualHost("v", ("svc",), tuple(routes)),)))
    found = router.match(Counting("svc", path="/bench/x"))
    assert found is not None and found.name == "last"
    assert evaluated == ["h9"]


def test_many_hosts_each_with_many_routes_find_the_last_route():
    vhosts = tuple(
        VirtualHost(f"svc{n}", (f"svc{n}", f"svc{n}:80"), tuple(
            [route(f"{n}-{i}", prefix=f"/r{i}") for i in range(9)] + [route(f"{n}-last", prefix="/bench")]))
        for n in range(100))
    router = HostRouter(RouteTable(name="t", virtual_hosts=vhosts))
    assert router.match(Req("svc42:80", path="/bench/x")).name == "42-last"
    assert router.match(Req("svc42", path="/r3")).name == "42-3"
    assert router.match(Req("svc42", path="/other")) is None
    assert router.match(Req("svc100", path="/bench")) is None
