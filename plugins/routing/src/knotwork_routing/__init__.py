"""Knotwork plugin `routing`: the networking compiler and the ``host`` router.

The compiler (:func:`compile_proxy`) turns services, endpoints and Istio
networking resources (VirtualService, DestinationRule subsets, Gateway) into
one proxy's listeners, route tables, clusters and endpoint sets. The router
(:class:`HostRouter`) matches requests against a compiled route table.
"""

from .compile import SLOTS, compile_proxy
from .durations import parse_duration
from .errors import ResourceError
from .router import HostRouter

__all__ = ["SLOTS", "HostRouter", "ResourceError", "compile_proxy", "parse_duration"]
