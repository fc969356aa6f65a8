"""PeerAuthentication (security.istio.io v1beta1 and v1): the mTLS a workload's inbound ports accept.

Istio's resolution (``ComposePeerAuthentication``) for a workload with
labels L in namespace N, on its port P:

- **mesh level**: a policy in the root namespace (``knotwork-system``, alias
  ``istio-system``) without a selector — an empty ``selector.matchLabels``
  counts as none;
- **namespace level**: a policy in N (not the root namespace) without a selector;
- **workload level**: a policy in N (not the root namespace) whose
  ``selector.matchLabels`` are all among L. A policy with a selector in the
  root namespace selects nothing (Istio ignores it too; warned).

The narrowest level wins; a level whose ``mtls.mode`` is ``UNSET`` (or
absent) inherits from the level above; with nothing set the mode is
``PERMISSIVE``. ``portLevelMtls`` of the workload policy then overrides per
port, an ``UNSET`` port taking the workload's resolved mode. When several
policies claim one level (two workload policies selecting one workload), the
oldest wins in Istio; Knotwork has no creation times, so the first in the
order the config sources give (file order, then apply order) wins.

The port is the **workload's** port — Istio keys ``portLevelMtls`` by the
container port, i.e. the service's ``targetPort``: here the inbound listener
of service port ``p`` is checked at ``p.target_port or p.port``, and a
client's auto-mTLS looks at the same number for each destination endpoint.

Validation as Istio's: ``portLevelMtls`` only on a policy with a non-empty
``selector.matchLabels`` (Istio: "mesh/namespace peer authentication cannot
have port level mTLS"), not empty, ports 1–65535; modes ``UNSET``,
``DISABLE``, ``PERMISSIVE``, ``STRICT``; selector keys and values without
``*``. Any problem is a :class:`~knotwork_routing.errors.ResourceError`
naming the resource and field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from knotwork import MeshSettings, Resource

from .errors import ResourceError, field_path, warn_ignored

__all__ = ["MODES", "EffectiveMtls", "PeerAuthentications", "PeerPolicy"]

#: ``mtls.mode`` values; UNSET inherits.
MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
_DEFAULT = "PERMISSIVE"


@attrs.frozen
class PeerPolicy:
    """One PeerAuthentication, validated: `selector` None for mesh and namespace policies."""

    resource: Resource
    mode: str
    selector: Mapping[str, str] | None
    ports: Mapping[int, str]

    @classmethod
    def parse(cls, res: Resource) -> PeerPolicy:
        spec = res.spec if isinstance(res.spec, Mapping) else {}
        selector = _selector(res, spec.get("selector"))
        mode = _mode(res, spec.get("mtls"), ("spec", "mtls"))
        ports: dict[int, str] = {}
        written = spec.get("portLevelMtls")
        if written is not None:
            if not isinstance(written, Mapping):
                raise ResourceError(res, "spec.portLevelMtls", "expected a mapping of port number to {mode: ...}")
            if not written:
                raise ResourceError(res, "spec.portLevelMtls",
                                    "port level mTLS, if defined, must have at least one element")
            if selector is None:
                raise ResourceError(res, "spec.portLevelMtls", "only a workload policy (with selector.matchLabels) may "
                                                               "set portLevelMtls: Istio refuses it on a mesh or "
                                                               "namespace policy")
            for key, value in written.items():
                port = _port(key)
                if port is None:
                    raise ResourceError(res, field_path("spec", "portLevelMtls", str(key)),
                                        f"expected a port number from 1 to 65535 as the key, got {key!r}")
                ports[port] = _mode(res, value, ("spec", "portLevelMtls", str(port)))
        return cls(res, mode, selector, ports)

    def selects(self, labels: Mapping[str, str]) -> bool:
        return self.selector is not None and all(labels.get(k) == v for k, v in self.selector.items())


def _port(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key.strip())
    return key if isinstance(key, int) and 0 < key <= 65535 else None


def _mode(res: Resource, mtls: Any, where: tuple) -> str:
    if mtls is None:
        return "UNSET"
    if not isinstance(mtls, Mapping):
        raise ResourceError(res, field_path(*where), "expected a mapping with a mode")
    mode = mtls.get("mode")
    if mode is None:
        return "UNSET"
    if mode not in MODES:
        raise ResourceError(res, field_path(*where, "mode"), f"expected one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def _selector(res: Resource, selector: Any) -> Mapping[str, str] | None:
    """``selector.matchLabels``; None when absent or empty (a namespace or mesh policy)."""
    if selector is None:
        return None
    if not isinstance(selector, Mapping):
        raise ResourceError(res, "spec.selector", "expected a mapping with matchLabels")
    labels = selector.get("matchLabels")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise ResourceError(res, "spec.selector.matchLabels", "expected a mapping of labels")
    out: dict[str, str] = {}
    for key, value in labels.items():
        where = field_path("spec", "selector", "matchLabels", str(key))
        if not isinstance(key, str) or not key:
            raise ResourceError(res, where, "expected a non-empty label name")
        if not isinstance(value, str):
            raise ResourceError(res, where, f"expected a string, got {value!r}")
        if "*" in key or "*" in value:
            raise ResourceError(res, where, "wildcards are not allowed in a workload selector")
        out[key] = value
    return out or None


@attrs.frozen
class EffectiveMtls:
    """A workload's resolved mTLS: its mode and per-port overrides (all resolved, never UNSET)."""

    mode: str = _DEFAULT
    ports: Mapping[int, str] = attrs.field(factory=dict)

    def for_port(self, port: int) -> str:
        return self.ports.get(port, self.mode)


