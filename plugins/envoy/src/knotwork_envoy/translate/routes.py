"""``RouteTable`` → Envoy ``config.route.v3.RouteConfiguration`` (RDS).

Follows the semantics of the ``host`` router the native engine runs:

- a virtual host per compiled one, same domains; a plain domain ``d`` also
  gets ``d:*`` (unless another virtual host claims it), since the native
  router retries an authority without its port and Envoy does not;
- routes in order, first match wins: prefix / exact path / RE2 regex,
  header and query matchers, weighted clusters, timeout (none when unset:
  Envoy's default of 15 s would cut long requests the native engine serves),
  retries (unset: the native default, 2 retries on ``connect-failure`` and
  ``refused-stream``, on another endpoint when there is one), rewrites,
  direct responses, redirects, request and response header operations
  (set → ``OVERWRITE_IF_EXISTS_OR_ADD``, add → ``APPEND_IF_EXISTS_OR_ADD``,
  remove → ``*_headers_to_remove``), mirrors (``request_mirror_policies``
  with a ``runtime_fraction``), and per-route configs of the fault and cors
  filters (``typed_per_filter_config``; the filters are in every HTTP
  listener's chain, see :mod:`.listeners`);
- in a table behind an ``http_proxy`` listener (`tunnels`), each virtual
  host whose routes include a catch-all forward also gets a
  ``connect_matcher`` route first, terminating ``CONNECT host:port`` into a
  TCP tunnel to the same clusters. (A route that enables CONNECT does so
  whatever the listener says, so other tables must not have one.)

Routes with ``source_labels`` are left out: the native engine matches them
against the local workload's labels, which sidecars do not know yet, so
they never match there either.
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import (
    CorsPolicy,
    FaultPolicy,
    HeaderMatch,
    MirrorPolicy,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    RouteTable,
    StringMatch,
    VirtualHost,
)

from .common import TranslationError, duration, escape_format, header_option, typed

__all__ = ["CORS_FILTER", "DEFAULT_RETRY", "FAULT_FILTER", "RETRY_TOKENS", "route_configuration"]

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
HTTP_FAULT = "envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS_POLICY = "envoy.extensions.filters.http.cors.v3.CorsPolicy"
PREVIOUS_HOSTS = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
RETRY_TOKENS = frozenset({
    "5xx", "gateway-error", "connect-failure", "reset", "reset-before-request", "retriable-4xx",
    "retriable-status-codes", "refused-stream",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
#: The native engine's default when a route names no policy (see its runtime).
DEFAULT_RETRY = RetryPolicy(attempts=2, retry_on=("connect-failure", "refused-stream"))
REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                  308: "PERMANENT_REDIRECT"}
#: Direct responses may carry bodies this large (Envoy's default is 4 KiB).
MAX_DIRECT_BODY = 1 << 20


def route_configuration(table: RouteTable, tunnels: bool = False) -> dict[str, Any]:
    """The RDS resource of `table` (proto-JSON); raises TranslationError.

    `tunnels`: the table serves an ``http_proxy`` listener, so ``CONNECT`` is routed.
    """
    where = f"route table {table.name!r}"
    if table.router != "host":
        raise TranslationError(f"{where}: router {table.router!r}: only the 'host' router is compiled to Envoy")
    claimed = {d.lower() for vh in table.virtual_hosts for d in vh.domains}
    vhosts = []
    for vh in table.virtual_hosts:
        vwhere = f"{where} virtual host {vh.name!r}"
        if not vh.domains:
            raise TranslationError(f"{vwhere}: no domains")
        domains = list(vh.domains)
        for domain in vh.domains:
            any_port = f"{domain}:*".lower()
            if "*" not in domain and ":" not in domain and any_port not in claimed:
                claimed.add(any_port)
                domains.append(any_port)
        routes = [route(r, f"{vwhere} route {r.name!r}") for r in vh.routes if not r.match.source_labels]
        connect = connect_route(vh) if tunnels else None
        vhosts.append({"name": vh.name, "domains": domains, "routes": ([connect] if connect else []) + routes})
    return {
        "name": table.name,
        "virtual_hosts": vhosts,
        "validate_clusters": False,
        "max_direct_response_body_size_bytes": MAX_DIRECT_BODY,
    }


def _is_catch_all(match: RouteMatch) -> bool:
    return (match.prefix in (None, "", "/") and match.path is None and match.regex is None
            and not match.headers and not match.query and not match.source_labels and match.port is None)


def connect_route(vh: VirtualHost) -> dict[str, Any] | None:
    """The CONNECT route of a virtual host: its first catch-all forward, as a TCP tunnel."""
    for r in vh.routes:
        if r.action is not None and _is_catch_all(r.match):
            action = _clusters(r.action, f"virtual host {vh.name!r} route {r.name!r}")
            action["timeout"] = "0s"
            action["upgrade_configs"] = [{"upgrade_type": "CONNECT", "connect_config": {}}]
            return {"name": f"{r.name}/connect", "match": {"connect_matcher": {}}, "route": action}
    return None


def route(r: Route, where: str) -> dict[str, Any]:
    """One Envoy route: match and exactly one of route, direct_response, redirect."""
    kinds = [k for k in (r.action, r.direct, r.redirect) if k is not None]
    if len(kinds) != 1:
        raise TranslationError(f"{where}: a route needs exactly one of action, direct, redirect (has {len(kinds)})")
    for ext in r.extensions:
        raise TranslationError(f"{where}: extension {ext.name!r} (plugin {ext.plugin!r}) is not supported by the envoy engine")
    out: dict[str, Any] = {"name": r.name, "match": match(r.match, where)}
    if r.action is not None:
        out["route"] = action(r.action, where)
        timeout = r.action.timeout or (r.action.retry.per_try_timeout if r.action.retry else None)
        if timeout:
            out["metadata"] = {"filter_metadata": {"knotwork": {"timeout": f"{timeout:g}s"}}}
    elif r.direct is not None:
        if not 100 <= r.direct.status <= 599:
            raise TranslationError(f"{where}: direct response status {r.direct.status} out of range")
        out["direct_response"] = {"status": r.direct.status}
        if r.direct.body:
            out["direct_response"]["body"] = {"inline_string": r.direct.body}
    else:
        assert r.redirect is not None
        if r.redirect.status not in REDIRECT_CODES:
            raise TranslationError(f"{where}: redirect status {r.redirect.status} is not one of {sorted(REDIRECT_CODES)}")
        redirect: dict[str, Any] = {"response_code": REDIRECT_CODES[r.redirect.status]}
        if r.redirect.path:
            redirect["path_redirect"] = r.redirect.path
        if r.redirect.host:
            redirect["host_redirect"] = r.redirect.host
        if r.redirect.scheme:
            redirect["scheme_redirect"] = r.redirect.scheme
        if r.redirect.port:  # 0 (no port): Envoy drops a request's :80 when it switches to https
            redirect["port_redirect"] = r.redirect.port
        out["redirect"] = redirect
    if r.action is not None and r.mirror:
        out["route"]["request_mirror_policies"] = [mirror_policy(m, where) for m in r.mirror]
    elif r.mirror:
        raise TranslationError(f"{where}: mirror needs a route action")
    for side in ("request", "response"):
        to_add = _headers_to_add(getattr(r, f"{side}_headers_set"), getattr(r, f"{side}_headers_add"))
        if to_add:
            out[f"{side}_headers_to_add"] = to_add
        remove = getattr(r, f"{side}_headers_remove")
        if remove:
            out[f"{side}_headers_to_remove"] = [name.lower() for name in remove]
    per_filter: dict[str, Any] = {}
    if r.fault is not None and (r.fault.delay is not None or r.fault.abort_status is not None):
        per_filter[FAULT_FILTER] = fault(r.fault, where)
    if r.cors is not None:
        per_filter[CORS_FILTER] = cors(r.cors, where)
    if per_filter:
        out["typed_per_filter_config"] = per_filter
    return out


def _headers_to_add(set_: Any, add: Any) -> list[dict[str, Any]]:
    return ([header_option(k.lower(), escape_format(v)) for k, v in set_.items()]
            + [header_option(k.lower(), escape_format(v), "APPEND_IF_EXISTS_OR_ADD") for k, v in add.items()])


# ── policies ────────────────────────────────────────────────────────────────


def fractional_percent(percent: float, where: str) -> dict[str, Any]:
    """A ``FractionalPercent`` per million, as Istio writes percentages."""
    if not 0 <= percent <= 100:
        raise TranslationError(f"{where}: percentage {percent} is not between 0 and 100")
    return {"numerator": round(percent * 10000), "denominator": "MILLION"}


def fault(f: FaultPolicy, where: str) -> dict[str, Any]:
    """The fault filter's per-route ``HTTPFault``."""
    config: dict[str, Any] = {}
    if f.delay is not None:
        if f.delay < 0:
            raise TranslationError(f"{where}: fault delay must be >= 0, got {f.delay}")
        config["delay"] = {"fixed_delay": duration(f.delay),
                           "percentage": fractional_percent(f.delay_percent, f"{where} fault delay")}
    if f.abort_status is not None:
        if not 200 <= f.abort_status <= 599:
            raise TranslationError(f"{where}: fault abort status {f.abort_status} out of range")
        config["abort"] = {"http_status": f.abort_status,
                           "percentage": fractional_percent(f.abort_percent, f"{where} fault abort")}
    return typed(HTTP_FAULT, **config)


