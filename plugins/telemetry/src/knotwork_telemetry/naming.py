"""The two namings of the standard metrics: Knotwork's base units, or Istio's exact names and buckets.

Istio's sidecars record ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes`` with Envoy's default
histogram buckets (``HistogramSettingsImpl::defaultBuckets()``; Istio's
bootstrap sets no ``histogram_bucket_settings`` unless a pod asks), written
the way Envoy writes them (``le="0.5"``, ``le="1"``, …, ``le="3600000"``), so
dashboards and alerts written for Istio read Knotwork's series unchanged.
The ``knotwork`` naming uses seconds and bytes (STYLE: base units) and the
same duration bounds divided by 1000.
"""

from __future__ import annotations

import attrs

__all__ = ["ENVOY_DEFAULT_BUCKETS", "METRICS", "NAMINGS", "Naming"]

#: Envoy's default histogram bounds, which Istio's request duration (ms) and size (bytes) histograms use.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
)
_KNOTWORK_SECONDS = tuple(b / 1000 for b in ENVOY_DEFAULT_BUCKETS)
_KNOTWORK_BYTES: tuple[float, ...] = tuple(float(10 ** i) for i in range(9))  # 1 B … 100 MB

#: The Telemetry API's metric selectors, in exposition order.
METRICS = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
           "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES")


def _envoy_le(bound: float) -> str:
    return format(bound, ".32g")  # Envoy's "{:.32g}": 0.5, 1, 3600000


@attrs.frozen
class Naming:
    """Metric names by Telemetry API selector (counters without ``_total``), the duration unit and buckets."""

    names: dict[str, str]
    help: dict[str, str]
    duration_scale: float  # seconds → the duration unit
    duration_bounds: tuple[float, ...]
    bytes_bounds: tuple[float, ...]
    envoy_le: bool  # write `le` as Envoy does

    def le(self, bounds: tuple[float, ...]) -> tuple[str, ...] | None:
        return tuple(_envoy_le(b) for b in bounds) if self.envoy_le else None


def _naming(prefix: str, duration: str, scale: float, duration_bounds: tuple[float, ...],
            bytes_bounds: tuple[float, ...], envoy_le: bool) -> Naming:
    names = {
        "REQUEST_COUNT": f"{prefix}_requests",
        "REQUEST_DURATION": f"{prefix}_request_duration_{duration}",
        "REQUEST_SIZE": f"{prefix}_request_bytes",
        "RESPONSE_SIZE": f"{prefix}_response_bytes",
        "TCP_OPENED_CONNECTIONS": f"{prefix}_tcp_connections_opened",
        "TCP_CLOSED_CONNECTIONS": f"{prefix}_tcp_connections_closed",
        "TCP_SENT_BYTES": f"{prefix}_tcp_sent_bytes",
        "TCP_RECEIVED_BYTES": f"{prefix}_tcp_received_bytes",
    }
    help = {
        "REQUEST_COUNT": "Requests a proxy handled (Istio's REQUEST_COUNT).",
        "REQUEST_DURATION": f"Request duration in {duration}, from the request's headers to the response's end.",
        "REQUEST_SIZE": "Request size in bytes, as the proxy received it.",
        "RESPONSE_SIZE": "Response size in bytes, as the proxy sent it.",
        "TCP_OPENED_CONNECTIONS": "TCP connections opened (Istio's TCP_OPENED_CONNECTIONS).",
        "TCP_CLOSED_CONNECTIONS": "TCP connections closed (Istio's TCP_CLOSED_CONNECTIONS).",
        "TCP_SENT_BYTES": "Bytes sent to the downstream of TCP connections, counted at close.",
        "TCP_RECEIVED_BYTES": "Bytes received from the downstream of TCP connections, counted at close.",
    }
    return Naming(names, help, scale, duration_bounds, bytes_bounds, envoy_le)


NAMINGS: dict[str, Naming] = {
    "knotwork": _naming("knotwork", "seconds", 1.0, _KNOTWORK_SECONDS, _KNOTWORK_BYTES, False),
    "istio": _naming("istio", "milliseconds", 1000.0, ENVOY_DEFAULT_BUCKETS, ENVOY_DEFAULT_BUCKETS, True),
}
