"""What a sidecar does with a host no service or ServiceEntry names: Istio's ``outboundTrafficPolicy``.

The mode is the mesh file's ``mesh.outbound_traffic_policy`` (default
``ALLOW_ANY``), overridden per sidecar by the Sidecar resource that scopes it
(:func:`~knotwork_routing.sidecar.sidecar_for`) when that one sets
``outboundTrafficPolicy`` (an empty ``outboundTrafficPolicy`` means
``REGISTRY_ONLY``, the API's default value, as in Istio).

- ``ALLOW_ANY``: the ``outbound`` route table ends with a ``*`` virtual host
  ``allow_any`` sending everything to ``PassthroughCluster`` (resolution
  ``passthrough``: each request, or ``CONNECT`` tunnel, goes to the host and
  port it names);
- ``REGISTRY_ONLY``: there is no such virtual host, so the HTTP proxy
  listener answers an unknown host with 502 and flag ``NR`` (``CONNECT`` too).
"""

from __future__ import annotations

from collections.abc import Mapping

from knotwork import OutboundTrafficPolicy, ProxyNode
from knotwork.proxyconfig import Cluster, EndpointSet, Route, SnapshotBuilder, VirtualHost

from .errors import ResourceError, warn_unsupported
from .outbound import default_route
from .sidecar import sidecar_for

__all__ = ["ALLOW_ANY_HOST", "PASSTHROUGH", "add_passthrough", "outbound_policy", "passthrough_virtual_host"]

#: Istio's name for the cluster of hosts outside the registry.
PASSTHROUGH = "PassthroughCluster"
ALLOW_ANY_HOST = "allow_any"
_MODES = tuple(m.value for m in OutboundTrafficPolicy)


def outbound_policy(node: ProxyNode, inp: object) -> OutboundTrafficPolicy:
    """The outbound traffic policy of `node`: its Sidecar resource's, else the mesh's.

    `inp` is the :class:`knotwork.CompileInput`. Raises :class:`ResourceError`
    for a mode that is not ALLOW_ANY or REGISTRY_ONLY.
    """
    mesh = inp.mesh  # type: ignore[attr-defined]
    sidecar = sidecar_for(node, inp.resources.get("Sidecar", ()), mesh)  # type: ignore[attr-defined]
    if sidecar is None or sidecar.spec.get("outboundTrafficPolicy") is None:
        return mesh.outbound_traffic_policy
    policy = sidecar.spec["outboundTrafficPolicy"]
    if not isinstance(policy, Mapping):
        raise ResourceError(sidecar, "spec.outboundTrafficPolicy", "expected a mapping with a mode")
    if policy.get("egressProxy"):
        warn_unsupported(sidecar, "spec.outboundTrafficPolicy.egressProxy")
    mode = policy.get("mode", OutboundTrafficPolicy.REGISTRY_ONLY.value)
    if mode not in _MODES:
        raise ResourceError(sidecar, "spec.outboundTrafficPolicy.mode", f"expected one of {', '.join(_MODES)}, got {mode!r}")
    return OutboundTrafficPolicy(mode)


def passthrough_virtual_host() -> VirtualHost:
    """The last virtual host of an ALLOW_ANY sidecar's outbound table: any other host, passed through."""
    route: Route = default_route(PASSTHROUGH)
    return VirtualHost(name=ALLOW_ANY_HOST, domains=("*",), routes=(route,))


def add_passthrough(builder: SnapshotBuilder, lb: str) -> None:
    """``PassthroughCluster`` (resolution ``passthrough``) and its empty endpoint set."""
    builder.add(Cluster(name=PASSTHROUGH, protocol="http", lb=lb, resolution="passthrough"))
    builder.add(EndpointSet(name=PASSTHROUGH))
