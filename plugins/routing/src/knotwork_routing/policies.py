"""The per-route policies of a VirtualService ``http[]`` entry: ``fault``,
``mirror`` / ``mirrorPercentage`` / ``mirrors``, ``headers`` and ``corsPolicy``.

Read as Istio's API reference defines them:

- ``fault.delay.fixedDelay`` with ``percentage.value`` (or the legacy integer
  ``percent``; neither: 100 %), ``fault.abort.httpStatus`` with
  ``percentage.value`` (same default). ``exponentialDelay``, ``grpcStatus``
  and ``http2Error`` are ignored with a warning.
- ``mirror`` (a Destination) with ``mirrorPercentage.value`` (or the legacy
  ``mirrorPercent``; neither: 100 %), and ``mirrors[]`` (Istio 1.22:
  ``destination`` and ``percentage``). Mirror clusters are created like route
  destinations.
- ``headers.request`` / ``headers.response``: ``set`` (replace), ``add``
  (append), ``remove``; names are lower-cased.
- ``corsPolicy``: ``allowOrigins[]`` (StringMatch; the deprecated
  ``allowOrigin[]`` as exact matches), ``allowMethods``, ``allowHeaders``,
  ``exposeHeaders``, ``maxAge`` (a duration, whole seconds), ``allowCredentials``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from knotwork import Resource
from knotwork.proxyconfig import CorsPolicy, FaultPolicy, MirrorPolicy, StringMatch

from .errors import ResourceError, warn_unsupported
from .specs import as_duration, as_int, as_list, as_mapping

__all__ = ["HeaderOps", "cors_policy", "fault_policy", "header_ops", "merge_header_ops", "mirror_policies"]

#: (request set, request add, request remove, response set, response add, response remove)
HeaderOps = tuple[dict[str, str], dict[str, str], tuple[str, ...], dict[str, str], dict[str, str], tuple[str, ...]]
HEADER_FIELDS = ("request_headers_set", "request_headers_add", "request_headers_remove",
                 "response_headers_set", "response_headers_add", "response_headers_remove")


def _percent(vs: Resource, spec: Mapping[str, Any], where: str, legacy: str = "percent", key: str = "percentage") -> float:
    """``<key>.value`` (a double Percent), else the legacy integer field, else 100."""
    if spec.get(key) is not None:
        value = as_mapping(vs, spec[key], f"{where}.{key}").get("value", 0)
        at = f"{where}.{key}.value"
    elif spec.get(legacy) is not None:
        value = as_int(vs, spec[legacy], f"{where}.{legacy}")
        at = f"{where}.{legacy}"
    else:
        return 100.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ResourceError(vs, at, f"expected a percentage between 0 and 100, got {value!r}")
    return float(value)


def fault_policy(vs: Resource, value: Any, where: str) -> FaultPolicy | None:
    """``fault``: a FaultPolicy, or None when it injects nothing we can carry out."""
    spec = as_mapping(vs, value, where)
    if not spec:
        return None
    out: dict[str, Any] = {}
    delay = as_mapping(vs, spec.get("delay"), f"{where}.delay")
    if delay:
        if "exponentialDelay" in delay:
            warn_unsupported(vs, f"{where}.delay.exponentialDelay")
        if delay.get("fixedDelay") is not None:
            out["delay"] = as_duration(vs, delay["fixedDelay"], f"{where}.delay.fixedDelay")
            out["delay_percent"] = _percent(vs, delay, f"{where}.delay")
        elif "exponentialDelay" not in delay:
            raise ResourceError(vs, f"{where}.delay.fixedDelay", "required")
    abort = as_mapping(vs, spec.get("abort"), f"{where}.abort")
    if abort:
        for key in ("grpcStatus", "http2Error"):
            if key in abort:
                warn_unsupported(vs, f"{where}.abort.{key}")
        if abort.get("httpStatus") is not None:
            status = as_int(vs, abort["httpStatus"], f"{where}.abort.httpStatus")
            if not 200 <= status <= 599:
                raise ResourceError(vs, f"{where}.abort.httpStatus", f"expected a status between 200 and 599, got {status}")
            out["abort_status"] = status
            out["abort_percent"] = _percent(vs, abort, f"{where}.abort")
        elif not {"grpcStatus", "http2Error"} & set(abort):
            raise ResourceError(vs, f"{where}.abort.httpStatus", "required")
    return FaultPolicy(**out) if out else None


def mirror_policies(
    vs: Resource, http: Mapping[str, Any], where: str, destination: Callable[[Mapping[str, Any], str], str],
) -> tuple[MirrorPolicy, ...]:
    """``mirror`` + ``mirrorPercentage`` and ``mirrors[]``; `destination` makes a destination's cluster."""
    out: list[MirrorPolicy] = []
    if http.get("mirror") is not None:
        at = f"{where}.mirror"
        cluster = destination(as_mapping(vs, http["mirror"], at), at)
        out.append(MirrorPolicy(cluster, _percent(vs, http, where, legacy="mirrorPercent", key="mirrorPercentage")))
    for k, entry in enumerate(as_list(vs, http.get("mirrors"), f"{where}.mirrors")):
        at = f"{where}.mirrors[{k}]"
        entry = as_mapping(vs, entry, at)
        cluster = destination(as_mapping(vs, entry.get("destination"), f"{at}.destination"), f"{at}.destination")
        out.append(MirrorPolicy(cluster, _percent(vs, entry, at)))
    return tuple(out)


