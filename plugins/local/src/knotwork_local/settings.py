"""Settings of the `local` platform: the `local:` section of the mesh file.

Every field is typed, defaulted (or required where it names something) and
described; the kernel's ``load_mesh`` structures the section strictly and
then calls :meth:`LocalSettings.problems` for the cross-field checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import attrs

from knotwork.model import Protocol, port_protocol

__all__ = [
    "IngressRoute",
    "IngressSettings",
    "LocalSettings",
    "PortSettings",
    "ReadinessSettings",
    "UpstreamSettings",
    "WorkloadSettings",
]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Stop budget of `up` is 5 s; sidecars must finish draining well before it.
MAX_DRAIN = 3.0

Problem = tuple[tuple, str]


def _non_negative(_: Any, __: Any, value: int) -> None:
    if value < 0:
        raise ValueError(f"expected an integer ≥ 0, got {value}")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen
class PortSettings:
    """One port the workload's app listens on (also a port of its service)."""

    port: int = attrs.field(metadata=_help("service port number (the app itself gets a free loopback port)"))
    name: str = attrs.field(default="", metadata=_help("port name; its prefix (http-, grpc-, tcp-) gives the protocol"))
    protocol: str = attrs.field(default="", metadata=_help("HTTP, HTTP2, GRPC, TCP or TLS; empty: from the name"))

    @property
    def resolved_protocol(self) -> Protocol:
        return port_protocol(self.name, self.protocol or None)


@attrs.frozen
class UpstreamSettings:
    """A TCP service the app reaches through a loopback listener of its sidecar."""

    service: str = attrs.field(metadata=_help("service name (short, name.namespace or FQDN)"))
    port: int = attrs.field(metadata=_help("service port"))


@attrs.frozen
class ReadinessSettings:
    """How `up` decides an instance is ready to receive traffic."""

    http: str | None = attrs.field(default=None, metadata=_help("HTTP GET this path on the app port; 200-399 is ready"))
    tcp: bool = attrs.field(default=False, metadata=_help("ready when the app port accepts a TCP connection"))
    period: float = attrs.field(default=2.0, metadata=_help("seconds between probes once ready"))
    timeout: float = attrs.field(default=1.0, metadata=_help("seconds one probe may take"))
    failure_threshold: int = attrs.field(default=3, validator=_non_negative,
                                         metadata=_help("failed probes in a row that make a ready instance unready"))


@attrs.frozen
class WorkloadSettings:
    """A workload: `replicas` instances of one command, each with a sidecar."""

    name: str = attrs.field(metadata=_help("workload name; instances are <name>-<n>, n from 1"))
    service: str = attrs.field(metadata=_help("the service its instances are endpoints of"))
    namespace: str = attrs.field(default="default", metadata=_help("namespace of the workload and its service"))
    service_account: str = attrs.field(default="", metadata=_help("service account (identity); empty: the service name"))
    labels: dict[str, str] = attrs.field(factory=dict, metadata=_help("labels; `app` defaults to the service name"))
    command: tuple[str, ...] = attrs.field(default=(), metadata=_help(
        "argv run in the mesh directory; a first element `python` is this interpreter"))
    env: dict[str, str] = attrs.field(factory=dict, metadata=_help("extra environment variables"))
    ports: tuple[PortSettings, ...] = attrs.field(default=(), metadata=_help("ports the app serves"))
    replicas: int = attrs.field(default=1, validator=_non_negative, metadata=_help("number of instances (≥ 0)"))
    upstreams: tuple[UpstreamSettings, ...] = attrs.field(default=(), metadata=_help(
        "TCP upstreams: a loopback listener each, address in env <SERVICE>_ADDR"))
    readiness: ReadinessSettings | None = attrs.field(default=None, metadata=_help(
        "readiness probe ({http: PATH} or {tcp: true}); none: ready once started"))

    @property
    def resolved_service_account(self) -> str:
        return self.service_account or self.service

    @property
    def resolved_labels(self) -> dict[str, str]:
        return {"app": self.service, **self.labels}

    def instance_names(self) -> list[str]:
        return [f"{self.name}-{n}" for n in range(1, self.replicas + 1)]


@attrs.frozen
class IngressRoute:
    """A path on the ingress gateway sent to a service port (exactly one matcher)."""

    service: str = attrs.field(metadata=_help("destination service (declared by a workload)"))
    port: int = attrs.field(metadata=_help("destination service port"))
    prefix: str | None = attrs.field(default=None, metadata=_help("match a path prefix"))
    exact: str | None = attrs.field(default=None, metadata=_help("match an exact path"))
    regex: str | None = attrs.field(default=None, metadata=_help("match a path regex (RE2 syntax)"))
    namespace: str = attrs.field(default="default", metadata=_help("namespace of the destination service"))

    @property
    def match(self) -> dict[str, str]:
        return {k: v for k, v in (("prefix", self.prefix), ("exact", self.exact), ("regex", self.regex)) if v is not None}


@attrs.frozen
class IngressSettings:
    """The ingress gateway: its port and the routes compiled into Istio resources."""

    port: int = attrs.field(default=0, metadata=_help("127.0.0.1 port; 0: a free port (`up --ingress-port` overrides)"))
    routes: tuple[IngressRoute, ...] = attrs.field(default=(), metadata=_help(
        "routes, in order, compiled into a Gateway and a VirtualService named `ingress`"))


