"""The schema table: which Istio API groups, versions and kinds exist, each
kind's top-level spec fields, and the types of the most-used nested fields.

A small, declarative table on purpose: the later "one schema source" work
replaces :data:`KINDS` (e.g. generated from Istio's CRD OpenAPI schemas)
without touching the validator. Nested objects are *open* (fields not listed
are not checked); the top level of each kind's spec is *closed* (a field not
in Istio's API reference is an error, it is almost always a typo).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from knotwork.config import describe as show

__all__ = ["API_VERSIONS", "KINDS", "Check", "Duration", "Int", "ListOf", "MapOf", "Obj", "Str", "check", "show"]

Problem = tuple[tuple, str]

#: API group -> versions Knotwork reads (Istio's served versions).
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "networking.istio.io": ("v1alpha3", "v1beta1", "v1"),
    "security.istio.io": ("v1beta1", "v1"),
    "telemetry.istio.io": ("v1alpha1", "v1"),
}


class Check:
    """A type check: yields (relative path, problem) pairs."""

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:  # pragma: no cover - interface
        raise NotImplementedError


@attrs.frozen
class _Scalar(Check):
    name: str
    accept: tuple[type, ...]

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if isinstance(value, bool) and bool not in self.accept or not isinstance(value, self.accept):
            yield path, f"expected {self.name}, got {show(value)}"


Str = _Scalar("a string", (str,))
Int = _Scalar("an integer", (int,))
Bool = _Scalar("true or false", (bool,))
Any_ = _Scalar("anything", (object,))

_DURATION = re.compile(r"^((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")


@attrs.frozen
class _Duration(Check):
    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, str) or not _DURATION.match(value.strip()):
            yield path, f"expected a duration such as '0.5s', '3s' or '1m', got {show(value)}"


Duration = _Duration()


@attrs.frozen
class ListOf(Check):
    item: Check

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, list):
            yield path, f"expected a list, got {show(value)}"
            return
        for i, item in enumerate(value):
            yield from self.item.problems(item, (*path, i))


@attrs.frozen
class MapOf(Check):
    """A mapping with string keys, every value checked by `value`."""

    value: Check

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, Mapping):
            yield path, f"expected a mapping, got {show(value)}"
            return
        for key, item in value.items():
            if not isinstance(key, str):
                yield (*path, key), f"expected a string key, got {show(key)}"
                continue
            yield from self.value.problems(item, (*path, key))


@attrs.frozen
class Obj(Check):
    """A mapping with known fields; `closed` refuses fields not listed."""

    fields: Mapping[str, Check]
    required: tuple[str, ...] = ()
    closed: bool = False

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, Mapping):
            yield path, f"expected a mapping, got {show(value)}"
            return
        for name in self.required:
            if value.get(name) is None:
                yield (*path, name), "expected a value, got nothing (required)"
        for key, item in value.items():
            check_ = self.fields.get(key)
            if check_ is None:
                if self.closed:
                    yield (*path, key), f"expected one of the fields {', '.join(self.fields)}, got unknown field {key!r}"
                continue
            if item is not None:
                yield from check_.problems(item, (*path, key))


def _spec(**fields: Check) -> Obj:
    return Obj(fields, closed=True)


_STRINGS = ListOf(Str)
_LABELS = MapOf(Str)
_SELECTOR = Obj({"matchLabels": _LABELS})
_WORKLOAD_SELECTOR = Obj({"labels": _LABELS})
_TARGET_REF = Obj({"group": Str, "kind": Str, "name": Str, "namespace": Str})
_PORT_SELECTOR = Obj({"number": Int})

_DESTINATION = Obj({"host": Str, "subset": Str, "port": _PORT_SELECTOR}, required=("host",))
_HTTP_ROUTE = Obj({
    "name": Str,
    "match": ListOf(Obj({"name": Str, "port": Int, "gateways": _STRINGS, "sourceLabels": _LABELS})),
    "route": ListOf(Obj({"destination": _DESTINATION, "weight": Int}, required=("destination",))),
    "timeout": Duration,
    "retries": Obj({"attempts": Int, "perTryTimeout": Duration, "retryOn": Str}),
})
_L4_ROUTE = Obj({"route": ListOf(Obj({"destination": _DESTINATION, "weight": Int}, required=("destination",)))})

_SUBSET = Obj({"name": Str, "labels": _LABELS, "trafficPolicy": Obj({})}, required=("name",))
_SERVER = Obj({"port": Obj({"number": Int, "name": Str, "protocol": Str}), "hosts": _STRINGS, "name": Str},
              required=("port", "hosts"))

#: (group, kind) -> the check of its `spec`. Top-level fields from Istio's API reference.
KINDS: dict[tuple[str, str], Obj] = {
    ("networking.istio.io", "VirtualService"): _spec(
        hosts=_STRINGS, gateways=_STRINGS, http=ListOf(_HTTP_ROUTE), tls=ListOf(_L4_ROUTE), tcp=ListOf(_L4_ROUTE),
        exportTo=_STRINGS),
    ("networking.istio.io", "DestinationRule"): _spec(
        host=Str, trafficPolicy=Obj({}), subsets=ListOf(_SUBSET), exportTo=_STRINGS,
        workloadSelector=_WORKLOAD_SELECTOR),
    ("networking.istio.io", "Gateway"): _spec(selector=_LABELS, servers=ListOf(_SERVER)),
    ("networking.istio.io", "ServiceEntry"): _spec(
        hosts=_STRINGS, addresses=_STRINGS, ports=ListOf(Obj({"number": Int, "protocol": Str, "name": Str,
                                                               "targetPort": Int})),
        location=Str, resolution=Str, endpoints=ListOf(Obj({"address": Str, "labels": _LABELS})),
        workloadSelector=_WORKLOAD_SELECTOR, exportTo=_STRINGS, subjectAltNames=_STRINGS),
    ("networking.istio.io", "Sidecar"): _spec(
        workloadSelector=_WORKLOAD_SELECTOR, ingress=ListOf(Obj({})), egress=ListOf(Obj({"hosts": _STRINGS})),
        outboundTrafficPolicy=Obj({"mode": Str}), inboundConnectionPool=Obj({})),
    ("security.istio.io", "PeerAuthentication"): _spec(
        selector=_SELECTOR, mtls=Obj({"mode": Str}), portLevelMtls=MapOf(Obj({"mode": Str}))),
    ("security.istio.io", "AuthorizationPolicy"): _spec(
        selector=_SELECTOR, targetRef=_TARGET_REF, targetRefs=ListOf(_TARGET_REF), rules=ListOf(Obj({})),
        action=Str, provider=Obj({"name": Str})),
    ("security.istio.io", "RequestAuthentication"): _spec(
        selector=_SELECTOR, targetRef=_TARGET_REF, targetRefs=ListOf(_TARGET_REF),
        jwtRules=ListOf(Obj({"issuer": Str, "jwksUri": Str, "audiences": _STRINGS}))),
    ("telemetry.istio.io", "Telemetry"): _spec(
        selector=_SELECTOR, targetRef=_TARGET_REF, targetRefs=ListOf(_TARGET_REF), tracing=ListOf(Obj({})),
        metrics=ListOf(Obj({})), accessLogging=ListOf(Obj({}))),
}


def check(group: str, kind: str, spec: Any) -> list[Problem]:
    """Problems of one resource's spec, paths starting at ``spec``; [] for a kind not in the table."""
    schema = KINDS.get((group, kind))
    return [] if schema is None else list(schema.problems(spec, ("spec",)))