def _names(vs: Resource, value: Any, where: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(n).lower() for n in as_list(vs, value, where)))


def _values(vs: Resource, value: Any, where: str) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in as_mapping(vs, value, where).items()}


def header_ops(vs: Resource, value: Any, where: str) -> HeaderOps:
    """``headers``: request then response set/add/remove."""
    headers = as_mapping(vs, value, where)
    out: list[Any] = []
    for side in ("request", "response"):
        ops = as_mapping(vs, headers.get(side), f"{where}.{side}")
        out += (_values(vs, ops.get("set"), f"{where}.{side}.set"), _values(vs, ops.get("add"), f"{where}.{side}.add"),
                _names(vs, ops.get("remove"), f"{where}.{side}.remove"))
    return tuple(out)  # type: ignore[return-value]


def merge_header_ops(route: HeaderOps, dest: HeaderOps) -> HeaderOps:
    """A route's header operations followed by its only destination's (the destination's win)."""
    out: list[Any] = []
    for a, b in zip(route, dest, strict=True):
        out.append({**a, **b} if isinstance(a, dict) else tuple(dict.fromkeys((*a, *b))))
    return tuple(out)  # type: ignore[return-value]


def _string_match(vs: Resource, spec: Any, where: str) -> StringMatch:
    spec = as_mapping(vs, spec, where)
    kinds = [k for k in ("exact", "prefix", "regex") if k in spec]
    if len(kinds) != 1 or set(spec) - {"exact", "prefix", "regex"}:
        raise ResourceError(vs, where, f"expected exactly one of exact, prefix, regex, got {sorted(spec)}")
    if kinds[0] == "regex":
        try:
            re.compile(str(spec["regex"]))
        except re.error as exc:
            raise ResourceError(vs, f"{where}.regex", f"invalid regular expression: {exc}") from None
    return StringMatch(**{kinds[0]: str(spec[kinds[0]])})


def cors_policy(vs: Resource, value: Any, where: str) -> CorsPolicy | None:
    """``corsPolicy`` (None when absent or empty)."""
    spec = as_mapping(vs, value, where)
    if not spec:
        return None
    for key in ("unmatchedPreflights",):
        if key in spec:
            warn_unsupported(vs, f"{where}.{key}")
    origins = [_string_match(vs, o, f"{where}.allowOrigins[{i}]")
               for i, o in enumerate(as_list(vs, spec.get("allowOrigins"), f"{where}.allowOrigins"))]
    origins += [StringMatch(exact=str(o)) for o in as_list(vs, spec.get("allowOrigin"), f"{where}.allowOrigin")]
    max_age = as_duration(vs, spec.get("maxAge"), f"{where}.maxAge")
    credentials = spec.get("allowCredentials")
    if credentials is not None and not isinstance(credentials, bool):
        raise ResourceError(vs, f"{where}.allowCredentials", f"expected true or false, got {credentials!r}")

    def words(key: str) -> tuple[str, ...]:
        return tuple(str(v) for v in as_list(vs, spec.get(key), f"{where}.{key}"))

    return CorsPolicy(
        allow_origins=tuple(origins), allow_methods=words("allowMethods"), allow_headers=words("allowHeaders"),
        expose_headers=words("exposeHeaders"), max_age=int(max_age) if max_age is not None else None,
        allow_credentials=credentials,
    )