def mirror_policy(m: MirrorPolicy, where: str) -> dict[str, Any]:
    return {"cluster": m.cluster,
            "runtime_fraction": {"default_value": fractional_percent(m.percent, f"{where} mirror {m.cluster!r}")}}


def _string_matcher(o: StringMatch, where: str) -> dict[str, Any]:
    if o.exact is not None:
        return {"exact": o.exact}
    if o.prefix is not None:
        return {"prefix": o.prefix}
    if o.regex is not None:
        return {"safe_regex": {"regex": o.regex}}
    raise TranslationError(f"{where}: an origin match needs one of exact, prefix, regex")


def cors(c: CorsPolicy, where: str) -> dict[str, Any]:
    """The cors filter's per-route ``CorsPolicy``."""
    config: dict[str, Any] = {
        "allow_origin_string_match": [_string_matcher(o, f"{where} cors origin") for o in c.allow_origins],
    }
    if c.allow_methods:
        config["allow_methods"] = ",".join(c.allow_methods)
    if c.allow_headers:
        config["allow_headers"] = ",".join(c.allow_headers)
    if c.expose_headers:
        config["expose_headers"] = ",".join(c.expose_headers)
    if c.max_age is not None:
        config["max_age"] = str(c.max_age)
    if c.allow_credentials is not None:
        config["allow_credentials"] = c.allow_credentials
    return typed(CORS_POLICY, **config)


