"""Errors naming the Telemetry resource and field at fault, and warnings for what is ignored."""

from __future__ import annotations

import structlog
from knotwork.model import ResourceError, WarnOnce, field_path

__all__ = ["TelemetryError", "field_path", "warn_ignored"]

log = structlog.get_logger().bind(plugin="telemetry")

#: Log an event once per resource and field.
warn_ignored = WarnOnce(log)


class TelemetryError(ResourceError):
    """A Telemetry resource the compiler cannot translate:
    ``plugin/telemetry: Telemetry/ns/name (file:line): spec.field: problem``.
    The config source's trial compile reports it and ``knotwork apply`` refuses the change whole.
    """

    plugin = "telemetry"
