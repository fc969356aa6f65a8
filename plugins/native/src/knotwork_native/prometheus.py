"""Admin ``GET /stats/prometheus``: the process's Prometheus registry and the engine's own counters.

The registry (``prometheus_client.REGISTRY``) carries what telemetry sinks
collect (the ``metrics`` sink's ``knotwork_requests_total`` or Istio's names);
the engine's counters of ``/stats`` follow as ``knotwork_proxy_*`` families.
Rendered off the request path, when scraped.
"""

from __future__ import annotations

from typing import Any

import prometheus_client

__all__ = ["CONTENT_TYPE", "render"]

#: The Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "knotwork_proxy_"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
    if kind == "counter" and not name.endswith("_total"):
        name += "_total"
    lines.append(f"# HELP {PREFIX}{name} {help_text}")
    lines.append(f"# TYPE {PREFIX}{name} {kind}")
    lines += [f"{PREFIX}{name}{labels} {value}" for labels, value in samples]


_OWN = frozenset({"downstream_rq_total", "downstream_rq_active", "responses_total", "response_flags_total",
                  "upstream_cx_idle", "cluster_upstream_rq_total", "cluster_endpoints_healthy"})


def engine_text(dp: Any) -> str:
    """The data plane's counters (``/stats``) in the Prometheus text format (counters end in ``_total``,
    connections open now are gauges)."""
    lines: list[str] = []
    shared = dp.shared
    for key, value in sorted(dp.stats.items()):
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
        kind = "gauge" if name.endswith("_active") else "counter"
        if (name if kind == "gauge" or name.endswith("_total") else name + "_total") in _OWN:
            continue
        _family(lines, name, kind, f"native engine counter {key}", [("", value)])
    _family(lines, "downstream_rq_total", "counter", "requests served", [("", shared.requests)])
    _family(lines, "downstream_rq_active", "gauge", "requests in flight", [("", shared.inflight)])
    _family(lines, "responses_total", "counter", "responses by status class",
            [(f'{{response_code_class="{i}xx"}}', n) for i, n in enumerate(shared.codes) if i])
    _family(lines, "response_flags_total", "counter", "requests and connections by Envoy response flag",
            [(f'{{flag="{_label(k)}"}}', v) for k, v in sorted(shared.flag_counts.items())])
    _family(lines, "upstream_cx_idle", "gauge", "pooled idle upstream connections", [("", dp.pools.idle_count())])
    rt = dp.runtime
    clusters = sorted((rt.clusters if rt is not None else {}).items())
    _family(lines, "cluster_upstream_rq_total", "counter", "requests routed to a cluster",
            [(f'{{cluster="{_label(name)}"}}', crt.rq_total) for name, crt in clusters])
    _family(lines, "cluster_endpoints_healthy", "gauge", "healthy endpoints of a cluster",
            [(f'{{cluster="{_label(name)}"}}', crt.healthy) for name, crt in clusters])
    return "\n".join(lines) + "\n"


def render(dp: Any) -> bytes:
    """``generate_latest(REGISTRY)`` followed by the engine's ``knotwork_proxy_*`` families."""
    return prometheus_client.generate_latest(prometheus_client.REGISTRY) + engine_text(dp).encode()
