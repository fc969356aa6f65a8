"""The ``telemetry`` compiler: every listener's sink chain and :class:`~knotwork.proxyconfig.Observability`.

Runs in the ``telemetry`` area, after the networking compiler made the
listeners, and writes only its slots ``listeners.telemetry`` and
``listeners.observability``:

- *reporter*: inbound listeners report as ``destination`` (Istio's server
  side), outbound, ``http_proxy`` and gateway listeners as ``source`` (the
  client side);
- *workload*: this proxy's own — node workload and namespace, labels ``app``
  and ``version``, its SPIFFE ID;
- *service* (inbound): the served service's FQDN, from the inbound cluster;
- *naming*, *access_log*, *tracing* from the mesh file's ``mesh.telemetry``,
  then the Telemetry resources (:mod:`knotwork_telemetry.telemetryapi`);
- *chain*: the mesh's telemetry sinks (``plugins.telemetry``) less
  ``access-log`` where access logging is off and ``metrics`` where every
  metric is disabled; a metric disabled alone is named in
  ``Observability.disabled_metrics``.

Tracing is None only when the mesh has no ``tracing_endpoint`` or a
Telemetry sets ``disableSpanReporting``; a 0 % sampling still honours the
callers' decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knotwork.proxyconfig import Observability, PeerInfo, Tracing

from ._hooks import SLOTS
from .naming import METRICS
from .telemetryapi import Effective, Telemetries

if TYPE_CHECKING:
    from knotwork.proxyconfig import Listener, SnapshotBuilder
    from knotwork.records import CompileInput

__all__ = ["SLOTS", "compile_telemetry", "node_peer"]

_UNKNOWN = "unknown"


def node_peer(inp: CompileInput) -> PeerInfo:
    """This proxy's workload as telemetry labels it."""
    node, labels = inp.node, inp.node.labels
    return PeerInfo(
        workload=node.workload or _UNKNOWN, namespace=node.namespace or _UNKNOWN,
        app=labels.get("app") or labels.get("app.kubernetes.io/name") or _UNKNOWN,
        version=labels.get("version") or labels.get("app.kubernetes.io/version") or _UNKNOWN,
        principal=node.identity or _UNKNOWN,
    )


def compile_telemetry(builder: SnapshotBuilder, inp: CompileInput) -> None:
    """Set the telemetry chain and observability of every listener of the proxy."""
    policies = Telemetries(inp.resources.get("Telemetry", ()), inp.mesh)  # validated even without listeners
    listeners = builder.all("listeners")
    if not listeners:
        return
    node = inp.node
    workload = node_peer(inp)
    chain = tuple(inp.selection.get("telemetry", ()) or ())
    sides = {side: policies.effective(node.namespace, node.labels, side) for side in ("CLIENT", "SERVER")}
    service_name = f"{workload.app if workload.app != _UNKNOWN else workload.workload}.{workload.namespace}"
    for listener in listeners:
        inbound = listener.mode == "inbound"
        obs = _observability(inp, sides["SERVER" if inbound else "CLIENT"], workload, service_name,
                             _served(builder, listener) if inbound else "", inbound)
        names = tuple(n for n in chain
                      if not (n == "metrics" and not obs.metrics) and not (n == "access-log" and not obs.access_log))
        builder.set("listeners", listener.name, "telemetry", names)
        builder.set("listeners", listener.name, "observability", obs)


def _observability(inp: CompileInput, eff: Effective, workload: PeerInfo, service_name: str, service: str,
                   inbound: bool) -> Observability:
    mesh = inp.mesh.telemetry
    tracing = None
    if mesh.tracing_endpoint and not eff.disable_span_reporting:
        tracing = Tracing(sampling=eff.sampling if eff.sampling is not None else float(mesh.tracing_sampling),
                          endpoint=mesh.tracing_endpoint, service=service_name, custom_tags=eff.custom_tags)
    return Observability(
        reporter="destination" if inbound else "source", workload=workload, service=service,
        metrics=eff.metrics, naming=str(getattr(mesh.metric_names, "value", mesh.metric_names)),
        tag_overrides=eff.tag_overrides,
        disabled_metrics=tuple(m for m in METRICS if m in eff.disabled_metrics) if eff.metrics else (),
        access_log=eff.access_log if eff.access_log is not None else mesh.access_log,
        tracing=tracing,
    )


def _served(builder: SnapshotBuilder, listener: Listener) -> str:
    """The service FQDN an inbound listener serves: its (first) cluster's."""
    names: list[str] = [listener.cluster] if listener.cluster else [w.cluster for w in listener.weighted_clusters]
    if not names and listener.route_table:
        table = builder.get("routes", listener.route_table)
        names = list(table.referenced_clusters()) if table is not None else []
    for name in names:
        cluster = builder.get("clusters", name)
        if cluster is not None and cluster.service:
            return str(cluster.service)
    return ""
