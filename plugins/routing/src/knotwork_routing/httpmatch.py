"""Translate one ``HTTPMatchRequest`` (a ``match[]`` entry of a VirtualService) into a RouteMatch.

Supported: ``uri``, ``method``, ``authority``, ``headers``,
``withoutHeaders``, ``queryParams``, ``sourceLabels``, ``port``,
``gateways``, ``ignoreUriCase`` and ``name``. ``port`` and ``gateways`` are
decided at compile time (:func:`match_applies`) wherever the virtual host's
port is known. Conditions not supported yet (``scheme``,
``sourceNamespace``) are an error: ignoring them would widen the match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from knotwork import Resource
from knotwork.proxyconfig import HeaderMatch, RouteMatch

from .errors import ResourceError
from .specs import as_int, as_mapping

__all__ = ["match_applies", "route_match"]

_REFUSED = ("scheme", "sourceNamespace")
_STRING_MATCH_KINDS = ("exact", "prefix", "regex")


def match_applies(vs: Resource, spec: Any, where: str, gateway: str, port: int | None) -> bool:
    """Whether a match entry is compiled for `gateway` ("mesh" or "ns/name") and virtual-host `port`."""
    if not isinstance(spec, Mapping):
        raise ResourceError(vs, where, "expected a mapping")
    gateways = spec.get("gateways")
    if gateways:
        keys = {g if g == "mesh" or "/" in g else f"{vs.namespace}/{g}" for g in map(str, gateways)}
        if gateway not in keys:
            return False
    wanted = spec.get("port")
    return wanted is None or port is None or as_int(vs, wanted, f"{where}.port") == port


def route_match(vs: Resource, spec: Mapping[str, Any], where: str, port: int | None) -> RouteMatch:
    """The RouteMatch of one match entry; `port` is the virtual host's (None: checked per request)."""
    for key in _REFUSED:
        if key in spec:
            raise ResourceError(vs, f"{where}.{key}", "not supported yet")
    path: dict[str, Any] = {}
    if "uri" in spec:
        path = _uri(vs, spec["uri"], f"{where}.uri", bool(spec.get("ignoreUriCase")))
    headers = []
    for key, pseudo in (("method", ":method"), ("authority", ":authority")):
        if key in spec:
            headers.append(_string_match(vs, pseudo, spec[key], f"{where}.{key}"))
    for key, invert in (("headers", False), ("withoutHeaders", True)):
        for name, value in as_mapping(vs, spec.get(key), f"{where}.{key}").items():
            headers.append(_string_match(vs, str(name).lower(), value, f"{where}.{key}.{name}", invert))
    query = [
        _string_match(vs, str(name), value, f"{where}.queryParams.{name}")
        for name, value in as_mapping(vs, spec.get("queryParams"), f"{where}.queryParams").items()
    ]
    labels = as_mapping(vs, spec.get("sourceLabels"), f"{where}.sourceLabels")
    wanted = spec.get("port")
    return RouteMatch(
        **path, headers=tuple(headers), query=tuple(query),
        source_labels={str(k): str(v) for k, v in labels.items()},
        port=as_int(vs, wanted, f"{where}.port") if wanted is not None and port is None else None,
    )


def _uri(vs: Resource, spec: Any, where: str, ignore_case: bool) -> dict[str, Any]:
    """RouteMatch path fields; ``ignoreUriCase`` turns exact and prefix into a ``(?i)`` regex."""
    kind, value = _one_of(vs, spec, where)
    if ignore_case:
        literal = kind != "regex"
        value = "(?i)" + (re.escape(value) + (".*" if kind == "prefix" else "") if literal else value)
        kind = "regex"
    if kind == "exact":
        return {"prefix": None, "path": value}
    if kind == "regex":
        _check_regex(vs, value, f"{where}.regex")
        return {"prefix": None, "regex": value}
    return {"prefix": value}


def _string_match(vs: Resource, name: str, spec: Any, where: str, invert: bool = False) -> HeaderMatch:
    """An Istio StringMatch as a HeaderMatch; an empty one means "present"."""
    if isinstance(spec, Mapping) and not spec:
        return HeaderMatch(name=name, present=True, invert=invert)
    kind, value = _one_of(vs, spec, where)
    if kind == "exact":
        return HeaderMatch(name=name, exact=value, invert=invert)
    if kind == "prefix":
        return HeaderMatch(name=name, prefix=value, invert=invert)
    _check_regex(vs, value, f"{where}.regex")
    return HeaderMatch(name=name, regex=value, invert=invert)


def _one_of(vs: Resource, spec: Any, where: str) -> tuple[str, str]:
    if not isinstance(spec, Mapping):
        raise ResourceError(vs, where, "expected a mapping with one of exact, prefix, regex")
    kinds = [k for k in _STRING_MATCH_KINDS if k in spec]
    if len(kinds) != 1 or set(spec) - set(_STRING_MATCH_KINDS):
        raise ResourceError(vs, where, f"expected exactly one of exact, prefix, regex, got {sorted(spec)}")
    return kinds[0], str(spec[kinds[0]])


def _check_regex(vs: Resource, pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ResourceError(vs, where, f"invalid regular expression: {exc}") from None
