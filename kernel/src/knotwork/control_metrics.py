"""The control plane's own metrics (``knotwork_control_*``) and the HTTP endpoint that serves them.

:class:`ControlMetrics` is a ``prometheus_client`` collector that reads, at
scrape time, the plain counters a :class:`~knotwork.control.ControlPlane`
keeps; :func:`serve_metrics` answers ``GET /metrics``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketAttribute, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from .distribution import LATENCY_BUCKETS
from .proxyconfig import TYPE_ORDER
from .wire import parse_address

if TYPE_CHECKING:
    from .control import ControlPlane

__all__ = ["ControlMetrics", "serve_metrics"]


class ControlMetrics:
    """A ``prometheus_client`` collector of one control plane, read at scrape time from the plain
    counters the control plane, its :class:`~knotwork.distribution.SnapshotCache` (each node's
    :class:`~knotwork.distribution.StreamStatus`) and its certificate service keep.

    ===============================================  =========  ===============================  ===============================================
    metric                                           type       labels                           Istio's nearest
    ===============================================  =========  ===============================  ===============================================
    ``knotwork_control_connected_proxies``           gauge      engine, type (sidecar, gateway)  ``pilot_xds``
    ``knotwork_control_pushes_total``                counter    type (clusters, endpoints, …)    ``pilot_xds_pushes`` (type cds, eds, …)
    ``knotwork_control_push_latency_seconds``        histogram  —                                ``pilot_proxy_convergence_time``
    ``knotwork_control_nacks_total``                 counter    type                             ``pilot_total_xds_rejects``
    ``knotwork_control_config_rejections_total``     counter    source                           ``galley_validation_failed``
    ``knotwork_control_compile_errors_total``        counter    —                                ``pilot_total_xds_internal_errors``
    ``knotwork_control_config_publishes_total``      counter    —                                ``pilot_push_triggers``
    ``knotwork_control_certificates_issued_total``   counter    kind (bootstrap, renewal)        ``citadel_server_success_cert_issue_count``
    ``knotwork_control_certificate_refusals_total``  counter    reason (gRPC status name)        ``citadel_server_csr_parsing_err_count``,
                                                                                                 ``citadel_server_authentication_failure_count``
    ``knotwork_control_platform_snapshots_total``    counter    source                           —
    ``knotwork_control_registry_events_total``       counter    type (services, endpoints,       ``pilot_k8s_reg_events``,
                                                                configs), event (add,            ``pilot_k8s_cfg_events``
                                                                update, delete)
    ``knotwork_control_services``                    gauge      —                                ``pilot_services``
    ``knotwork_control_endpoints``                   gauge      —                                —
    ===============================================  =========  ===============================  ===============================================

    Push latency: from a proxy's new snapshot being stored after its compile (or
    the proxy's request for a type, when that came later, as on connect) to the
    proxy's ACK of the push, per pushed type. Config rejections: changes a config
    source refused whole — a file that does not parse, a resource its schema
    refuses, a change the trial compile cannot translate (the source reports
    each through ``ComponentContext.rejected``). Compile errors: proxies whose
    compile failed while publishing (they keep their last good config).
    """

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    def collect(self) -> Iterator[Any]:
        c, prefix = self.control, "knotwork_control_"
        statuses = list(c.cache.status.values())
        kinds = {n.id: n.kind for p in c.sources.values() for n in p.proxies}
        connected = GaugeMetricFamily(prefix + "connected_proxies", "Proxies with a config stream open",
                                      labels=["engine", "type"])
        by_kind = Counter({k: 0 for k in kinds.values()})
        for node, streams in c.cache.connected.items():
            by_kind[kinds.get(node, node.partition("~")[0])] += streams
        for kind, count in sorted(by_kind.items()):
            connected.add_metric([c.mesh.plugins.engine, kind], count)
        yield connected
        pushes = CounterMetricFamily(prefix + "pushes", "Config responses sent to proxies", labels=["type"])
        nacks = CounterMetricFamily(prefix + "nacks", "Config responses rejected by proxies (NACK)", labels=["type"])
        for t in TYPE_ORDER:
            pushes.add_metric([t], sum(st.pushes.get(t, 0) for st in statuses))
            nacks.add_metric([t], sum(st.nacks.get(t, 0) for st in statuses))
        yield pushes
        yield nacks
        counts = [sum(st.latency.counts[i] for st in statuses) for i in range(len(LATENCY_BUCKETS) + 1)]
        cumulative, buckets = 0, []
        for bound, n in zip([*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"], counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(prefix + "push_latency_seconds", "From a proxy's compiled config change to its ACK",
                                    buckets=buckets, sum_value=sum(st.latency.sum for st in statuses))
        yield _counter(prefix + "config_rejections", "Config changes a config source refused whole",
                       "source", c.rejections)
        yield CounterMetricFamily(prefix + "compile_errors", "Proxy compiles that failed (the proxy keeps its last "
                                  "good config)", value=c.failed_compiles)
        yield CounterMetricFamily(prefix + "config_publishes", "Config versions published (some proxy's config "
                                  "changed)", value=c.pushes)
        service = c.certificates.service if c.certificates is not None else None
        issued = CounterMetricFamily(prefix + "certificates_issued", "Workload certificates signed", labels=["kind"])
        issued.add_metric(["bootstrap"], service.signed - service.renewed if service else 0)
        issued.add_metric(["renewal"], service.renewed if service else 0)
        yield issued
        yield _counter(prefix + "certificate_refusals", "Certificate requests refused", "reason",
                       service.refusals if service else {})
        yield _counter(prefix + "platform_snapshots", "Snapshots received from platforms and config sources",
                       "source", c.snapshots_received)
        events = CounterMetricFamily(prefix + "registry_events", "Services, endpoints and config resources added, "
                                     "updated or deleted by a source's snapshot", labels=["type", "event"])
        for kind in ("services", "endpoints", "configs"):
            for event in ("add", "update", "delete"):
                events.add_metric([kind, event], c.registry_events[(kind, event)])
        yield events
        yield GaugeMetricFamily(prefix + "services", "Services known", value=sum(len(p.services) for p in c.sources.values()))
        yield GaugeMetricFamily(prefix + "endpoints", "Endpoints known",
                                value=sum(len(p.endpoints) for p in c.sources.values()))


def _counter(name: str, documentation: str, label: str, values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


async def serve_metrics(registry: CollectorRegistry, listen: str, bound: Callable[[tuple[str, int]], None], *,
                        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on `listen` (``host:port``; port 0: a free one, passed to `bound`): `registry`
    in Prometheus text, or OpenMetrics when the scraper asks for it. One request per connection; 404
    elsewhere. Runs in the event loop, so collectors read the control plane's state without locks."""
    host, port = parse_address(listen)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound(listener.listeners[0].extra(SocketAttribute.local_address)[:2])
        task_status.started()
        await listener.serve(lambda stream: _http(registry, stream))


async def _http(registry: CollectorRegistry, stream: Any) -> None:
    async with stream:
        try:
            with anyio.fail_after(10):
                head = await BufferedByteReceiveStream(stream).receive_until(b"\r\n\r\n", 65536)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                status, ctype, body = _reply(registry, method, target.split("?", 1)[0], headers.get("accept", ""))
                await stream.send(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                                  % (status.encode(), ctype.encode(), len(body)) + (b"" if method == "HEAD" else body))
        except (anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.EndOfStream, anyio.BrokenResourceError,
                OSError, TimeoutError):
            pass  # a client gone or speaking something else: nothing to answer


def _reply(registry: CollectorRegistry, method: str, path: str, accept: str) -> tuple[str, str, bytes]:
    if method not in ("GET", "HEAD"):
        return "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET /metrics\n"
    if path != "/metrics":
        return "404 Not Found", "text/plain; charset=utf-8", b"not found: try /metrics\n"
    encode, ctype = choose_encoder(accept)
    return "200 OK", ctype, encode(registry)
