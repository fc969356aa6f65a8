"""Translate a VirtualService's ``http[]`` entries into compiled routes.

One :class:`~knotwork.proxyconfig.Route` per ``match[]`` entry (several
entries are OR-ed; see :mod:`knotwork_routing.httpmatch`), in order; an
entry without ``match`` matches everything. Supported now, besides the
match: ``route`` (destination host, subset, port; weight; ``headers`` when
there is one destination), ``timeout``, ``retries``, ``rewrite`` (uri,
authority), ``redirect``, ``directResponse``, ``headers`` (request and
response set/add/remove), ``fault``, ``mirror``/``mirrorPercentage``/
``mirrors`` and ``corsPolicy`` (see :mod:`knotwork_routing.policies`). Fields
not supported yet (``delegate``, …) are ignored with a warning, so one such
resource does not stop the whole mesh.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from knotwork import Resource
from knotwork.proxyconfig import DirectResponse, Redirect, RetryPolicy, Route, RouteAction, WeightedCluster

from .clusters import ClusterSet, PortError
from .errors import ResourceError, field_path, warn_unsupported
from .httpmatch import match_applies, route_match
from .policies import HEADER_FIELDS, HeaderOps, cors_policy, fault_policy, header_ops, merge_header_ops, mirror_policies
from .specs import as_duration, as_int, as_list, as_mapping

__all__ = ["RouteScope", "http_routes"]

_IGNORED = ("delegate",)
_ACTIONS = ("route", "redirect", "directResponse")


@attrs.frozen
class RouteScope:
    """Where routes are being compiled: for which gateway ("mesh" or "ns/name") and port.

    `port` is the port requests to the virtual host are addressed to (the
    service port for sidecars, the server port for gateways), None when the
    virtual host serves any port.
    """

    gateway: str
    port: int | None
    clusters: ClusterSet
    resolve: Callable[[str, str], str]  # (host, namespace) -> FQDN


def http_routes(vs: Resource, scope: RouteScope) -> list[Route]:
    """The routes of every ``spec.http[]`` entry of `vs` that apply in `scope`, in order."""
    routes: list[Route] = []
    for i, http in enumerate(as_list(vs, vs.spec.get("http"), "spec.http")):
        where = field_path("spec", "http", i)
        if not isinstance(http, Mapping):
            raise ResourceError(vs, where, "expected a mapping")
        routes.extend(_http_entry(vs, http, where, scope, i))
    return routes


def _http_entry(vs: Resource, http: Mapping[str, Any], where: str, scope: RouteScope, index: int) -> list[Route]:
    """One Route per applicable match entry, sharing the entry's outcome."""
    for key in _IGNORED:
        if key in http:
            warn_unsupported(vs, f"{where}.{key}")
    base = str(http.get("name") or f"{vs.namespace}/{vs.name}/{index}")
    matches = as_list(vs, http.get("match"), f"{where}.match") or [{}]
    chosen = [
        (j, m) for j, m in enumerate(matches)
        if match_applies(vs, m, f"{where}.match[{j}]", scope.gateway, scope.port)
    ]
    if not chosen:
        return []
    outcome = _outcome(vs, http, where, scope)
    return [
        Route(
            name=base if len(matches) == 1 else f"{base}/{spec.get('name') or j}",
            match=route_match(vs, spec, f"{where}.match[{j}]", scope.port),
            **outcome,
        )
        for j, spec in chosen
    ]


def _outcome(vs: Resource, http: Mapping[str, Any], where: str, scope: RouteScope) -> dict[str, Any]:
    """The Route fields shared by every match of one http entry: exactly one action, headers, policies."""
    given = [k for k in _ACTIONS if http.get(k)]
    if len(given) != 1:
        got = ", ".join(given) or "none"
        raise ResourceError(vs, where, f"expected exactly one of route, redirect, directResponse, got {got}")
    ops = header_ops(vs, http.get("headers"), f"{where}.headers")
    out: dict[str, Any] = {}
    at = f"{where}.{given[0]}"
    if given[0] == "redirect":
        out["redirect"] = _redirect(vs, as_mapping(vs, http["redirect"], at), at)
    elif given[0] == "directResponse":
        out["direct"] = _direct(vs, as_mapping(vs, http["directResponse"], at), at)
    else:
        out["action"], dest_ops = _action(vs, http, where, scope)
        if dest_ops is not None:
            ops = merge_header_ops(ops, dest_ops)
        out["mirror"] = mirror_policies(vs, http, where, lambda d, w: _destination(vs, d, w, scope))
    if given[0] != "route":
        for key in ("mirror", "mirrors"):
            if key in http:
                warn_unsupported(vs, f"{where}.{key} (mirroring needs a route)")
    out.update(zip(HEADER_FIELDS, ops, strict=True))
    out["fault"] = fault_policy(vs, http.get("fault"), f"{where}.fault")
    out["cors"] = cors_policy(vs, http.get("corsPolicy"), f"{where}.corsPolicy")
    return out


def _action(vs: Resource, http: Mapping[str, Any], where: str, scope: RouteScope) -> tuple[RouteAction, HeaderOps | None]:
    """The RouteAction, and the header operations of its destination when it has only one."""
    rewrite = as_mapping(vs, http.get("rewrite"), f"{where}.rewrite")
    clusters, dest_ops = _clusters(vs, as_list(vs, http["route"], f"{where}.route"), f"{where}.route", scope)
    return RouteAction(
        clusters=clusters,
        timeout=as_duration(vs, http.get("timeout"), f"{where}.timeout"),
        retry=_retries(vs, http.get("retries"), f"{where}.retries"),
        prefix_rewrite=str(rewrite["uri"]) if rewrite.get("uri") is not None else None,
        host_rewrite=str(rewrite["authority"]) if rewrite.get("authority") else None,
    ), dest_ops


