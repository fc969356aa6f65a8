"""The ``host`` router: a compiled route table (see :class:`knotwork.protocols.Router`).

Built once per route table; nothing is compiled per request. Per request, the
virtual host is found like Envoy does, by dict lookups, never by testing every
domain:

1. exact domain, by dict: the authority as received, then without its port;
2. suffix wildcards (``*.example.com``), longest first, on the authority then
   on the host without port; the wildcard matches at least one character.
   The suffixes sit in a dict, tried once per distinct suffix length;
3. prefix wildcards (``example.*``), longest first, the same way, on the host;
4. ``*``.

Domains are compared lower-case (the engine gives the authority lower-case).
Authorities resolved by steps 2-4 are remembered in a small cache (cleared
when full, so clients sending random hosts cannot grow it).
Within the virtual host the first matching route wins; it is found through a
per-path index of the routes (:mod:`knotwork_routing.routeindex`), so only the
routes whose path condition the request meets are tested, in order.
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import Route, RouteTable

from .routeindex import VHostMatcher, compile_virtual_host

__all__ = ["HostRouter", "compile_virtual_host", "strip_port"]

#: At most this many authorities resolved by wildcard or ``*`` are remembered.
CACHE_SIZE = 1024


def strip_port(authority: str) -> str:
    """The authority without a trailing ``:port`` (IPv6 literals keep their brackets)."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host
    return authority


def _longest_suffix(table: dict[str, VHostMatcher], lengths: tuple[int, ...], name: str) -> VHostMatcher | None:
    """The matcher of the longest suffix in `table` that `name` ends with, leaving ≥ 1 character."""
    size = len(name)
    for length in lengths:  # descending
        if length < size:
            found = table.get(name[size - length:])
            if found is not None:
                return found
    return None


def _longest_prefix(table: dict[str, VHostMatcher], lengths: tuple[int, ...], name: str) -> VHostMatcher | None:
    """The matcher of the longest prefix in `table` that `name` starts with, leaving ≥ 1 character."""
    size = len(name)
    for length in lengths:  # descending
        if length < size:
            found = table.get(name[:length])
            if found is not None:
                return found
    return None


class HostRouter:
    """Matches requests against one compiled :class:`RouteTable`.

    Raises ValueError at construction when two virtual hosts claim one
    domain, or a domain's wildcard is not leading, trailing or alone.
    """

    __slots__ = ("_cache", "_exact", "_prefix_lengths", "_prefixes", "_star", "_suffix_lengths", "_suffixes", "name")

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
        self._suffixes = suffixes
        self._suffix_lengths = tuple(sorted({len(s) for s in suffixes}, reverse=True))
        self._prefixes = prefixes
        self._prefix_lengths = tuple(sorted({len(p) for p in prefixes}, reverse=True))

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
        if self._suffixes:
            found = _longest_suffix(self._suffixes, self._suffix_lengths, authority)
            if found is None and host is not authority:
                found = _longest_suffix(self._suffixes, self._suffix_lengths, host)
            if found is not None:
                return found
        if self._prefixes:
            found = _longest_prefix(self._prefixes, self._prefix_lengths, host)
            if found is not None:
                return found
        return self._star
