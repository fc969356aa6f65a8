"""Knotwork plugin `routing`: the networking compiler and the ``host`` router.

The compiler (:func:`compile_proxy`) turns services, endpoints and Istio
networking resources (VirtualService, DestinationRule subsets, Gateway) into
one proxy's listeners, route tables, clusters and endpoint sets. The router
(:class:`HostRouter`) matches requests against a compiled route table.
"""

from importlib import import_module
from typing import Any

from .durations import parse_duration
from .errors import ResourceError
from .slots import SLOTS

__all__ = ["SLOTS", "HostRouter", "ResourceError", "compile_proxy", "parse_duration"]


#: Imported on first use (the compiler needs ``cryptography``, the router the
#: kernel's proxy config types): loading the plugin (`_hooks`) must stay cheap.
_LAZY = {"compile_proxy": ".compile", "HostRouter": ".router"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
