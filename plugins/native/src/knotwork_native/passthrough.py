"""Clusters whose destination is the one the request names: resolution ``passthrough``.

Istio's ``PassthroughCluster`` (outboundTrafficPolicy ALLOW_ANY) and
ServiceEntry resolution ``NONE``: there are no endpoints; each request (or
``CONNECT`` tunnel) goes to the host and port of its authority — port 80
when the authority has none, as Envoy's dynamic forward proxy does. Names
are resolved when the connection is opened (asyncio's ``create_connection``),
so ``dns`` clusters need nothing special on this engine: their endpoints'
names are resolved the same way.
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import LbEndpoint

__all__ = ["DEFAULT_PORT", "PassthroughBalancer", "split_authority"]

DEFAULT_PORT = 80
#: Endpoints remembered per authority; cleared when full, so random hosts cannot grow it.
CACHE_SIZE = 1024


def split_authority(authority: str, default_port: int = DEFAULT_PORT) -> tuple[str, int] | None:
    """``host[:port]`` (IPv6 literals in brackets) as (host, port); None when it names no host."""
    host, port = authority, default_port
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    else:
        name, sep, text = authority.rpartition(":")
        if sep:
            if not text.isdigit() or ":" in name:
                return None
            host, port = name, int(text)
    if not host or not 0 < port < 65536:
        return None
    return host, port


class PassthroughBalancer:
    """The "balancer" of a passthrough cluster: the request's authority is its only endpoint."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, LbEndpoint | None] = {}

    def update(self, endpoints: Any) -> None:
        """Nothing to keep: a passthrough cluster has no endpoints."""

    def pick(self, request: Any, exclude: Any = None) -> LbEndpoint | None:
        authority = request.authority
        cache = self._cache
        try:
            return cache[authority]
        except KeyError:
            pass
        found = split_authority(authority)
        ep = LbEndpoint(address=found[0], port=found[1]) if found is not None else None
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[authority] = ep
        return ep
