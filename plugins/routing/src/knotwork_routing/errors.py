"""Errors naming the resource and field at fault, and warnings for what is not supported yet."""

from __future__ import annotations

import structlog
from knotwork import Resource
from knotwork.model import ResourceError as _ResourceError
from knotwork.model import WarnOnce, field_path

__all__ = ["ResourceError", "field_path", "warn_ignored", "warn_unsupported"]

log = structlog.get_logger().bind(plugin="routing")

#: Log an event once per resource and field (a field, or a whole resource, that has no effect).
warn_ignored = WarnOnce(log)


class ResourceError(_ResourceError):
    """A resource the routing compilers cannot translate: ``plugin/routing: Kind/ns/name (file:line): field: problem``."""

    plugin = "routing"


def warn_unsupported(resource: Resource, field: str) -> None:
    """Log once per resource and field that a field is ignored (not supported yet)."""
    warn_ignored(resource, field, "field not supported yet, ignored")
