"""A virtual host's routes, indexed by path so a request is not tested against every route.

First match wins, as in Envoy; what this module changes is how the first
match is *found*. Each route is filed by its path condition
(:func:`knotwork_routing.matching.path_condition`):

- an **exact** path goes into a dict keyed by that path;
- a **prefix** (without ``?``) goes into a dict keyed by that prefix;
- a **regex** that starts with literal characters (``/reviews/\\d+``) goes
  into that dict too, keyed by them
  (:func:`~knotwork_routing.matching.literal_prefix`), with its regex still to test;
- everything else — no path condition, a regex without a literal start, a
  prefix with ``?`` (tested on the path *with* its query) — is a *general*
  route, tested on every request with its full predicate.

Regexes are compiled once, and only for the routes that wrote one.

The prefixes that are prefixes of one request path form a chain (each a
prefix of the next), so the longest one decides which prefix routes can match.
Hence, once per route table, for every indexed key the **candidate list** is
built: the routes whose path condition that key satisfies, merged with the
general routes in route order, each with the predicate of its *remaining*
conditions (headers, query, method, source labels, port; None when there are
none), and cut after the first route that needs nothing more (nothing behind it
can win). Per request the engine strips the query, looks the path up among
exact paths, else finds its longest indexed prefix (one dict lookup per
distinct prefix length, longest first), else takes the general routes, and
walks that list in order. The result is the same route a scan of all routes
would give, because every route that could match is in the list, in order.

Routes after one that matches everything are dropped. A virtual host of at most
:data:`SCAN_UP_TO` routes without a regex is scanned instead (a few
``startswith`` cost less than the lookups); one without exact paths or regexes
looks its prefixes up in the path as received (no key contains ``?``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from knotwork.proxyconfig import Route, VirtualHost

from .matching import (
    ANY, EXACT, PREFIX, REGEX, Predicate, compile_conditions, compile_match, literal_prefix, matches_everything,
    path_condition,
)

__all__ = ["VHostMatcher", "compile_virtual_host"]

#: ``match(request) -> Route | None`` for one virtual host
VHostMatcher = Callable[[Any], "Route | None"]
#: Virtual hosts with at most this many routes and no regex are scanned: cheaper than the index.
SCAN_UP_TO = 4
#: ``(route index, predicate or None, route)``
_Entry = tuple[int, "Predicate | None", Route]
#: what a request walks: ``(predicate or None, route)`` in route order
_Candidates = tuple[tuple["Predicate | None", Route], ...]


def _candidates(*groups: Iterable[_Entry]) -> _Candidates:
    """Merge entries in route order; nothing after an unconditional entry can win."""
    merged = sorted((e for group in groups for e in group), key=lambda e: e[0])
    out: list[tuple[Predicate | None, Route]] = []
    for _, check, route in merged:
        out.append((check, route))
        if check is None:
            break
    return tuple(out)


def compile_virtual_host(vhost: VirtualHost) -> VHostMatcher:
    """The function finding `vhost`'s first matching route for a request (None: no route)."""
    if not vhost.routes:
        return lambda request: None
    reachable = _reachable(vhost.routes)
    kinds = {path_condition(route.match)[0] for route in reachable}
    if len(reachable) <= SCAN_UP_TO and REGEX not in kinds:  # a few cheap predicates beat the index's lookups
        return _scan(tuple((compile_match(r.match), r) for r in reachable), needs_path=EXACT in kinds)
    general: list[_Entry] = []
    exact: dict[str, list[_Entry]] = {}
    prefixes: dict[str, list[_Entry]] = {}
    for index, route in enumerate(reachable):
        kind, value = path_condition(route.match)
        if kind == EXACT:
            if "?" not in value:  # the path it is compared with never has one: it cannot match
                exact.setdefault(value, []).append((index, compile_conditions(route.match), route))
        elif kind == PREFIX and "?" not in value:
            prefixes.setdefault(value, []).append((index, compile_conditions(route.match), route))
        elif kind == REGEX and literal_prefix(value):  # only paths with that prefix can match: still test the regex
            prefixes.setdefault(literal_prefix(value), []).append((index, compile_match(route.match), route))
        else:
            general.append((index, compile_match(route.match), route))

    fallback = _candidates(general)
    if not exact and not prefixes:
        return _scan(fallback, needs_path=REGEX in kinds)

    def chain(path: str) -> list[_Entry]:
        """The prefix routes whose prefix `path` starts with."""
        return [e for prefix, group in prefixes.items() if path.startswith(prefix) for e in group]

    by_prefix = {prefix: _candidates(general, chain(prefix)) for prefix in prefixes}
    by_exact = {path: _candidates(general, group, chain(path)) for path, group in exact.items()}
    lengths = tuple(sorted({len(p) for p in prefixes}, reverse=True))
    if not by_exact and REGEX not in kinds:
        # no predicate reads the path without its query, and no key holds a "?": look the
        # prefixes up in the path as received
        return _prefixes_only(by_prefix, lengths, fallback)
    return _indexed(by_exact, by_prefix, lengths, fallback)


def _reachable(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """`routes` up to the first one that matches every request (those after it can never win)."""
    for index, route in enumerate(routes):
        if matches_everything(route.match):
            return routes[:index + 1]
    return routes


def _scan(candidates: _Candidates, needs_path: bool) -> VHostMatcher:
    """No indexed route: test the general routes in order."""
    if not candidates:
        return lambda request: None
    if candidates[0][0] is None:
        only = candidates[0][1]
        return lambda request: only
    if not needs_path:

        def match(request: Any) -> Route | None:
            for check, route in candidates:
                if check is None or check(request, ""):
                    return route
            return None

        return match

    def match_with_path(request: Any) -> Route | None:
        path = request.path
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        for check, route in candidates:
            if check is None or check(request, path):
                return route
        return None

    return match_with_path


def _longest_prefix(path: str, lengths: tuple[int, ...], prefix_get: Any, fallback: _Candidates) -> _Candidates:
    """The candidates of the longest indexed prefix of `path` (`lengths` longest first), else `fallback`."""
    size = len(path)
    for length in lengths:  # longest first: the first hit is the longest prefix
        if length <= size:
            found = prefix_get(path[:length])
            if found is not None:
                return found
    return fallback


def _prefixes_only(by_prefix: dict[str, _Candidates], lengths: tuple[int, ...], fallback: _Candidates) -> VHostMatcher:
    prefix_get = by_prefix.get

    def match(request: Any) -> Route | None:
        path = request.path
        candidates = _longest_prefix(path, lengths, prefix_get, fallback)
        for check, route in candidates:
            if check is None or check(request, ""):
                return route
        return None

    return match


def _indexed(by_exact: dict[str, _Candidates], by_prefix: dict[str, _Candidates],
             lengths: tuple[int, ...], fallback: _Candidates) -> VHostMatcher:
    exact_get, prefix_get = by_exact.get, by_prefix.get

    def match(request: Any) -> Route | None:
        path = request.path
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        candidates = exact_get(path)
        if candidates is None:
            candidates = _longest_prefix(path, lengths, prefix_get, fallback)
        for check, route in candidates:
            if check is None or check(request, path):
                return route
        return None

    return match
