"""Frozen records returned by registration hooks, and the narrow contexts
the kernel hands to what they create.

A record names a thing a plugin can do (a platform, a proxy engine, a load
balancer, …); the mesh file selects records by name. The record's `factory`
is called by the kernel, never by another plugin.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .model import MeshSettings, ProxyNode

__all__ = [
    "AREAS",
    "AttestationClaim",
    "CliCommand",
    "Compiler",
    "CompileInput",
    "Component",
    "ComponentContext",
    "ProxyContext",
    "ProxyEngine",
    "Strategy",
    "lazy",
]

_ALL_ENGINES = frozenset({"native", "envoy"})


def lazy(ref: str) -> Callable[..., Any]:
    """A callable standing for ``"package.module:name"``, imported on its first call.

    For the factories in registration records: every ``knotwork`` command
    loads every plugin's hooks, so a record naming its implementation with
    ``lazy("acme_authz.engine:Authorizer")`` keeps uvloop, grpclib and the
    like out of commands that never build it. The target is cached after the
    first call; a bad reference is an ImportError/AttributeError then.
    """
    module, _, name = ref.partition(":")
    if not module or not name:
        raise ValueError(f"lazy({ref!r}): expected 'package.module:name'")
    target: Callable[..., Any] | None = None

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal target
        if target is None:
            target = getattr(importlib.import_module(module), name)
        return target(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"lazy({ref})"
    return call


@attrs.frozen
class Component:
    """A long-running part: platform, config source or certificate authority.

    `factory(ctx: ComponentContext)` returns an object with
    ``async def run(self, *, task_status)`` that the kernel starts with
    ``tg.start()``. A platform's or config source's ``run`` also receives
    ``send``: a memory stream for :class:`~knotwork.model.PlatformSnapshot`.

    `check(ctx)`, when given, looks at what the settings point at (files,
    folders) without changing anything and raises
    :class:`~knotwork.config.MeshError` naming file and field; ``knotwork
    check`` and a platform's start call it, so such a mistake is reported
    before anything runs.
    """

    name: str
    factory: Callable[[ComponentContext], Any]
    description: str = ""
    settings: type | None = None
    plugin: str = attrs.field(default="", eq=False)
    check: Callable[[ComponentContext], None] | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ProxyEngine:
    """A proxy engine: its control-plane distribution server and its proxy.

    `control_server(ctx: ComponentContext, cache)` returns a component that
    serves compiled snapshots from a :class:`~knotwork.distribution.SnapshotCache`;
    `proxy(ctx: ProxyContext)` returns the component that runs one sidecar or
    gateway. `extensions` lists the extension names it can carry out.
    """

    name: str
    control_server: Callable[..., Any]
    proxy: Callable[[ProxyContext], Any]
    description: str = ""
    settings: type | None = None
    extensions: frozenset[str] = frozenset()
    plugin: str = attrs.field(default="", eq=False)


@attrs.frozen
class Strategy:
    """A per-request strategy: router, load balancer, authenticator,
    authorizer or telemetry sink (see :mod:`knotwork.protocols`).

    `factory(resource, settings)` builds the plain object an engine calls per
    request, once per config (the resource is the route table, cluster or
    listener it serves). `engines` lists the proxy engines that support it.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    settings: type | None = None
    engines: frozenset[str] = _ALL_ENGINES
    plugin: str = attrs.field(default="", eq=False)


#: Compilation areas, in the fixed order compilers run.
AREAS: tuple[str, ...] = (
    "networking", "routing", "load_balancing", "security",
    "authentication", "authorization", "telemetry", "extensions",
)


@attrs.frozen
class CompileInput:
    """What a compiler sees of the mesh when compiling one proxy's config."""

    mesh: MeshSettings
    node: ProxyNode
    services: tuple[Any, ...]
    endpoints: Mapping[tuple[str, int], tuple[Any, ...]]  # (fqdn, port) -> endpoints
    resources: Mapping[str, tuple[Any, ...]]  # kind -> resources
    selection: Mapping[str, Any]  # role -> selected record name(s)
    workloads: tuple[Any, ...] = ()
    proxies: tuple[ProxyNode, ...] = ()
    #: The mesh directory: where relative paths in resources (a Gateway's certificate
    #: files) are resolved; None when compiling outside a mesh (tests).
    mesh_dir: Path | None = None