def _clusters(
    vs: Resource, entries: Sequence[Any], where: str, scope: RouteScope,
) -> tuple[tuple[WeightedCluster, ...], HeaderOps | None]:
    """Weighted clusters of ``route[]``: one destination gets everything; weights all omitted split evenly.

    Per-destination ``headers`` apply to the route when there is one
    destination entry; with several they are ignored with a warning.
    """
    weights: dict[str, int] = {}
    explicit = False
    dest_ops: HeaderOps | None = None
    for k, entry in enumerate(entries):
        at = f"{where}[{k}]"
        entry = as_mapping(vs, entry, at)
        if "headers" in entry:
            if len(entries) == 1:
                dest_ops = header_ops(vs, entry["headers"], f"{at}.headers")
            else:
                warn_unsupported(vs, f"{where}[*].headers (per-destination headers with several destinations)")
        dest = as_mapping(vs, entry.get("destination"), f"{at}.destination")
        name = _destination(vs, dest, f"{at}.destination", scope)
        weight = entry.get("weight")
        explicit = explicit or weight is not None
        weights[name] = weights.get(name, 0) + (as_int(vs, weight, f"{at}.weight") if weight is not None else 0)
    if len(weights) == 1:
        return (WeightedCluster(next(iter(weights))),), dest_ops
    if not explicit or not sum(weights.values()):
        return tuple(WeightedCluster(name, 1) for name in weights), dest_ops
    return tuple(WeightedCluster(name, w) for name, w in weights.items()), dest_ops


def _destination(vs: Resource, dest: Mapping[str, Any], where: str, scope: RouteScope) -> str:
    """The cluster name of a ``destination`` (host resolved in the VirtualService's namespace)."""
    if not dest.get("host"):
        raise ResourceError(vs, f"{where}.host", "required")
    fqdn = scope.resolve(str(dest["host"]), vs.namespace)
    number = as_mapping(vs, dest.get("port"), f"{where}.port").get("number")
    written = as_int(vs, number, f"{where}.port.number") if number is not None else None
    try:
        port = scope.clusters.destination_port(fqdn, written, scope.port)
    except PortError as exc:
        raise ResourceError(vs, f"{where}.port.number", str(exc)) from None
    return scope.clusters.want(fqdn, port, str(dest.get("subset") or ""))


#: Istio's retry conditions when a route's ``retries`` has no ``retryOn``.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,503"


def _retries(vs: Resource, value: Any, where: str) -> RetryPolicy | None:
    """``retries``: status codes in ``retryOn`` become retriable status codes, as in Istio.

    Without ``retryOn`` Istio's default conditions apply: connection failures,
    refused streams and status 503 (its gRPC-only ``unavailable`` and
    ``cancelled`` have no HTTP/1 meaning).
    """
    spec = as_mapping(vs, value, where)
    if not spec:
        return None
    retry_on, codes = [], []
    for token in str(spec.get("retryOn") or DEFAULT_RETRY_ON).split(","):
        token = token.strip()
        if token.isdigit():
            codes.append(int(token))
        elif token:
            retry_on.append(token)
    if codes and "retriable-status-codes" not in retry_on:
        retry_on.append("retriable-status-codes")
    return RetryPolicy(
        attempts=as_int(vs, spec.get("attempts", 0), f"{where}.attempts"),
        per_try_timeout=as_duration(vs, spec.get("perTryTimeout"), f"{where}.perTryTimeout"),
        retry_on=tuple(retry_on),
        retriable_status_codes=tuple(codes),
    )


def _redirect(vs: Resource, spec: Mapping[str, Any], where: str) -> Redirect:
    """``redirect``: `port` wins over ``derivePort`` (``FROM_PROTOCOL_DEFAULT`` drops the port from
    the location, ``FROM_REQUEST_PORT`` keeps the request's), as in Istio."""
    port = as_int(vs, spec["port"], f"{where}.port") if spec.get("port") is not None else None
    derive = spec.get("derivePort")
    if port is None and derive is not None:
        if derive not in ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"):
            raise ResourceError(vs, f"{where}.derivePort",
                                f"expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT, got {derive!r}")
        port = 0 if derive == "FROM_PROTOCOL_DEFAULT" else None
    scheme = spec.get("scheme")
    if scheme is not None and scheme not in ("http", "https"):
        raise ResourceError(vs, f"{where}.scheme", f"expected http or https, got {scheme!r}")
    return Redirect(
        path=str(spec["uri"]) if spec.get("uri") else None,
        host=str(spec["authority"]) if spec.get("authority") else None,
        status=as_int(vs, spec.get("redirectCode", 301), f"{where}.redirectCode"),
        scheme=scheme,
        port=port,
    )


def _direct(vs: Resource, spec: Mapping[str, Any], where: str) -> DirectResponse:
    if "status" not in spec:
        raise ResourceError(vs, f"{where}.status", "required")
    body = as_mapping(vs, spec.get("body"), f"{where}.body")
    text = str(body.get("string") or "")
    if body.get("bytes"):
        try:
            text = base64.b64decode(str(body["bytes"]), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            raise ResourceError(vs, f"{where}.body.bytes", "expected base64") from None
    return DirectResponse(status=as_int(vs, spec["status"], f"{where}.status"), body=text)
