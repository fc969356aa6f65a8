"""Errors naming the resource and field at fault, and warnings for what is not supported yet."""

from __future__ import annotations

import structlog
from knotwork import Resource

__all__ = ["ResourceError", "field_path", "warn_ignored", "warn_unsupported"]

log = structlog.get_logger().bind(plugin="routing")

#: (resource key, field) already warned about; bounded so it cannot grow forever.
_WARNED: set[tuple[tuple[str, str, str], str]] = set()
_MAX_WARNED = 1000


class ResourceError(ValueError):
    """A resource the compiler cannot translate: ``plugin/routing: Kind/ns/name (file:line): field: problem``."""

    def __init__(self, resource: Resource, field: str, problem: str) -> None:
        where = f" ({resource.source})" if str(resource.source) else ""
        super().__init__(f"plugin/routing: {resource}{where}: {field}: {problem}")
        self.resource, self.field, self.problem = resource, field, problem


def field_path(*parts: str | int) -> str:
    """``spec.http[0].route[1]`` from ``("spec", "http", 0, "route", 1)``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def warn_unsupported(resource: Resource, field: str) -> None:
    """Log once per resource and field that a field is ignored (not supported yet)."""
    warn_ignored(resource, field, "field not supported yet, ignored")


def warn_ignored(resource: Resource, field: str, event: str) -> None:
    """Log `event` once per resource and field (a field, or a whole resource, that has no effect)."""
    key = (resource.key, field)
    if key in _WARNED:
        return
    if len(_WARNED) >= _MAX_WARNED:
        _WARNED.clear()
    _WARNED.add(key)
    log.warning(event, resource=str(resource), field=field, source=str(resource.source))