@attrs.frozen
class Compiler:
    """A contribution to every proxy's compiled config.

    `compile(builder, inp)` runs in area order (:data:`AREAS`), then `order`,
    then name; it may create the resource types and set the fields named in
    `slots` (``"clusters"``, ``"clusters.lb"``, ``"listeners.authz"``,
    ``"routes.extensions.<name>"``). Two compilers declaring one slot is a
    start-up error naming both.
    """

    name: str
    area: str
    slots: frozenset[str]
    compile: Callable[..., None]
    order: int = 0
    description: str = ""
    plugin: str = attrs.field(default="", eq=False)


@attrs.frozen
class CliCommand:
    """A `knotwork` subcommand: `configure(parser)` adds arguments,
    `run(args) -> int` runs it and returns the exit status. `args.hooks` is
    the kernel's :class:`~knotwork.kernel.Hooks`; raise
    :class:`~knotwork.config.MeshError` or :class:`~knotwork.cli.UsageError`
    for user mistakes (exit 2, no traceback)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    plugin: str = attrs.field(default="", eq=False)


@attrs.frozen
class AttestationClaim:
    """A proxy's request for an identity: what it claims and what proves it.

    `credential` is platform-specific: a local bootstrap token, a Kubernetes
    service-account token, a Nomad workload identity JWT.
    """

    platform: str
    node_id: str
    identity: str
    credential: str = attrs.field(repr=False)


@attrs.frozen
class ComponentContext:
    """What a component gets: its settings, the mesh's names and places.

    `validate(source, resources)` (config sources) compiles every proxy in a
    trial run as if source `source` now held `resources` and returns the
    problems, one ``FILE: Kind/ns/name: field: problem`` line each; nothing
    is published. A source calls it before accepting a change, so a change
    no compiler can translate is refused whole. A source that refuses a change
    for any reason (parse errors, its own checks, `validate`'s problems) calls
    `rejected(source, problems)` once, which the control plane counts.
    """

    mesh: MeshSettings
    settings: Any
    mesh_dir: Path
    state_dir: Path
    selection: Mapping[str, Any] = attrs.field(factory=dict)
    options: Mapping[str, Any] = attrs.field(factory=dict)
    validate: Callable[[str, tuple[Any, ...]], list[str]] = attrs.field(default=lambda source, resources: [], eq=False)
    rejected: Callable[[str, list[str]], None] = attrs.field(default=lambda source, problems: None, eq=False)


@attrs.frozen
class ProxyContext:
    """What a proxy engine gets to run one sidecar or gateway.

    `strategies[kind][name]` are the installed :class:`Strategy` records
    (kinds: routers, load_balancers, authenticators, authorizers, telemetry).
    With a certificate service (`ca_address`) the engine runs
    :meth:`workload_identity`, talks to the control plane over mTLS with the
    SVID it gets, and uses it for mesh mTLS.
    """

    node_id: str
    control_address: str
    admin_port: int
    settings: Any
    strategies: Mapping[str, Mapping[str, Strategy]]
    strategy_settings: Mapping[str, Any] = attrs.field(factory=dict)
    drain_timeout: float = 3.0
    state_dir: Path | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: Where the certificate service listens (None: no mesh identity, plaintext everywhere).
    ca_address: str | None = None
    #: The SPIFFE ID this proxy claims, proven by `credential` (the platform's one-time bootstrap credential).
    identity: str | None = None
    credential: str = attrs.field(default="", repr=False)
    #: The trust bundle file that verifies the control plane before the first SVID arrives.
    bundle_file: Path | None = None
    platform: str = "local"

    def workload_identity(self) -> Any:
        """The proxy's :class:`~knotwork.identity.WorkloadIdentity`, or None without a certificate service."""
        if not self.ca_address or not self.identity or self.bundle_file is None:
            return None
        from .identity import WorkloadIdentity

        return WorkloadIdentity(ca_address=self.ca_address, spiffe_id=self.identity, node_id=self.node_id,
                                bundle_file=self.bundle_file, credential=self.credential, platform=self.platform)
