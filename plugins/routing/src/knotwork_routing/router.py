"""The ``host`` router: a compiled route table (see :class:`knotwork.protocols.Router`).

Built once per route table. Per request, the virtual host is found like
Envoy does, then its routes are tried in order and the first match wins:

1. exact domain, by dict: the authority as received, then without its port;
2. suffix wildcards (``*.example.com``), longest first, on the authority then
   on the host without port; the wildcard matches at least one character;
3. prefix wildcards (``example.*``), longest first, the same way;
4. ``*``.

Domains are compared lower-case (the engine gives the authority lower-case).
Authorities resolved by steps 2-4 are remembered in a small cache (cleared
when full, so clients sending random hosts cannot grow it).
Each route is compiled once (:mod:`knotwork_routing.matching`); a virtual host
whose first route matches everything answers without looking at the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from knotwork.proxyconfig import Route, RouteTable, VirtualHost

from .matching import compile_match, needs_path

__all__ = ["HostRouter", "compile_virtual_host", "strip_port"]

#: ``match(request) -> Route | None`` for one virtual host
VHostMatcher = Callable[[Any], "Route | None"]
#: At most this many authorities resolved by wildcard or ``*`` are remembered.
CACHE_SIZE = 1024


def strip_port(authority: str) -> str:
    """The authority without a trailing ``:port`` (IPv6 literals keep their brackets)."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host
    return authority


def compile_virtual_host(vhost: VirtualHost) -> VHostMatcher:
    """One function trying `vhost`'s routes in order; the first match wins."""
    entries = tuple((compile_match(route.match), route) for route in vhost.routes)
    if not entries:
        return lambda request: None
    if entries[0][0] is None:  # the first route matches everything
        only = entries[0][1]
        return lambda request: only
    if not any(needs_path(route.match) for route in vhost.routes):

        def match(request: Any) -> Route | None:
            for check, route in entries:
                if check is None or check(request, ""):
                    return route
            return None

        return match

    def match_with_path(request: Any) -> Route | None:
        path = request.path
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        for check, route in entries:
            if check is None or check(request, path):
                return route
        return None

    return match_with_path


class HostRouter:
    """Matches requests against one compiled :class:`RouteTable`.

    Raises ValueError at construction when two virtual hosts claim one
    domain, or a domain's wildcard is not leading, trailing or alone.
    """

    __slots__ = ("_cache", "_exact", "_prefixes", "_star", "_suffixes", "name")

    def __init__(self, table: RouteTable, settings: Any = None) -> None:
        self.name = table.name
        self._exact: dict[str, VHostMatcher] = {}
        self._cache: dict[str, VHostMatcher] = {}
        suffixes: dict[str, VHostMatcher] = {}
        prefixes: dict[str, VHostMatcher] = {}
        self._star: VHostMatcher | None = None
        seen: dict[str, str] = {}
        for vhost in table.virtual_hosts:
            matcher = compile_virtual_host(vhost)
            for domain in vhost.domains:
                domain = domain.lower()
                if domain in seen:
                    raise ValueError(
                        f"route table {table.name!r}: domain {domain!r} is in virtual hosts "
                        f"{seen[domain]!r} and {vhost.name!r}"
                    )
                seen[domain] = vhost.name
                if domain == "*":
                    self._star = matcher
                elif "*" not in domain:
                    self._exact[domain] = matcher
                elif domain.startswith("*") and "*" not in domain[1:]:
                    suffixes[domain[1:]] = matcher
                elif domain.endswith("*") and "*" not in domain[:-1]:
                    prefixes[domain[:-1]] = matcher
                else:
                    raise ValueError(f"route table {table.name!r}: bad wildcard domain {domain!r} in {vhost.name!r}")
        self._suffixes = tuple(sorted(suffixes.items(), key=lambda kv: -len(kv[0])))
        self._prefixes = tuple(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))

    def match(self, request: Any) -> Route | None:
        """The first matching route of the request's virtual host, or None (404, flag NR)."""
        authority = request.authority
        vhost = self._exact.get(authority) or self._cache.get(authority)
        if vhost is None:
            vhost = self._find_slow(authority)
            if vhost is None:
                return None
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[authority] = vhost
        return vhost(request)

    def virtual_host(self, authority: str) -> VHostMatcher | None:
        """The compiled virtual host serving `authority` (lower-case), or None."""
        return self._exact.get(authority) or self._find_slow(authority)

    def _find_slow(self, authority: str) -> VHostMatcher | None:
        host = strip_port(authority)
        if host is not authority:
            found = self._exact.get(host)
            if found is not None:
                return found
        for suffix, matcher in self._suffixes:
            if len(authority) > len(suffix) and authority.endswith(suffix):
                return matcher
        if host is not authority:
            for suffix, matcher in self._suffixes:
                if len(host) > len(suffix) and host.endswith(suffix):
                    return matcher
        for prefix, matcher in self._prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return matcher
        return self._star
