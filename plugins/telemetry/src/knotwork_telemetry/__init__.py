"""Knotwork plugin `telemetry`: Istio's standard metrics, JSON access logs and the Telemetry API.

:class:`~knotwork_telemetry.metrics.MetricsSink` and
:class:`~knotwork_telemetry.accesslog.AccessLogSink` are the strategy
factories engines call per listener (``factory(listener, settings)``);
:func:`~knotwork_telemetry.compile.compile_telemetry` is the compiler that
fills ``Listener.telemetry`` and ``Listener.observability``. The modules
are imported on first use (see ``_hooks``).
"""

__all__: list[str] = []
