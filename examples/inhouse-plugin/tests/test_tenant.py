"""Tests of ACME's `tenant` plugin, with nothing but Knotwork's pytest fixtures.

`plugin_manager`, `hooks`, `register_plugin` and `hook_recorder` come from the
`knotwork.testing` pytest plugin, installed with knotwork-kernel.
"""

from __future__ import annotations

import pytest
from knotwork import Component, Compiler, ProxyEngine, Strategy, hookimpl
from knotwork.config import MeshError
from knotwork.protocols import Authorizer, Decision
from knotwork.proxyconfig import Cluster, EndpointSet, Listener, SlotError
from knotwork.testing import compile_node, make_node, make_request, mesh_from_yaml, settings_from_yaml

from acme_tenant import TenantAuthorizer, TenantSettings, _hooks


@pytest.fixture
def tenant(register_plugin):
    """The plugin registered under its entry-point name, as the kernel would."""
    return register_plugin(_hooks, name="tenant")


# ── registration ─────────────────────────────────────────────────────────────


def test_provides_a_native_only_authorizer(tenant, hooks):
    record = hooks.registry()["authorizers"]["tenant"]
    assert record.plugin == "tenant"
    assert record.settings is TenantSettings
    assert record.engines == frozenset({"native"})


def test_registration_hooks_are_called_once_each(tenant, hooks, hook_recorder):
    hooks.registry()
    hooks.registry()  # cached
    (call,) = hook_recorder.calls("knotwork_authorizers")
    assert call.plugins == ("tenant",)
    assert [s.name for s in call.results[0]] == ["tenant"]


# ── settings ─────────────────────────────────────────────────────────────────


def test_settings_defaults_and_case():
    settings = settings_from_yaml("allowed: [acme, globex]\nheader: X-Org\n", TenantSettings)
    assert settings == TenantSettings(header="x-org", allowed=("acme", "globex"))
    assert settings_from_yaml("allowed: [acme]", TenantSettings).header == "x-tenant"


@pytest.mark.parametrize(("text", "line"), [
    ("header: x-tenant\n", "settings.yaml:1: allowed: expected a value, got nothing (required)"),
    ("allowed: acme\n", "settings.yaml:1: allowed: expected a list, got 'acme'"),
    ("allowed: []\n", "settings.yaml:1: allowed: expected at least one tenant, got an empty list"),
    ("allowed: [acme]\nheadr: x\n",
     "settings.yaml:2: headr: expected one of the keys header, allowed, got unknown key 'headr'"),
], ids=["missing", "not-a-list", "empty", "unknown-key"])
def test_settings_errors(text, line):
    with pytest.raises(MeshError) as info:
        settings_from_yaml(text, TenantSettings)
    assert info.value.problems == [line]


# ── per request ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("headers", "decision"), [
    ({"x-tenant": "acme"}, Decision.ALLOW),
    ({"X-Tenant": "acme"}, Decision.ALLOW),
    ({"x-tenant": "globex"}, Decision.DENY),
    ({"x-tenant": ""}, Decision.DENY),
    ({}, Decision.DENY),
], ids=["allowed", "header-case", "other-tenant", "empty", "missing"])
def test_authorize(headers, decision):
    authz = TenantAuthorizer(None, TenantSettings(allowed=("acme",)))
    assert isinstance(authz, Authorizer)
    assert authz.authorize(make_request(headers=headers)) is decision


def test_authorize_with_another_header(tenant, hooks):
    record = hooks.registry()["authorizers"]["tenant"]
    authz = record.factory(None, settings_from_yaml("header: x-org\nallowed: [acme]", record.settings))
    assert authz.authorize(make_request(headers={"x-org": "acme"})) is Decision.ALLOW
    assert authz.authorize(make_request(headers={"x-tenant": "acme"})) is Decision.DENY


# ── compile time ─────────────────────────────────────────────────────────────


class Listeners:
    """A stand-in networking compiler: one inbound and one outbound listener."""

    @staticmethod
    def compile(builder, inp):
        builder.add(Cluster(name="inbound|9080||"))
        builder.add(EndpointSet(name="inbound|9080||"))
        builder.add(Listener(name="inbound", address="127.0.0.1", port=15006, mode="inbound",
                             protocol="tcp", cluster="inbound|9080||", authz=("policy",)))
        builder.add(Listener(name="outbound", address="127.0.0.1", port=15001, mode="http_proxy",
                             protocol="tcp", cluster="inbound|9080||"))

    @hookimpl
    def knotwork_compilers(self):
        return [Compiler(name="listeners", area="networking", slots=frozenset({"listeners", "clusters", "endpoints"}),
                         compile=self.compile)]


def test_marks_inbound_listeners_when_selected(tenant, register_plugin, hooks):
    register_plugin(Listeners(), name="net")
    snap = compile_node(hooks, make_node(), selection={"authorizers": ("tenant",)})
    assert snap.resources["listeners"]["inbound"].authz == ("policy", "tenant")
    assert snap.resources["listeners"]["outbound"].authz == ()


def test_leaves_listeners_alone_when_not_selected(tenant, register_plugin, hooks):
    register_plugin(Listeners(), name="net")
    snap = compile_node(hooks, make_node())
    assert snap.resources["listeners"]["inbound"].authz == ("policy",)


def test_the_compiler_writes_only_its_slot(tenant, register_plugin, hooks):
    """The builder refuses writes outside `listeners.authz` (here: a listener's telemetry)."""
    class Greedy:
        @hookimpl
        def knotwork_compilers(self):
            def compile(builder, inp):
                builder.set("listeners", "inbound", "telemetry", ("tenant",))
            return [Compiler(name="greedy", area="extensions", slots=frozenset({"listeners.authz.x"}), compile=compile)]

    register_plugin(Listeners(), name="net")
    register_plugin(Greedy(), name="greedy")
    with pytest.raises(SlotError, match="'greedy' wrote slot 'listeners.telemetry'"):
        compile_node(hooks, make_node())


# ── in a mesh file ───────────────────────────────────────────────────────────


class StandIns:
    """Records named like the defaults of a mesh file, so one loads without them installed."""

    @hookimpl
    def knotwork_platforms(self):
        return [Component(name="local", factory=object)]

    @hookimpl
    def knotwork_proxy_engines(self):
        return [ProxyEngine(name=n, control_server=object, proxy=object) for n in ("native", "envoy")]

    @hookimpl
    def knotwork_routers(self):
        return [Strategy(name="host", factory=object)]

    @hookimpl
    def knotwork_load_balancers(self):
        return [Strategy(name="round_robin", factory=object)]


def test_selected_in_a_mesh_file(tenant, register_plugin, hooks, tmp_path):
    register_plugin(StandIns(), name="stand-ins")
    mesh = mesh_from_yaml(tmp_path, """
        plugins:
          authorizers: [tenant]
        tenant:
          allowed: [acme]
    """, hooks)
    assert mesh.settings["tenant"] == TenantSettings(allowed=("acme",))


def test_refused_with_an_engine_it_does_not_support(tenant, register_plugin, hooks, tmp_path):
    register_plugin(StandIns(), name="stand-ins")
    with pytest.raises(MeshError) as info:
        mesh_from_yaml(tmp_path, """
            plugins:
              engine: envoy
              authorizers: [tenant]
            tenant:
              allowed: [acme]
        """, hooks)
    (line,) = info.value.problems
    assert line.endswith(":3: plugins.authorizers[0]: expected an authorizer that supports engine 'envoy', "
                         "got 'tenant' (supports: native)")
