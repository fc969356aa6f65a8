"""Errors naming the Telemetry resource and field at fault, and warnings for what is ignored."""

from __future__ import annotations

import structlog
from knotwork import Resource

__all__ = ["TelemetryError", "field_path", "warn_ignored"]

log = structlog.get_logger().bind(plugin="telemetry")

#: (resource key, field) already warned about; bounded so it cannot grow forever.
_WARNED: set[tuple[tuple[str, str, str], str]] = set()
_MAX_WARNED = 1000


class TelemetryError(ValueError):
    """A Telemetry resource the compiler cannot translate:
    ``plugin/telemetry: Telemetry/ns/name (file:line): spec.field: problem``.

    A ValueError, like the routing plugin's ``ResourceError``: the config
    source's trial compile reports it and ``knotwork apply`` refuses the
    change whole.
    """

    def __init__(self, resource: Resource, field: str, problem: str) -> None:
        where = f" ({resource.source})" if str(resource.source) else ""
        super().__init__(f"plugin/telemetry: {resource}{where}: {field}: {problem}")
        self.resource, self.field, self.problem = resource, field, problem


def field_path(*parts: str | int) -> str:
    """``spec.metrics[0].overrides[1]`` from ``("spec", "metrics", 0, "overrides", 1)``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def warn_ignored(resource: Resource, field: str, event: str = "field not supported yet, ignored") -> None:
    """Log `event` once per resource and field."""
    key = (resource.key, field)
    if key in _WARNED:
        return
    if len(_WARNED) >= _MAX_WARNED:
        _WARNED.clear()
    _WARNED.add(key)
    log.warning(event, resource=str(resource), field=field, source=str(resource.source))
