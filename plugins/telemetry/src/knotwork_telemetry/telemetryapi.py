"""Telemetry (telemetry.istio.io v1 and v1alpha1): what a workload's proxy reports.

Istio's scopes, narrowest last, for a proxy with labels L in namespace N:

- **mesh level**: a Telemetry in the root namespace (``knotwork-system``,
  alias ``istio-system``) without a selector — an empty
  ``selector.matchLabels`` counts as none;
- **namespace level**: a Telemetry in N (not the root namespace) without a selector;
- **workload level**: a Telemetry in N whose ``selector.matchLabels`` are all
  among L — in the root namespace too, as in Istio (its gateways are
  configured that way), unlike PeerAuthentication.

Levels are applied in that order, field by field, as Istio merges them:
``accessLogging[].disabled`` and ``tracing[].randomSamplingPercentage`` /
``disableSpanReporting`` of a narrower level replace the wider one's, tracing
``customTags`` are merged by name, metric overrides accumulate (a later
``tagOverrides`` entry for the same tag wins). Every entry applies to the
client side, the server side or both (``match.mode``: ``CLIENT``, ``SERVER``,
``CLIENT_AND_SERVER``, the default): outbound and gateway listeners are the
client, inbound listeners the server. When several Telemetry resources claim
one level, Istio takes the oldest; Knotwork, which has no creation times,
takes the first in the order the config sources give.

Supported: ``selector``, ``accessLogging[].{disabled, match.mode}``,
``tracing[].{randomSamplingPercentage, disableSpanReporting,
customTags.<name>.literal.value, match.mode}``,
``metrics[].overrides[].{match.metric, match.mode, disabled, tagOverrides}``
(values: :mod:`knotwork_telemetry.expressions`). ``providers`` are accepted
(one Prometheus, one access log, the mesh's tracer); other fields are warned
about once and ignored. A wrong value is a
:class:`~knotwork_telemetry.errors.TelemetryError` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from knotwork import MeshSettings, Resource
from knotwork.proxyconfig import TagOverride

from .errors import TelemetryError, field_path, warn_ignored
from .expressions import compile_expression
from .naming import METRICS

__all__ = ["MODES", "Effective", "TelemetryPolicy", "Telemetries"]

MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")
#: Istio's metric selectors Knotwork accepts; the gRPC message counts are not emitted (accepted, no effect).
METRIC_SELECTORS = ("ALL_METRICS", *METRICS, "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_KNOWN = {
    "spec": {"selector", "accessLogging", "tracing", "metrics", "targetRef", "targetRefs"},
    "accessLogging": {"disabled", "match", "providers", "filter"},
    "tracing": {"randomSamplingPercentage", "disableSpanReporting", "customTags", "match", "providers",
                "useRequestIdForTraceSampling", "enableIstioTags"},
    "metrics": {"overrides", "providers", "reportingInterval"},
}
_IGNORED = {"targetRef", "targetRefs", "filter", "useRequestIdForTraceSampling", "enableIstioTags", "reportingInterval"}


@attrs.frozen
class _AccessLog:
    mode: str
    disabled: bool


@attrs.frozen
class _Trace:
    mode: str
    sampling: float | None
    disable_span_reporting: bool | None
    custom_tags: tuple[tuple[str, str], ...]


@attrs.frozen
class _MetricOverride:
    mode: str
    metric: str
    disabled: bool | None
    tags: tuple[TagOverride, ...]


@attrs.frozen
class TelemetryPolicy:
    """One Telemetry resource, validated: `selector` None for mesh and namespace policies."""

    resource: Resource
    selector: Mapping[str, str] | None
    access_logs: tuple[_AccessLog, ...] = ()
    traces: tuple[_Trace, ...] = ()
    overrides: tuple[_MetricOverride, ...] = ()

    def selects(self, labels: Mapping[str, str]) -> bool:
        return self.selector is not None and all(labels.get(k) == v for k, v in self.selector.items())

    @classmethod
    def parse(cls, res: Resource) -> TelemetryPolicy:
        spec = res.spec
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise TelemetryError(res, "spec", "expected a mapping")
        _check_keys(res, spec, "spec", ("spec",))
        selector = _selector(res, spec.get("selector"))
        access_logs = tuple(_access_log(res, entry, i) for i, entry in enumerate(_entries(res, spec, "accessLogging")))
        traces = tuple(_trace(res, entry, i) for i, entry in enumerate(_entries(res, spec, "tracing")))
        overrides: list[_MetricOverride] = []
        for i, entry in enumerate(_entries(res, spec, "metrics")):
            overrides.extend(_metric_overrides(res, entry, i))
        return cls(res, selector, access_logs, traces, tuple(overrides))


# ── parsing ─────────────────────────────────────────────────────────────────


def _check_keys(res: Resource, value: Mapping[str, Any], kind: str, where: tuple[str | int, ...]) -> None:
    for key in value:
        if key not in _KNOWN[kind]:
            raise TelemetryError(res, field_path(*where, str(key)),
                                 f"unknown field; expected one of {', '.join(sorted(_KNOWN[kind]))}")
        if key in _IGNORED:
            warn_ignored(res, field_path(*where, key))


def _entries(res: Resource, spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TelemetryError(res, f"spec.{key}", "expected a list")
    for i, entry in enumerate(value):
        where = ("spec", key, i)
        if not isinstance(entry, Mapping):
            raise TelemetryError(res, field_path(*where), "expected a mapping")
        _check_keys(res, entry, key, where)
        _providers(res, entry.get("providers"), where)
    return value


def _providers(res: Resource, providers: Any, where: tuple[str | int, ...]) -> None:
    if providers is None:
        return
    if not isinstance(providers, list) or not all(isinstance(p, Mapping) and isinstance(p.get("name"), str)
                                                  for p in providers):
        raise TelemetryError(res, field_path(*where, "providers"), "expected a list of {name: ...}")


def _mode(res: Resource, match: Any, where: tuple[str | int, ...]) -> str:
    if match is None:
        return "CLIENT_AND_SERVER"
    if not isinstance(match, Mapping):
        raise TelemetryError(res, field_path(*where, "match"), "expected a mapping")
    mode = match.get("mode", "CLIENT_AND_SERVER")
    if mode not in MODES:
        raise TelemetryError(res, field_path(*where, "match", "mode"), f"expected one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def _bool(res: Resource, value: Any, where: tuple[str | int, ...]) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TelemetryError(res, field_path(*where), f"expected true or false, got {value!r}")
    return value


def _access_log(res: Resource, entry: Mapping[str, Any], i: int) -> _AccessLog:
    where = ("spec", "accessLogging", i)
    disabled = _bool(res, entry.get("disabled"), (*where, "disabled"))
    return _AccessLog(_mode(res, entry.get("match"), where), bool(disabled))


def _trace(res: Resource, entry: Mapping[str, Any], i: int) -> _Trace:
    where = ("spec", "tracing", i)
    sampling = entry.get("randomSamplingPercentage")
    if sampling is not None:
        if isinstance(sampling, bool) or not isinstance(sampling, int | float) or not 0 <= sampling <= 100:
            raise TelemetryError(res, field_path(*where, "randomSamplingPercentage"),
                                 f"expected a percent from 0 to 100, got {sampling!r}")
        sampling = float(sampling)
    disable = _bool(res, entry.get("disableSpanReporting"), (*where, "disableSpanReporting"))
    tags: list[tuple[str, str]] = []
    custom = entry.get("customTags")
    if custom is not None:
        if not isinstance(custom, Mapping):
            raise TelemetryError(res, field_path(*where, "customTags"),
                                 "expected a mapping of tag name to {literal: {value: ...}}")
        for name, tag in custom.items():
            twhere = (*where, "customTags", str(name))
            if not isinstance(name, str) or not name:
                raise TelemetryError(res, field_path(*twhere), "expected a non-empty tag name")
            if not isinstance(tag, Mapping) or len(tag) != 1:
                raise TelemetryError(res, field_path(*twhere), "expected exactly one of literal, environment, header")
            (kind, body), = tag.items()
            if kind in ("environment", "header"):
                warn_ignored(res, field_path(*twhere, kind), f"custom tag kind {kind} not supported yet, ignored")
                continue
            value = body.get("value") if isinstance(body, Mapping) else None
            if kind != "literal" or not isinstance(value, str):
                raise TelemetryError(res, field_path(*twhere), "expected literal: {value: <string>}")
            tags.append((name, value))
    return _Trace(_mode(res, entry.get("match"), where), sampling, disable, tuple(tags))


def _metric_overrides(res: Resource, entry: Mapping[str, Any], i: int) -> list[_MetricOverride]:
    overrides = entry.get("overrides")
    if overrides is None:
        return []
    if not isinstance(overrides, list):
        raise TelemetryError(res, field_path("spec", "metrics", i, "overrides"), "expected a list")
    out = []
    for j, override in enumerate(overrides):
        where = ("spec", "metrics", i, "overrides", j)
        if not isinstance(override, Mapping):
            raise TelemetryError(res, field_path(*where), "expected a mapping")
        for key in override:
            if key not in ("match", "disabled", "tagOverrides"):
                raise TelemetryError(res, field_path(*where, str(key)),
                                     "unknown field; expected match, disabled, tagOverrides")
        match = override.get("match")
        mode = _mode(res, match, where)
        metric = "ALL_METRICS"
        if isinstance(match, Mapping):
            if "customMetric" in match:
                warn_ignored(res, field_path(*where, "match", "customMetric"),
                             "custom metrics not supported yet, override ignored")
                continue
            metric = match.get("metric", "ALL_METRICS")
            if metric not in METRIC_SELECTORS:
                raise TelemetryError(res, field_path(*where, "match", "metric"),
                                     f"expected one of {', '.join(METRIC_SELECTORS)}, got {metric!r}")
        disabled = _bool(res, override.get("disabled"), (*where, "disabled"))
        tags = _tag_overrides(res, override.get("tagOverrides"), where, str(metric), mode)
        out.append(_MetricOverride(mode, str(metric), disabled, tags))
    return out


def _tag_overrides(res: Resource, value: Any, where: tuple[str | int, ...], metric: str,
                   mode: str) -> tuple[TagOverride, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TelemetryError(res, field_path(*where, "tagOverrides"), "expected a mapping of tag name to {operation, value}")
    out = []
    for tag, body in value.items():
        twhere = (*where, "tagOverrides", str(tag))
        if not isinstance(tag, str) or not _LABEL.match(tag) or tag == "le" or tag.startswith("__"):
            raise TelemetryError(res, field_path(*twhere),
                                 "expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not le)")
        body = body if body is not None else {}
        if not isinstance(body, Mapping):
            raise TelemetryError(res, field_path(*twhere), "expected a mapping with operation and value")
        operation = body.get("operation", "UPSERT")
        if operation not in ("UPSERT", "REMOVE"):
            raise TelemetryError(res, field_path(*twhere, "operation"), f"expected UPSERT or REMOVE, got {operation!r}")
        if operation == "REMOVE":
            out.append(TagOverride(metric, tag, remove=True, mode=mode))
            continue
        expr = body.get("value")
        if not isinstance(expr, str) or not expr.strip():
            raise TelemetryError(res, field_path(*twhere, "value"), "UPSERT needs a value expression")
        try:
            compile_expression(expr)
        except ValueError as exc:
            raise TelemetryError(res, field_path(*twhere, "value"), str(exc)) from None
        out.append(TagOverride(metric, tag, value=expr.strip(), mode=mode))
    return tuple(out)


def _selector(res: Resource, selector: Any) -> Mapping[str, str] | None:
    """``selector.matchLabels``; None when absent or empty (a namespace or mesh policy)."""
    if selector is None:
        return None
    if not isinstance(selector, Mapping):
        raise TelemetryError(res, "spec.selector", "expected a mapping with matchLabels")
    labels = selector.get("matchLabels")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise TelemetryError(res, "spec.selector.matchLabels", "expected a mapping of labels")
    out: dict[str, str] = {}
    for key, value in labels.items():
        where = field_path("spec", "selector", "matchLabels", str(key))
        if not isinstance(key, str) or not key:
            raise TelemetryError(res, where, "expected a non-empty label name")
        if not isinstance(value, str):
            raise TelemetryError(res, where, f"expected a string, got {value!r}")
        if "*" in key or "*" in value:
            raise TelemetryError(res, where, "wildcards are not allowed in a workload selector")
        out[key] = value
    return out or None


# ── resolution ──────────────────────────────────────────────────────────────


@attrs.frozen
class Effective:
    """What applies to one side (CLIENT or SERVER) of a workload; None: the mesh default."""

    access_log: bool | None = None
    sampling: float | None = None
    disable_span_reporting: bool = False
    custom_tags: tuple[tuple[str, str], ...] = ()
    disabled_metrics: frozenset[str] = frozenset()
    tag_overrides: tuple[TagOverride, ...] = ()

    @property
    def metrics(self) -> bool:
        """False when every metric is disabled."""
        return not set(METRICS) <= self.disabled_metrics


class Telemetries:
    """Every Telemetry of the mesh, validated, by level; resolves what a workload reports."""

    def __init__(self, resources: Iterable[Resource], mesh: MeshSettings) -> None:
        self._mesh = mesh
        self._mesh_level: TelemetryPolicy | None = None
        self._namespace_level: dict[str, TelemetryPolicy] = {}
        self._workload_level: dict[str, list[TelemetryPolicy]] = {}
        for res in resources:
            policy = TelemetryPolicy.parse(res)  # every resource is validated, wherever it applies
            if policy.selector is not None:
                self._workload_level.setdefault(self._ns(res.namespace), []).append(policy)
                continue
            if mesh.is_root_namespace(res.namespace):
                if self._mesh_level is None:
                    self._mesh_level = policy
                    continue
            elif res.namespace not in self._namespace_level:
                self._namespace_level[res.namespace] = policy
                continue
            warn_ignored(res, "spec", "another Telemetry without a selector already applies to this namespace "
                                      "(the first one wins), ignored")

    def _ns(self, namespace: str) -> str:
        """``istio-system`` is an alias of the root namespace."""
        return self._mesh.root_namespace if self._mesh.is_root_namespace(namespace) else namespace

    def levels(self, namespace: str, labels: Mapping[str, str]) -> list[TelemetryPolicy]:
        """The policies applying to a workload, widest first."""
        found = [self._mesh_level]
        if not self._mesh.is_root_namespace(namespace):
            found.append(self._namespace_level.get(namespace))
        found.append(next((p for p in self._workload_level.get(self._ns(namespace), ()) if p.selects(labels)), None))
        return [p for p in found if p is not None]

    def effective(self, namespace: str, labels: Mapping[str, str], side: str) -> Effective:
        """What applies to the `side` (``CLIENT`` or ``SERVER``) of a workload with `labels` in `namespace`."""
        access_log: bool | None = None
        sampling: float | None = None
        disable_spans = False
        custom: dict[str, str] = {}
        disabled: set[str] = set()
        tags: list[TagOverride] = []
        for policy in self.levels(namespace, labels):
            for log in policy.access_logs:
                if log.mode in (side, "CLIENT_AND_SERVER"):
                    access_log = not log.disabled
            for trace in policy.traces:
                if trace.mode in (side, "CLIENT_AND_SERVER"):
                    if trace.sampling is not None:
                        sampling = trace.sampling
                    if trace.disable_span_reporting is not None:
                        disable_spans = trace.disable_span_reporting
                    custom.update(trace.custom_tags)
            for override in policy.overrides:
                if override.mode not in (side, "CLIENT_AND_SERVER"):
                    continue
                selected = set(METRICS) if override.metric == "ALL_METRICS" else {override.metric} & set(METRICS)
                if override.disabled is not None:
                    disabled = disabled | selected if override.disabled else disabled - selected
                tags.extend(override.tags)
        return Effective(access_log, sampling, disable_spans, tuple(custom.items()), frozenset(disabled), tuple(tags))
