"""Which Sidecar resource (networking.istio.io) applies to a sidecar proxy.

Istio's order: in the workload's namespace, a Sidecar whose
``workloadSelector.labels`` all match the workload's labels (the oldest —
here: first written — when several match); else that namespace's Sidecar
without a selector; else the root namespace's Sidecar without a selector.
Gateways are never scoped by a Sidecar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from knotwork import MeshSettings, ProxyNode, Resource

__all__ = ["sidecar_for"]


def _selector(sidecar: Resource) -> Mapping[str, str] | None:
    selector = sidecar.spec.get("workloadSelector")
    if not isinstance(selector, Mapping):
        return None
    labels = selector.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) and labels else None


def sidecar_for(node: ProxyNode, sidecars: Iterable[Resource], mesh: MeshSettings) -> Resource | None:
    """The Sidecar resource scoping `node`, or None (gateways: always None)."""
    if node.kind != "sidecar":
        return None
    selected: Resource | None = None
    namespace_default: Resource | None = None
    root_default: Resource | None = None
    for sidecar in sidecars:
        selector = _selector(sidecar)
        if sidecar.namespace == node.namespace:
            if selector is None:
                namespace_default = namespace_default or sidecar
            elif selected is None and all(node.labels.get(k) == v for k, v in selector.items()):
                selected = sidecar
        elif mesh.is_root_namespace(sidecar.namespace) and selector is None:
            root_default = root_default or sidecar
    return selected or namespace_default or root_default
