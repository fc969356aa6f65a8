"""Hook implementations of the `telemetry` plugin: the `metrics` and `access-log` sinks and the compiler.

The sinks (and prometheus_client) are imported when a proxy builds its
first listener, the compiler when the control plane compiles: every
`knotwork` command loads this module.
"""

from __future__ import annotations

from knotwork import Compiler, Strategy, hookimpl, lazy

ENGINES = frozenset({"native", "envoy"})
SLOTS = frozenset({"listeners.telemetry", "listeners.observability"})


@hookimpl
def knotwork_telemetry_sinks() -> list[Strategy]:
    """``metrics`` (Istio's standard metrics in prometheus_client's registry) and ``access-log`` (JSON lines)."""
    return [
        Strategy(
            name="metrics", factory=lazy("knotwork_telemetry.metrics:MetricsSink"), engines=ENGINES,
            description="Istio's standard request and TCP metrics with Istio's labels, for /stats/prometheus",
        ),
        Strategy(
            name="access-log", factory=lazy("knotwork_telemetry.accesslog:AccessLogSink"), engines=ENGINES,
            description="one JSON line per request and TCP connection on the proxy's stdout (log_type access)",
        ),
    ]


@hookimpl
def knotwork_compilers() -> list[Compiler]:
    """The ``telemetry`` compiler: every listener's sink chain and observability (mesh settings, Telemetry API)."""
    return [
        Compiler(
            name="telemetry", area="telemetry", slots=SLOTS,
            compile=lazy("knotwork_telemetry.compile:compile_telemetry"),
            description="mesh.telemetry and Telemetry (telemetry.istio.io) → each listener's telemetry chain "
                        "and observability (reporter, labels, naming, access log, tracing)",
        )
    ]
