"""Compile a :class:`~knotwork.proxyconfig.RouteMatch` into a cheap predicate.

A predicate is ``check(request, path) -> bool`` where `path` is the request
path without its query string (computed once per request, and only when some
route of the virtual host needs it). A default match (prefix ``/`` and nothing
else) compiles to ``None``: it always matches and costs nothing.

Semantics follow Envoy's ``RouteMatch``:

- ``prefix`` is tested on the path *with* its query, as Envoy does; for a
  prefix without ``?`` that is the same as testing the path without it.
- ``path`` (exact) and ``regex`` (full match) are tested on the path without
  the query; a regex is compiled once, and only when the route has one.
- header matches read pseudo-headers ``:method``, ``:authority`` and ``:path``
  from the request; a missing header never matches a value (exact, prefix,
  regex) and ``present: false`` means "absent". ``invert`` negates the result,
  so an inverted value match *does* match a missing header.
- query matches use the first value of the parameter, undecoded.
- ``source_labels`` must all be among the calling workload's labels.
- ``port`` is the authority's port, else the port the request arrived on.

The router files each route by its :func:`path_condition` (see
:mod:`knotwork_routing.routeindex`) and, where the index already vouches for
the path, tests only :func:`compile_conditions`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from knotwork.proxyconfig import HeaderMatch, RouteMatch

__all__ = ["ANY", "EXACT", "PREFIX", "REGEX", "Predicate", "compile_conditions", "compile_match", "literal_prefix",
           "matches_everything", "path_condition"]

#: ``check(request, path_without_query) -> bool``
Predicate = Callable[[Any, str], bool]
#: ``get(request) -> value or None`` for one header or pseudo-header
_Getter = Callable[[Any], "str | None"]
#: ``test(value) -> bool`` for a present value
_ValueTest = Callable[[str], bool]

_PSEUDO: dict[str, _Getter] = {
    ":method": lambda request: request.method,
    ":authority": lambda request: request.authority,
    ":path": lambda request: request.path,
}


#: The path condition of a match: none, exact path, string prefix, regex.
ANY, EXACT, PREFIX, REGEX = "any", "exact", "prefix", "regex"


def path_condition(match: RouteMatch) -> tuple[str, str]:
    """`match`'s path condition as ``(kind, value)``: ``(ANY, "")`` when it has none
    (no prefix, or an empty or ``/`` prefix), else ``(EXACT | REGEX | PREFIX, value)``,
    in that precedence (the compiler sets one of them)."""
    if match.path is not None:
        return EXACT, match.path
    if match.regex is not None:
        return REGEX, match.regex
    if match.prefix not in (None, "", "/"):
        return PREFIX, match.prefix
    return ANY, ""


_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")
_QUANTIFIERS = frozenset("*+?{")


def literal_prefix(pattern: str) -> str:
    """A string every path the regex `pattern` fully matches starts with ("" when unknown).

    Conservative: the literal characters before the first special one, less the
    last when a quantifier follows it; nothing for a pattern with an alternation.
    """
    if "|" in pattern:
        return ""
    end = 0
    while end < len(pattern) and pattern[end] not in _REGEX_SPECIAL:
        end += 1
    if end < len(pattern) and pattern[end] in _QUANTIFIERS:
        end -= 1
    return pattern[:max(end, 0)]


def matches_everything(match: RouteMatch) -> bool:
    """True when `match` accepts every request: no path condition and nothing else."""
    return (path_condition(match)[0] == ANY and not match.headers and not match.query
            and not match.source_labels and match.port is None)


def compile_conditions(match: RouteMatch) -> Predicate | None:
    """The predicate for everything in `match` but its path condition (headers,
    query, source labels, port), or None when there is nothing else to check."""
    checks: list[Predicate] = [_header(h) for h in match.headers]
    if match.query:
        checks.append(_query(match.query))
    if match.source_labels:
        checks.append(_source_labels(match.source_labels))
    if match.port is not None:
        checks.append(_port(match.port))
    return _all(tuple(checks)) if checks else None


def compile_match(match: RouteMatch) -> Predicate | None:
    """The predicate for `match`, or None when it matches every request."""
    kind, value = path_condition(match)
    rest = compile_conditions(match)
    if kind == ANY:
        return rest
    path_check = {EXACT: _exact_path, REGEX: _regex_path, PREFIX: _prefix}[kind](value)
    return path_check if rest is None else _all((path_check, rest))


def _all(checks: tuple[Predicate, ...]) -> Predicate:
    if len(checks) == 1:
        return checks[0]

    def check(request: Any, path: str) -> bool:
        # a plain loop, not all(<generator>): no allocation per request
        for one in checks:
            if not one(request, path):
                return False
        return True

    return check


# ── path ────────────────────────────────────────────────────────────────────


def _prefix(prefix: str) -> Predicate:
    return lambda request, path: request.path.startswith(prefix)


def _exact_path(expected: str) -> Predicate:
    return lambda request, path: path == expected


def _regex_path(pattern: str) -> Predicate:
    fullmatch = re.compile(pattern).fullmatch
    return lambda request, path: fullmatch(path) is not None


# ── headers and query parameters ────────────────────────────────────────────


def value_test(m: HeaderMatch) -> _ValueTest | None:
    """How a present value is tested: exact, prefix or regex; None for a presence match."""
    if m.exact is not None:
        expected = m.exact
        return lambda value: value == expected
    if m.prefix is not None:
        prefix = m.prefix
        return lambda value: value.startswith(prefix)
    if m.regex is not None:
        fullmatch = re.compile(m.regex).fullmatch
        return lambda value: fullmatch(value) is not None
    return None


def _combine(get: _Getter, m: HeaderMatch) -> Predicate:
    """A predicate from a value getter and a HeaderMatch's test, presence and invert."""
    test, invert = value_test(m), m.invert
    if test is None:
        want_present = m.present is not False  # present: true or unspecified
        return lambda request, path: ((get(request) is not None) is want_present) is not invert

    def check(request: Any, path: str) -> bool:
        value = get(request)
        return (value is not None and test(value)) is not invert

    return check


def _header(m: HeaderMatch) -> Predicate:
    name = m.name.lower()
    get = _PSEUDO.get(name)
    if get is None:
        return _combine(lambda request: request.header(name), m)
    return _combine(get, m)


def query_value(path: str, name: str) -> str | None:
    """The first value of query parameter `name` in `path` (undecoded), or None.

    A parameter without ``=`` has the empty value.
    """
    q = path.find("?")
    if q < 0:
        return None
    for pair in path[q + 1:].split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def _query_getter(name: str) -> _Getter:
    return lambda request: query_value(request.path, name)


def _query(matches: tuple[HeaderMatch, ...]) -> Predicate:
    return _all(tuple(_combine(_query_getter(m.name), m) for m in matches))


# ── caller and port ─────────────────────────────────────────────────────────


def _source_labels(labels: Mapping[str, str]) -> Predicate:
    items = tuple(labels.items())

    def check(request: Any, path: str) -> bool:
        have = request.source_labels
        for key, value in items:  # a plain loop: no generator per request
            if have.get(key) != value:
                return False
        return True

    return check


def request_port(request: Any) -> int | None:
    """The port a request is addressed to: the authority's, else the local port."""
    host, sep, port = request.authority.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return int(port)
    try:
        return int(request.connection.local_address[1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _port(expected: int) -> Predicate:
    return lambda request, path: request_port(request) == expected