@attrs.frozen
class LocalSettings:
    """The `local` platform: workloads as processes on loopback, with `knotwork up`."""

    drain_timeout: float = attrs.field(default=3.0, metadata=_help(
        "seconds a sidecar drains in-flight requests on stop (at most 3.0)"))
    ingress: IngressSettings = attrs.field(factory=IngressSettings, metadata=_help("the ingress gateway"))
    workloads: tuple[WorkloadSettings, ...] = attrs.field(default=(), metadata=_help("the workloads `up` runs"))

    def services(self) -> dict[tuple[str, str], dict[int, PortSettings]]:
        """(service, namespace) -> port number -> first declaration of that port."""
        found: dict[tuple[str, str], dict[int, PortSettings]] = {}
        for w in self.workloads:
            ports = found.setdefault((w.service, w.namespace), {})
            for p in w.ports:
                ports.setdefault(p.port, p)
        return found

    def problems(self) -> list[Problem]:
        """Cross-field problems: (path within the section, "expected X, got Y")."""
        out: list[Problem] = []
        if not 0 <= self.drain_timeout <= MAX_DRAIN:
            out.append((("drain_timeout",), f"expected seconds between 0 and {MAX_DRAIN}, got {self.drain_timeout}"))
        if not 0 <= self.ingress.port <= 65535:
            out.append((("ingress", "port"), f"expected a port 0-65535, got {self.ingress.port}"))
        out.extend(self._workload_problems())
        out.extend(self._route_problems())
        return out

    def _workload_problems(self) -> Iterator[Problem]:
        names: dict[str, int] = {}
        declared: dict[tuple[str, str, int], tuple[str, PortSettings]] = {}
        for i, w in enumerate(self.workloads):
            at = ("workloads", i)
            for field in ("name", "service", "namespace"):
                value = getattr(w, field)
                if not _DNS_LABEL.match(value):
                    yield (*at, field), f"expected a DNS label (lowercase letters, digits, '-'), got {value!r}"
            if w.name in names:
                yield (*at, "name"), f"expected a unique workload name, got {w.name!r} again (first at workloads[{names[w.name]}])"
            names.setdefault(w.name, i)
            if not w.command:
                yield (*at, "command"), "expected a non-empty command, got []"
            seen: set[int] = set()
            for j, p in enumerate(w.ports):
                where = (*at, "ports", j)
                if not 1 <= p.port <= 65535:
                    yield (*where, "port"), f"expected a port 1-65535, got {p.port}"
                if p.port in seen:
                    yield (*where, "port"), f"expected each port once per workload, got {p.port} twice"
                seen.add(p.port)
                if p.protocol and port_protocol("", p.protocol) is Protocol.UNKNOWN:
                    yield (*where, "protocol"), f"expected HTTP, HTTP2, GRPC, TCP or TLS, got {p.protocol!r}"
                first = declared.setdefault((w.service, w.namespace, p.port), (w.name, p))
                if first[0] != w.name and (first[1].name, first[1].resolved_protocol) != (p.name, p.resolved_protocol):
                    yield where, (f"expected port {p.port} of service {w.service} as workload {first[0]} declares it "
                                  f"(name {first[1].name!r}, {first[1].resolved_protocol}), "
                                  f"got name {p.name!r}, {p.resolved_protocol}")
            for j, u in enumerate(w.upstreams):
                if not 1 <= u.port <= 65535:
                    yield (*at, "upstreams", j, "port"), f"expected a port 1-65535, got {u.port}"
            yield from _readiness_problems(w, at)

    def _route_problems(self) -> Iterator[Problem]:
        services = self.services()
        for i, r in enumerate(self.ingress.routes):
            at = ("ingress", "routes", i)
            if len(r.match) != 1:
                got = " and ".join(r.match) or "none"
                yield at, f"expected exactly one of prefix, exact or regex, got {got}"
            ports = services.get((r.service, r.namespace))
            if ports is None:
                known = ", ".join(sorted(f"{s}" if ns == "default" else f"{s} (namespace {ns})" for s, ns in services))
                yield (*at, "service"), f"expected a service declared by a workload ({known or 'none'}), got {r.service!r}"
            elif r.port not in ports:
                known = ", ".join(str(p) for p in sorted(ports)) or "none"
                yield (*at, "port"), f"expected a port of service {r.service} ({known}), got {r.port}"


def _readiness_problems(w: WorkloadSettings, at: tuple) -> Iterator[Problem]:
    r = w.readiness
    if r is None:
        return
    at = (*at, "readiness")
    if r.http is not None and r.tcp:
        yield at, "expected one of http or tcp, got both"
    elif r.http is None and not r.tcp:
        yield at, "expected http: PATH or tcp: true, got neither"
    if r.http is not None and not r.http.startswith("/"):
        yield (*at, "http"), f"expected a path starting with '/', got {r.http!r}"
    if not w.ports:
        yield at, "expected a workload with a port to probe, got no ports"
    for field in ("period", "timeout"):
        if getattr(r, field) <= 0:
            yield (*at, field), f"expected seconds > 0, got {getattr(r, field)}"
