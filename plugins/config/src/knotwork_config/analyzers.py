"""The checks of ``knotwork analyze``, each a function of :class:`~knotwork_config.analyze.Inputs`.

Istio's semantics throughout: hosts written in a resource resolve relative
to its namespace (``reviews`` in ``default`` is
``reviews.default.svc.cluster.local``), gateways are ``mesh``,
``<namespace>/<name>`` or a name relative to the resource's namespace, the
first HTTP route whose match fits wins. Checks that need the service
registry (``inputs.registry``) say so and are skipped when it is unknown.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .analyze import Finding, Inputs, Item

__all__ = ["ANALYZERS", "OFFLINE_SKIPPED", "run_all"]

MESH = "mesh"
_ROUTE_KINDS = ("http", "tcp", "tls")
#: What is not checked without the live registry (said once on stderr).
OFFLINE_SKIPPED = ("destination hosts and ports", "DestinationRule hosts", "Gateway selectors",
                   "gateways the platform declares in the root namespace")


def _q(value: Any) -> str:
    """A value quoted the way istioctl's messages quote them (Go's %q)."""
    return json.dumps(str(value))


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _map(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def covers(pattern: str, host: str) -> bool:
    """True when host pattern `pattern` (exact, ``*.suffix`` or ``*``) matches every name `host` can be."""
    if pattern in ("*", host):
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1 and host != "*"
    return False


def _overlap(a: str, b: str) -> bool:
    return covers(a, b) or covers(b, a)


def gateway_key(name: str, namespace: str) -> str:
    """``mesh``, or ``<namespace>/<name>`` for a gateway named in a resource of `namespace`."""
    name = name.strip()
    return name if name == MESH or "/" in name else f"{namespace}/{name}"


def _exported(res_namespace: str, export_to: Any) -> frozenset[str] | None:
    """Namespaces a resource is visible in; None = every namespace."""
    values = export_to if isinstance(export_to, list) and export_to else ["*"]
    out: set[str] = set()
    for v in values:
        if v == "*":
            return None
        if v == ".":
            out.add(res_namespace)
        elif v != "~":
            out.add(str(v))
    return frozenset(out)


# ── references: hosts, ports, subsets, gateways ────────────────────────────────

def _destinations(vs: Item) -> Iterator[tuple[tuple, Mapping]]:
    """(field path, destination) of every route and mirror destination of a VirtualService."""
    spec = vs.resource.spec
    for kind in _ROUTE_KINDS:
        for i, rule in enumerate(_list(spec.get(kind))):
            rule = _map(rule)
            for j, route in enumerate(_list(rule.get("route"))):
                dest = _map(route).get("destination")
                if isinstance(dest, Mapping):
                    yield ("spec", kind, i, "route", j, "destination"), dest
            if isinstance(rule.get("mirror"), Mapping):
                yield ("spec", kind, i, "mirror"), rule["mirror"]
            for j, mirror in enumerate(_list(rule.get("mirrors"))):
                dest = _map(mirror).get("destination")
                if isinstance(dest, Mapping):
                    yield ("spec", kind, i, "mirrors", j, "destination"), dest


class _Hosts:
    """What a destination host can be: a service of the registry or a ServiceEntry host."""

    def __init__(self, inputs: Inputs) -> None:
        self.services = dict(inputs.registry.services) if inputs.registry else {}
        self.entries: list[str] = []
        for se in inputs.of_kind("ServiceEntry"):
            for host in _list(se.resource.spec.get("hosts")):
                if isinstance(host, str) and host:
                    self.entries.append(host.strip().rstrip(".").lower())

    def known(self, fqdn: str, written: str = "") -> bool:
        if fqdn in self.services:
            return True
        return any(covers(p, fqdn) or p == written.lower() for p in self.entries)

    def known_pattern(self, pattern: str) -> bool:
        """A host pattern (maybe a wildcard) that names at least one known host."""
        if self.known(pattern):
            return True
        return pattern.startswith("*") and any(covers(pattern, h) for h in [*self.services, *self.entries])


def destination_references(inputs: Inputs) -> Iterator[Finding]:
    """KW0101 hosts, host:port and host+subset not found; KW0112 a port needed (Istio's destination analyzers)."""
    hosts = _Hosts(inputs)
    rules: list[tuple[str, Item]] = [
        (inputs.resolve(str(dr.resource.spec.get("host") or ""), dr.resource.namespace), dr)
        for dr in inputs.of_kind("DestinationRule")]
    for vs in inputs.of_kind("VirtualService"):
        for path, dest in _destinations(vs):
            host = dest.get("host")
            if not isinstance(host, str) or not host:
                continue
            fqdn = inputs.resolve(host, vs.resource.namespace)
            port = _map(dest.get("port")).get("number")
            if inputs.registry is not None:
                if not hosts.known(fqdn, host):
                    yield vs.finding("KW0101", (*path, "host"), f"Referenced host not found: {_q(host)}")
                elif fqdn in hosts.services:
                    ports = hosts.services[fqdn]
                    if isinstance(port, int) and port not in ports:
                        yield vs.finding("KW0101", (*path, "port", "number"),
                                         f"Referenced host:port not found: {_q(f'{host}:{port}')}")
                    elif port is None and len(ports) > 1:
                        yield vs.finding("KW0112", path, f"This VirtualService routes to a service {_q(host)} that "
                                                         f"exposes multiple ports {list(ports)}. Specifying a port in "
                                                         f"the destination is required to disambiguate.")
            subset = dest.get("subset")
            if isinstance(subset, str) and subset and not any(
                    covers(rule_host, fqdn) and any(_map(s).get("name") == subset
                                                    for s in _list(dr.resource.spec.get("subsets")))
                    for rule_host, dr in rules):
                yield vs.finding("KW0101", (*path, "subset"),
                                 f"Referenced host+subset in destinationrule not found: {_q(f'{host}+{subset}')}")


def gateway_references(inputs: Inputs) -> Iterator[Finding]:
    """KW0101 a gateway named in ``gateways`` (or a match's ``gateways``) that no Gateway defines."""
    known = {f"{g.resource.namespace}/{g.resource.name}" for g in inputs.of_kind("Gateway")}
    for vs in inputs.of_kind("VirtualService"):
        spec, ns = vs.resource.spec, vs.resource.namespace
        written = [(("spec", "gateways", i), g) for i, g in enumerate(_list(spec.get("gateways")))]
        for kind in _ROUTE_KINDS:
            for i, rule in enumerate(_list(spec.get(kind))):
                for j, match in enumerate(_list(_map(rule).get("match"))):
                    written += [(("spec", kind, i, "match", j, "gateways", k), g)
                                for k, g in enumerate(_list(_map(match).get("gateways")))]
        for path, name in written:
            if not isinstance(name, str):
                continue
            key = gateway_key(name, ns)
            if key == MESH or key in known:
                continue
            if inputs.registry is None and inputs.mesh.is_root_namespace(key.split("/", 1)[0]):
                continue  # maybe declared by the platform (knotwork up's ingress): known only when running
            yield vs.finding("KW0101", path, f"Referenced gateway not found: {_q(name)}")


def gateway_selectors(inputs: Inputs) -> Iterator[Finding]:
    """KW0101 a Gateway whose selector matches no gateway proxy (registry needed)."""
    if inputs.registry is None:
        return
    for gw in inputs.of_kind("Gateway"):
        selector = gw.resource.spec.get("selector")
        if not isinstance(selector, Mapping):
            continue
        if any(all(labels.get(str(k)) == str(v) for k, v in selector.items())
               for labels in inputs.registry.gateway_labels):
            continue
        if not selector and inputs.registry.gateway_labels:
            continue
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        yield gw.finding("KW0101", ("spec", "selector"), f"Referenced selector not found: {_q(text)}")


def destination_rule_hosts(inputs: Inputs) -> Iterator[Finding]:
    """KW1001 a DestinationRule for a host that is neither a service nor a ServiceEntry host (registry needed)."""
    if inputs.registry is None:
        return
    hosts = _Hosts(inputs)
    for dr in inputs.of_kind("DestinationRule"):
        host = dr.resource.spec.get("host")
        if not isinstance(host, str) or not host:
            continue
        if not hosts.known_pattern(inputs.resolve(host, dr.resource.namespace)):
            yield dr.finding("KW1001", ("spec", "host"),
                             f"DestinationRule host not found among services and ServiceEntry hosts: {_q(host)}")


def gateway_hosts(inputs: Inputs) -> Iterator[Finding]:
    """KW0132 VirtualService hosts that no server of a bound Gateway exposes."""
    gateways = {f"{g.resource.namespace}/{g.resource.name}": g for g in inputs.of_kind("Gateway")}
    for vs in inputs.of_kind("VirtualService"):
        ns = vs.resource.namespace
        hosts = [h for h in _list(vs.resource.spec.get("hosts")) if isinstance(h, str) and h]
        for name in _list(vs.resource.spec.get("gateways")):
            gw = gateways.get(gateway_key(name, ns)) if isinstance(name, str) else None
            if gw is None:
                continue
            allowed: list[str] = []
            for server in _list(gw.resource.spec.get("servers")):
                for entry in _list(_map(server).get("hosts")) or ["*"]:
                    filter_ns, sep, pattern = str(entry).rpartition("/")
                    filter_ns = filter_ns if sep else "*"
                    filter_ns = gw.resource.namespace if filter_ns == "." else filter_ns
                    if filter_ns in ("*", ns):
                        allowed.append(pattern.lower())
            missing = [h for h in hosts if not any(_overlap(p, inputs.resolve(h, ns)) or _overlap(p, h.lower())
                                                   for p in allowed)]
            if missing:
                yield vs.finding("KW0132", ("spec", "hosts"),
                                 f"one or more host {missing} defined in VirtualService {ns}/{vs.resource.name} "
                                 f"not found in Gateway {gw.resource.namespace}/{gw.resource.name}.")


# ── VirtualService semantics ───────────────────────────────────────────────────

def conflicting_mesh_hosts(inputs: Inputs) -> Iterator[Finding]:
    """KW0109 several VirtualServices bound to the mesh gateway define one host, visible in one namespace."""
    owners: dict[str, list[tuple[Item, int, frozenset[str] | None]]] = defaultdict(list)
    for vs in inputs.of_kind("VirtualService"):
        spec = vs.resource.spec
        gateways = spec.get("gateways") or [MESH]
        if not isinstance(gateways, list) or MESH not in gateways:
            continue
        visible = _exported(vs.resource.namespace, spec.get("exportTo"))
        for i, host in enumerate(_list(spec.get("hosts"))):
            if isinstance(host, str) and host and host != "*":
                owners[inputs.resolve(host, vs.resource.namespace)].append((vs, i, visible))
    for host, entries in owners.items():
        for vs, i, visible in entries:
            others = [o for o, _, v in entries if o.key != vs.key
                      and (visible is None or v is None or visible & v)]
            if not others:
                continue
            names = ",".join(sorted(f"{o.resource.namespace}/{o.resource.name}" for o in [vs, *others]))
            yield vs.finding("KW0109", ("spec", "hosts", i),
                             f"The VirtualServices {names} associated with mesh gateway define the same host {host} "
                             f"which can lead to undefined behavior. This can be fixed by merging the conflicting "
                             f"VirtualServices into a single resource.")


def route_weights(inputs: Inputs) -> Iterator[Finding]:
    """KW1002 a route with several destinations whose weights do not sum to 100."""
    for vs in inputs.of_kind("VirtualService"):
        for kind in _ROUTE_KINDS:
            for i, rule in enumerate(_list(vs.resource.spec.get(kind))):
                routes = [r for r in _list(_map(rule).get("route")) if isinstance(r, Mapping)]
                if len(routes) < 2:
                    continue
                weights = [r.get("weight") for r in routes]
                if not all(w is None or (isinstance(w, int) and not isinstance(w, bool)) for w in weights):
                    continue  # a schema error, reported as such
                total = sum(w or 0 for w in weights)
                if total == 100:
                    continue
                how = "split evenly" if total == 0 else "split in proportion to the weights"
                yield vs.finding("KW1002", ("spec", kind, i, "route"),
                                 f"The weights of the {len(routes)} destinations sum to {total}, not 100 "
                                 f"(traffic is {how}).")


_CATCH_ALL_URIS = ({"prefix": "/"}, {"prefix": ""}, {"regex": ".*"})
_IGNORED = ("name", "statPrefix")


def _condition(match: Mapping) -> dict:
    return {k: v for k, v in match.items() if k not in _IGNORED}


def is_catch_all(match: Any) -> bool:
    """A match every request fits: ``{}``, or only ``uri`` prefix ``/`` (or regex ``.*``)."""
    if not isinstance(match, Mapping):
        return False
    cond = _condition(match)
    cond.pop("ignoreUriCase", None)
    return not cond or (set(cond) == {"uri"} and cond["uri"] in _CATCH_ALL_URIS)


def _string_covers(a: Any, b: Any) -> bool:
    """StringMatch `a` matches every string StringMatch `b` does."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    if a == b or not a:  # equal, or `a` only asks for presence
        return bool(b) or a == b
    if set(a) == {"prefix"} and isinstance(a["prefix"], str):
        for kind in ("exact", "prefix"):
            if set(b) == {kind} and isinstance(b[kind], str) and b[kind].startswith(a["prefix"]):
                return True
    return set(a) == {"regex"} and a["regex"] == ".*" and bool(b)


def _named_covers(a: Any, b: Any) -> bool:
    """Every (name, StringMatch) of `a` is implied by `b`'s entry of that name (headers, queryParams)."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    lower = {str(k).lower(): v for k, v in b.items()}
    return all(str(k).lower() in lower and _string_covers(v, lower[str(k).lower()]) for k, v in a.items())


def match_covers(a: Any, b: Any) -> bool:
    """Every request HTTPMatchRequest `b` matches is matched by `a` (conservative: False when unsure)."""
    if is_catch_all(a):
        return True
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    a, b = _condition(a), _condition(b)
    if "uri" in a and bool(a.get("ignoreUriCase")) != bool(b.get("ignoreUriCase")):
        return False
    for key, want in a.items():
        have = b.get(key)
        if key == "ignoreUriCase":
            continue
        if key in ("uri", "scheme", "method", "authority"):
            ok = _string_covers(want, have)
        elif key in ("headers", "queryParams"):
            ok = _named_covers(want, have)
        elif key == "withoutHeaders":
            ok = isinstance(want, Mapping) and isinstance(have, Mapping) and all(
                have.get(k) == v for k, v in want.items())
        elif key == "sourceLabels":
            ok = isinstance(want, Mapping) and isinstance(have, Mapping) and all(
                have.get(k) == v for k, v in want.items())
        elif key == "gateways":
            ok = isinstance(want, list) and isinstance(have, list) and bool(have) and set(have) <= set(want)
        elif key in ("port", "sourceNamespace"):
            ok = have is not None and have == want
        else:
            ok = False
        if not ok:
            return False
    return True


def _rule_name(rule: Mapping, index: int) -> str:
    name = rule.get("name")
    return name if isinstance(name, str) and name else f"#{index}"


def shadowed_routes(inputs: Inputs) -> Iterator[Finding]:
    """KW0130 an HTTP route never used (after an unconditional one, or all its matches taken); KW0131 one match."""
    for vs in inputs.of_kind("VirtualService"):
        earlier: list[tuple[str, str, Any]] = []  # (rule name, match name, match)
        unconditional: str | None = None
        for i, rule in enumerate(_list(vs.resource.spec.get("http"))):
            if not isinstance(rule, Mapping):
                continue
            name = _rule_name(rule, i)
            matches = _list(rule.get("match"))
            if unconditional is not None:
                yield vs.finding("KW0130", ("spec", "http", i),
                                 f"VirtualService rule {name} not used (only the last rule can have no matches; "
                                 f"rule {unconditional} matches every request).")
                continue
            if not matches or any(is_catch_all(m) for m in matches):
                unconditional = name
                continue
            covered: list[tuple[int, str]] = []
            for k, match in enumerate(matches):
                by = next((rule_name for rule_name, _, m in earlier if match_covers(m, match)), None)
                if by is not None:
                    covered.append((k, by))
            if len(covered) == len(matches):
                yield vs.finding("KW0130", ("spec", "http", i),
                                 f"VirtualService rule {name} not used (all matches used by prior rules: "
                                 f"{', '.join(sorted(set(by for _, by in covered)))}).")
            else:
                for k, by in covered:
                    yield vs.finding("KW0131", ("spec", "http", i, "match", k),
                                     f"VirtualService rule {name} match {_rule_name(_map(matches[k]), k)} is not used "
                                     f"(duplicate/overlapping match in rule {by}).")
            earlier += [(name, _rule_name(_map(m), k), m) for k, m in enumerate(matches)]


def _regexes(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, Mapping) and isinstance(value.get("regex"), str):
        yield (*path, "regex"), value["regex"]


def regexes(inputs: Inputs) -> Iterator[Finding]:
    """KW0122 regular expressions of HTTP matches and CORS origins that do not compile."""
    for vs in inputs.of_kind("VirtualService"):
        for i, rule in enumerate(_list(vs.resource.spec.get("http"))):
            rule = _map(rule)
            found: list[tuple[tuple, str]] = []
            for k, match in enumerate(_list(rule.get("match"))):
                match, at = _map(match), ("spec", "http", i, "match", k)
                for key in ("uri", "scheme", "method", "authority"):
                    found += _regexes(match.get(key), (*at, key))
                for key in ("headers", "queryParams", "withoutHeaders"):
                    for name, value in _map(match.get(key)).items():
                        found += _regexes(value, (*at, key, name))
            for k, origin in enumerate(_list(_map(rule.get("corsPolicy")).get("allowOrigins"))):
                found += _regexes(origin, ("spec", "http", i, "corsPolicy", "allowOrigins", k))
            for path, pattern in found:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    yield vs.finding("KW0122", path, f"Field {_q(path[-2])} regular expression invalid: "
                                                     f"{_q(pattern)} ({exc})")


Analyzer = Callable[[Inputs], Iterator[Finding]]

# ── mTLS: DestinationRule tls against the servers' PeerAuthentication ─────────

_PEER_MODES = ("DISABLE", "PERMISSIVE", "STRICT")


def _tls_blocks(spec: Mapping) -> Iterator[tuple[tuple, Mapping]]:
    """(field path, tls) of every ``tls`` of a DestinationRule: rule, port levels, subsets and their port levels."""
    policies = [(("spec", "trafficPolicy"), _map(spec.get("trafficPolicy")))]
    policies += [(("spec", "subsets", i, "trafficPolicy"), _map(_map(subset).get("trafficPolicy")))
                 for i, subset in enumerate(_list(spec.get("subsets")))]
    for path, policy in policies:
        if isinstance(policy.get("tls"), Mapping):
            yield (*path, "tls"), policy["tls"]
        for i, level in enumerate(_list(policy.get("portLevelSettings"))):
            if isinstance(_map(level).get("tls"), Mapping):
                yield (*path, "portLevelSettings", i, "tls"), level["tls"]


def mtls_conflicts(inputs: Inputs) -> Iterator[Finding]:
    """KW0113 a DestinationRule tls mode the destination's mesh or namespace PeerAuthentication refuses.

    ``DISABLE`` (plaintext) to a namespace whose policy is ``STRICT``, or
    ``ISTIO_MUTUAL`` to one whose policy is ``DISABLE`` (Istio's
    ``MTLSPolicyConflict``, IST0113). Only service hosts (``name.ns.svc.…``)
    and the mesh- and namespace-wide policies (no selector) are compared;
    ``UNSET`` inherits, the default is ``PERMISSIVE``; the first policy of a
    level wins, as in the compiler.
    """
    mesh = inputs.mesh
    mesh_level: Item | None = None
    namespace_level: dict[str, Item] = {}
    for item in inputs.of_kind("PeerAuthentication"):
        if _map(_map(item.resource.spec.get("selector")).get("matchLabels")):
            continue
        if mesh.is_root_namespace(item.resource.namespace):
            mesh_level = mesh_level or item
        else:
            namespace_level.setdefault(item.resource.namespace, item)
    if mesh_level is None and not namespace_level:
        return

    def server(namespace: str) -> tuple[str, Item | None]:
        mode, decided = "PERMISSIVE", None
        levels = [mesh_level] if mesh.is_root_namespace(namespace) else [mesh_level, namespace_level.get(namespace)]
        for item in levels:
            written = _map(item.resource.spec.get("mtls")).get("mode") if item is not None else None
            if written in _PEER_MODES:
                mode, decided = written, item
        return mode, decided

    for dr in inputs.of_kind("DestinationRule"):
        host = inputs.resolve(str(dr.resource.spec.get("host") or ""), dr.resource.namespace)
        parts = host.split(".")
        if "*" in host or len(parts) < 4 or parts[2] != "svc":
            continue
        mode, policy = server(parts[1])
        if policy is None:
            continue
        for path, tls in _tls_blocks(dr.resource.spec):
            client = tls.get("mode", "DISABLE")
            if (client, mode) not in (("DISABLE", "STRICT"), ("ISTIO_MUTUAL", "DISABLE")):
                continue
            sends = "plaintext" if client == "DISABLE" else "mTLS"
            accepts = "only mTLS" if mode == "STRICT" else "only plaintext"
            where = f"{policy.resource.namespace}/{policy.resource.name}"
            yield dr.finding("KW0113", (*path, "mode") if "mode" in tls else path, (
                f"A DestinationRule and PeerAuthentication are in conflict with regards to mTLS for host {_q(host)}: "
                f"tls mode {client} sends {sends}, but PeerAuthentication {where} (mode {mode}) makes its "
                f"servers accept {accepts}"))


#: name -> analyzer, in the order they run.
ANALYZERS: dict[str, Analyzer] = {
    "destination-references": destination_references,
    "gateway-references": gateway_references,
    "gateway-selectors": gateway_selectors,
    "destinationrule-hosts": destination_rule_hosts,
    "gateway-hosts": gateway_hosts,
    "conflicting-mesh-hosts": conflicting_mesh_hosts,
    "route-weights": route_weights,
    "shadowed-routes": shadowed_routes,
    "regexes": regexes,
    "mtls-conflicts": mtls_conflicts,
}


def run_all(inputs: Inputs) -> list[Finding]:
    """The loading findings plus every analyzer's; a failing analyzer is one KW0001 finding, not a traceback."""
    findings = list(inputs.findings)
    for name, analyzer in ANALYZERS.items():
        try:
            findings.extend(analyzer(inputs))
        except Exception as exc:  # noqa: BLE001 - report the bug, keep the other analyzers' findings
            findings.append(Finding("KW0001", f"Internal error: analyzer {name} failed: {type(exc).__name__}: {exc}"))
    return findings