class PeerAuthentications:
    """Every PeerAuthentication of the mesh, validated, by level; resolves a workload's mode."""

    def __init__(self, resources: Iterable[Resource], mesh: MeshSettings) -> None:
        self._mesh = mesh
        self._mesh_level: PeerPolicy | None = None
        self._namespace_level: dict[str, PeerPolicy] = {}
        self._workload_level: dict[str, list[PeerPolicy]] = {}
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], EffectiveMtls] = {}
        for res in resources:
            policy = PeerPolicy.parse(res)  # every policy is validated, wherever it applies
            root = mesh.is_root_namespace(res.namespace)
            if policy.selector is None:
                if root:
                    self._mesh_level = self._mesh_level or policy
                else:
                    self._namespace_level.setdefault(res.namespace, policy)
            elif root:
                warn_ignored(res, "spec.selector", "PeerAuthentication with a selector in the root namespace "
                                                   "selects nothing (as in Istio), ignored")
            else:
                self._workload_level.setdefault(res.namespace, []).append(policy)

    def __bool__(self) -> bool:
        return bool(self._mesh_level or self._namespace_level or self._workload_level)

    def effective(self, namespace: str, labels: Mapping[str, str]) -> EffectiveMtls:
        """The resolved mTLS of a workload with `labels` in `namespace`."""
        key = (namespace, tuple(sorted(labels.items())))
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._resolve(namespace, labels)
        return found

    def mode(self, namespace: str, labels: Mapping[str, str], port: int) -> str:
        """The mode (STRICT, PERMISSIVE or DISABLE) the workload accepts on its port `port`."""
        return self.effective(namespace, labels).for_port(port)

    def _resolve(self, namespace: str, labels: Mapping[str, str]) -> EffectiveMtls:
        mode = _DEFAULT
        levels: list[PeerPolicy | None] = [self._mesh_level]
        workload = None
        if not self._mesh.is_root_namespace(namespace):
            levels.append(self._namespace_level.get(namespace))
            workload = next((p for p in self._workload_level.get(namespace, ()) if p.selects(labels)), None)
            levels.append(workload)
        for policy in levels:
            if policy is not None and policy.mode != "UNSET":
                mode = policy.mode
        if workload is None or not workload.ports:
            return EffectiveMtls(mode)
        return EffectiveMtls(mode, {port: mode if m == "UNSET" else m for port, m in workload.ports.items()})
