"""Knotwork's `files` config source: Istio resources from the mesh's ``config/``
folder and from ``knotwork apply`` / ``knotwork delete``."""

from importlib import import_module
from typing import Any

from .settings import FilesSettings

__all__ = ["ConfigError", "FilesSettings", "FilesSource", "Store", "parse_resources"]

#: Imported on first use (the YAML parser, the Istio schemas, grpclib's server):
#: loading the plugin (`_hooks`) must stay cheap for every `knotwork` command.
_LAZY = {"ConfigError": ".parse", "parse_resources": ".parse", "FilesSource": ".source", "Store": ".store"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
