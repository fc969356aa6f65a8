"""Knotwork's `files` config source: Istio resources from the mesh's ``config/``
folder and from ``knotwork apply`` / ``knotwork delete``."""

from .parse import ConfigError, parse_resources
from .settings import FilesSettings
from .source import FilesSource
from .store import Store

__all__ = ["ConfigError", "FilesSettings", "FilesSource", "Store", "parse_resources"]
