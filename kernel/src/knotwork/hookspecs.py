"""Every Knotwork hook, grouped by area. These docstrings are the hook reference.

Hooks are synchronous and return things; the kernel owns async. Registration
hooks (plural nouns) are called once at start and return frozen records from
:mod:`knotwork.records`; event hooks (verbs) are called by the control plane
on change, never per request. Only :class:`knotwork.kernel.Hooks` calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .model import Identity
    from .records import AttestationClaim, CliCommand, Component, Compiler, ProxyEngine, Strategy

_spec = pluggy.HookspecMarker("knotwork")

# ── proxy engines ────────────────────────────────────────────────────────────


@_spec
def knotwork_proxy_engines() -> Sequence[ProxyEngine]:
    """Return the proxy engines this plugin provides.

    Called once at start, by the kernel, in every process.

    :returns: :class:`~knotwork.records.ProxyEngine` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_proxy_engines():
            return [ProxyEngine(name="native", control_server=Server, proxy=Proxy)]
    """


# ── platforms and config sources ─────────────────────────────────────────────


@_spec
def knotwork_platforms() -> Sequence[Component]:
    """Return the platforms (discovery and workload runtime) this plugin provides.

    Called once at start, by the kernel. A platform's component pushes whole
    :class:`~knotwork.model.PlatformSnapshot` objects into the stream it is given.

    :returns: :class:`~knotwork.records.Component` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_platforms():
            return [Component(name="local", factory=LocalPlatform, settings=LocalSettings)]
    """


@_spec
def knotwork_config_sources() -> Sequence[Component]:
    """Return the kinds of config source (files, `apply`, CRDs, …) this plugin provides.

    Called once at start, by the kernel. A config source pushes snapshots that
    carry only :class:`~knotwork.model.Resource` objects.

    :returns: :class:`~knotwork.records.Component` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_config_sources():
            return [Component(name="files", factory=FileSource)]
    """


# ── security ──────────────────────────────────────────────────────────────────


@_spec
def knotwork_certificate_authorities() -> Sequence[Component]:
    """Return the certificate authorities this plugin provides.

    Called once at start, by the kernel, in the control plane.

    :returns: :class:`~knotwork.records.Component` records whose component
        signs workload CSRs after attestation.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_certificate_authorities():
            return [Component(name="ca", factory=SelfSignedCA, settings=CASettings)]
    """


@_spec(firstresult=True)
def knotwork_attest_workload(claim: AttestationClaim) -> Identity | None:
    """Check a proxy's platform credential and return the identity it proves.

    Called by the certificate authority and the config distribution when a
    proxy asks for a certificate or a config stream, once per credential.

    :param claim: the node, the identity it claims and its credential.
    :returns: the proven :class:`~knotwork.model.Identity`, or None when this
        plugin does not know the credential's kind.
    Semantics: stops at the first non-None result; raise ValueError to refuse.
    Example::

        @hookimpl
        def knotwork_attest_workload(claim):
            if claim.platform == "local":
                return tokens.redeem(claim.credential, claim.identity)
    """


@_spec
def knotwork_authenticators() -> Sequence[Strategy]:
    """Return the authenticators (peer identity, JWT, …) this plugin provides.

    Called once at start, by the kernel, in every process. Engines build one
    object per listener from the factory (see :class:`knotwork.protocols.Authenticator`).

    :returns: :class:`~knotwork.records.Strategy` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_authenticators():
            return [Strategy(name="jwt", factory=JwtAuthenticator, settings=JwtSettings)]
    """


@_spec
def knotwork_authorizers() -> Sequence[Strategy]:
    """Return the authorizers (policies) this plugin provides.

    Called once at start, by the kernel, in every process. Engines build one
    object per listener (see :class:`knotwork.protocols.Authorizer`); deny wins.

    :returns: :class:`~knotwork.records.Strategy` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_authorizers():
            return [Strategy(name="tenant", factory=TenantAuthorizer, engines=frozenset({"native"}))]
    """


# ── traffic ───────────────────────────────────────────────────────────────────


@_spec
def knotwork_routers() -> Sequence[Strategy]:
    """Return the routers (request → route matching) this plugin provides.

    Called once at start, by the kernel, in every process. Engines build one
    router per route table (see :class:`knotwork.protocols.Router`).

    :returns: :class:`~knotwork.records.Strategy` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_routers():
            return [Strategy(name="host", factory=HostRouter)]
    """


@_spec
def knotwork_load_balancers() -> Sequence[Strategy]:
    """Return the load balancers this plugin provides.

    Called once at start, by the kernel, in every process. Engines build one
    balancer per cluster (see :class:`knotwork.protocols.Balancer`).

    :returns: :class:`~knotwork.records.Strategy` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_load_balancers():
            return [Strategy(name="round_robin", factory=RoundRobin)]
    """


@_spec
def knotwork_compilers() -> Sequence[Compiler]:
    """Return this plugin's contributions to every proxy's compiled config.

    Called once at start, by the kernel, in the control plane. Each
    :class:`~knotwork.records.Compiler` then runs on every config change for
    every proxy, in area order, writing only the slots it declared.

    :returns: :class:`~knotwork.records.Compiler` records.
    Semantics: all results are collected; two compilers claiming one slot, or
    a duplicate name, is a start-up error naming both.
    Example::

        @hookimpl
        def knotwork_compilers():
            return [Compiler(name="tenant-header", area="extensions",
                             slots=frozenset({"routes.extensions.tenant"}), compile=add_tenant)]
    """


# ── telemetry ─────────────────────────────────────────────────────────────────


@_spec
def knotwork_telemetry_sinks() -> Sequence[Strategy]:
    """Return the telemetry sinks (metrics, traces, access logs) this plugin provides.

    Called once at start, by the kernel, in every process. Engines build one
    sink per listener (see :class:`knotwork.protocols.TelemetrySink`).

    :returns: :class:`~knotwork.records.Strategy` records.
    Semantics: all results are collected; duplicate names are a start-up error.
    Example::

        @hookimpl
        def knotwork_telemetry_sinks():
            return [Strategy(name="access-log", factory=AccessLog)]
    """


@_spec
def knotwork_snapshot_published(version: str, nodes: Sequence[str], counts: dict[str, int]) -> None:
    """Observe a compiled configuration being handed to the distribution server.

    Called by the control plane after every successful compile, once per change
    (debounced), never per request.

    :param version: the mesh-wide config version.
    :param nodes: ids of the proxies whose snapshot changed.
    :param counts: resources per type, summed over all proxies.
    :returns: nothing.
    Semantics: all implementations are called; results are ignored.
    Example::

        @hookimpl
        def knotwork_snapshot_published(version, nodes, counts):
            log.info("published", version=version, proxies=len(nodes))
    """


# ── command line ──────────────────────────────────────────────────────────────


@_spec
def knotwork_cli_commands() -> Sequence[CliCommand]:
    """Return `knotwork` subcommands this plugin adds.

    Called once when the CLI starts, by the kernel's CLI.

    :returns: :class:`~knotwork.records.CliCommand` records.
    Semantics: all results are collected; a name clashing with another
    command is a start-up error naming both plugins.
    Example::

        @hookimpl
        def knotwork_cli_commands():
            return [CliCommand(name="up", help="run the mesh here", configure=add_args, run=up)]
    """