# ── match ───────────────────────────────────────────────────────────────────


def match(m: RouteMatch, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.path is not None:
        out["path"] = m.path
    elif m.regex is not None:
        out["safe_regex"] = {"regex": m.regex}
    else:
        out["prefix"] = m.prefix or "/"
    headers = [header_matcher(h, f"{where} header {h.name!r}") for h in m.headers]
    if m.port is not None:
        # the authority's port (Envoy cannot fall back to the local port as the native router does)
        headers.append({"name": ":authority", "string_match": {"safe_regex": {"regex": f".*:{m.port}"}}})
    if headers:
        out["headers"] = headers
    if m.query:
        out["query_parameters"] = [query_matcher(q, f"{where} query parameter {q.name!r}") for q in m.query]
    return out


def _string_match(h: HeaderMatch) -> dict[str, Any] | None:
    if h.exact is not None:
        return {"exact": h.exact}
    if h.prefix:
        return {"prefix": h.prefix}
    if h.regex is not None:
        return {"safe_regex": {"regex": h.regex}}
    return None  # a presence match (an empty prefix matches any present value)


def header_matcher(h: HeaderMatch, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name.lower()}
    string = _string_match(h)
    if string is not None:
        out["string_match"] = string
    else:
        out["present_match"] = h.present is not False
    if h.invert:
        out["invert_match"] = True
    return out


def query_matcher(q: HeaderMatch, where: str) -> dict[str, Any]:
    if q.invert or q.present is False:
        raise TranslationError(f"{where}: Envoy cannot match the absence of a query parameter")
    string = _string_match(q)
    if string is None:
        return {"name": q.name, "present_match": True}
    return {"name": q.name, "string_match": string}


# ── action ──────────────────────────────────────────────────────────────────


def _clusters(a: RouteAction, where: str) -> dict[str, Any]:
    if any(w.weight < 0 for w in a.clusters):
        raise TranslationError(f"{where}: negative cluster weight")
    picked = [w for w in a.clusters if w.weight > 0]
    if not picked:
        raise TranslationError(f"{where}: route action has no cluster with a positive weight")
    if len(picked) == 1:
        return {"cluster": picked[0].cluster}
    return {"weighted_clusters": {"clusters": [{"name": w.cluster, "weight": w.weight} for w in picked]}}


def action(a: RouteAction, where: str) -> dict[str, Any]:
    out = _clusters(a, where)
    if a.timeout is not None and a.timeout < 0:
        raise TranslationError(f"{where}: timeout must be >= 0, got {a.timeout}")
    out["timeout"] = duration(a.timeout) if a.timeout else "0s"
    policy = retry_policy(DEFAULT_RETRY if a.retry is None else a.retry, where)
    if policy is not None:
        out["retry_policy"] = policy
    if a.prefix_rewrite is not None:
        out["prefix_rewrite"] = a.prefix_rewrite
    if a.host_rewrite:
        out["host_rewrite_literal"] = a.host_rewrite
    return out


def retry_policy(r: RetryPolicy, where: str) -> dict[str, Any] | None:
    """Envoy's ``RetryPolicy``; None when the policy never retries."""
    unknown = set(r.retry_on) - RETRY_TOKENS
    if unknown:
        raise TranslationError(f"{where}: unknown retry_on condition(s) {sorted(unknown)}")
    if r.attempts < 0:
        raise TranslationError(f"{where}: retry attempts must be >= 0, got {r.attempts}")
    if r.per_try_timeout is not None and r.per_try_timeout <= 0:
        raise TranslationError(f"{where}: per_try_timeout must be > 0, got {r.per_try_timeout}")
    if r.attempts == 0 or not r.retry_on:
        return None
    out: dict[str, Any] = {
        "retry_on": ",".join(r.retry_on),
        "num_retries": r.attempts,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": typed(PREVIOUS_HOSTS)}],
        "host_selection_retry_max_attempts": 3,
    }
    if r.per_try_timeout is not None:
        out["per_try_timeout"] = duration(r.per_try_timeout)
    if r.retriable_status_codes:
        out["retriable_status_codes"] = list(r.retriable_status_codes)
    return out
