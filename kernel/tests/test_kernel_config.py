"""The mesh file: selection, settings, and its error lines (knotwork.config).

A throwaway plugin provides records named like the defaults (platform
`local`, engine `native`, router `host`, balancer `round_robin`) with a
settings class of its own, so these tests need no real plugin.
"""

from __future__ import annotations

import re

import attrs
import pytest

from knotwork import Component, ProxyEngine, Strategy, hookimpl
from knotwork.config import MeshError, Selection, load_mesh, structure
from knotwork.model import MeshSettings
from knotwork.testing import mesh_from_yaml, settings_from_yaml

LINE = re.compile(r"^\S+:\d+: \S+: expected .+, got .+$")


@attrs.frozen
class Port:
    port: int
    name: str = ""


@attrs.frozen
class App:
    name: str
    replicas: int = 1
    ports: tuple[Port, ...] = ()
    env: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Vault:
    address: str = "http://127.0.0.1:8200"
    token: str = attrs.field(default="", metadata={"secret": True})


@attrs.frozen
class DemoSettings:
    drain_timeout: float = 3.0
    apps: tuple[App, ...] = ()
    password: str = attrs.field(default="", metadata={"secret": True, "help": "never printed"})
    vault: Vault = Vault()

    def problems(self):
        seen = set()
        for i, app in enumerate(self.apps):
            if app.name in seen:
                yield ("apps", i, "name"), f"expected a unique app name, got {app.name!r} again"
            seen.add(app.name)
            if app.replicas < 0:
                yield ("apps", i, "replicas"), f"expected 0 or more replicas, got {app.replicas}"


class Demo:
    @hookimpl
    def knotwork_platforms(self):
        return [Component(name="local", factory=object, settings=DemoSettings)]

    @hookimpl
    def knotwork_proxy_engines(self):
        return [ProxyEngine(name="native", control_server=object, proxy=object),
                ProxyEngine(name="envoy", control_server=object, proxy=object)]

    @hookimpl
    def knotwork_routers(self):
        return [Strategy(name="host", factory=object)]

    @hookimpl
    def knotwork_load_balancers(self):
        return [Strategy(name="round_robin", factory=object), Strategy(name="random", factory=object)]

    @hookimpl
    def knotwork_authorizers(self):
        return [Strategy(name="opa", factory=object, engines=frozenset({"envoy"})),
                Strategy(name="tenant", factory=object, engines=frozenset({"native"}))]


@pytest.fixture
def demo_hooks(register_plugin, hooks):
    register_plugin(Demo(), name="demo")
    return hooks


def problems(tmp_path, text, hooks) -> list[str]:
    with pytest.raises(MeshError) as info:
        mesh_from_yaml(tmp_path, text, hooks)
    lines = info.value.problems
    assert str(info.value) == "\n".join(lines)
    for line in lines:
        assert LINE.match(line), line
    file = str(tmp_path / "knotwork.yaml")
    return [line.removeprefix(file) for line in lines]


def test_a_valid_mesh_file(demo_hooks, tmp_path):
    mesh = mesh_from_yaml(tmp_path, """
        mesh: {trust_domain: example.org}
        plugins:
          load_balancer: random
          authorizers: [tenant]
        local:
          drain_timeout: 1      # an integer is a fine number
          apps:
            - name: web
              ports: [{port: 8080, name: http}]
              env: {MODE: demo}
    """, demo_hooks)
    assert mesh.path == tmp_path / "knotwork.yaml"
    assert mesh.dir == tmp_path and mesh.state_dir == tmp_path / ".knotwork"
    assert mesh.mesh == MeshSettings(trust_domain="example.org")
    # the default certificate authority, `ca`, is not among the demo's plugins: no mesh identity then
    assert mesh.plugins == Selection(load_balancer="random", authorizers=("tenant",), certificate_authority=None, telemetry=())
    assert mesh.selected("authorizers") == ("tenant",) and mesh.selected("certificate_authority") == ()
    assert mesh.settings["local"] == DemoSettings(1.0, (App("web", ports=(Port(8080, "http"),), env={"MODE": "demo"}),))
    assert mesh.selection_map()["load_balancer"] == "random"


def test_defaults_when_sections_are_missing(demo_hooks, tmp_path):
    mesh = mesh_from_yaml(tmp_path, "{}\n", demo_hooks)
    assert mesh.plugins == Selection(certificate_authority=None, telemetry=())  # the default `ca` and sinks are not installed here
    assert mesh.settings["local"] == DemoSettings()


def test_engine_override(demo_hooks, tmp_path):
    (tmp_path / "knotwork.yaml").write_text("plugins: {authorizers: [tenant]}\n")
    assert load_mesh(tmp_path, demo_hooks).plugins.engine == "native"
    with pytest.raises(MeshError, match="supports engine 'envoy'"):
        load_mesh(tmp_path, demo_hooks, engine="envoy")


@pytest.mark.parametrize(("text", "expected"), [
    ("local:\n  drain_timeout: soon\n", [":2: local.drain_timeout: expected a number, got 'soon'"]),
    ("local:\n  apps: [{name: a, replicas: true}]\n", [":2: local.apps[0].replicas: expected an integer, got True"]),
    ("local:\n  apps: web\n", [":2: local.apps: expected a list, got 'web'"]),
    ("local:\n  apps: [{name: a, env: [A]}]\n", [":2: local.apps[0].env: expected a mapping, got a list"]),
    ("local: [1]\n", [":1: local: expected a mapping, got a list"]),
    ("mesh: {domain: 5}\n", [":1: mesh.domain: expected a string, got 5"]),
    ("plugins: {authorizers: tenant}\n", [":1: plugins.authorizers: expected a list, got 'tenant'"]),
], ids=["number", "bool-is-not-int", "list", "mapping", "section", "mesh", "selection-list"])
def test_wrong_type(demo_hooks, tmp_path, text, expected):
    assert problems(tmp_path, text, demo_hooks) == expected


def test_unknown_key(demo_hooks, tmp_path):
    assert problems(tmp_path, "local:\n  drain_timout: 3\n", demo_hooks) == [
        ":2: local.drain_timout: expected one of the keys drain_timeout, apps, password, vault, "
        "got unknown key 'drain_timout'",
    ]


def test_missing_required_field(demo_hooks, tmp_path):
    text = "local:\n  apps:\n    - replicas: 2\n"
    assert problems(tmp_path, text, demo_hooks) == [":3: local.apps[0].name: expected a value, got nothing (required)"]


def test_yaml_syntax_error(demo_hooks, tmp_path):
    (line,) = problems(tmp_path, "local:\n  apps: [{name: a}\nplugins: {}\n", demo_hooks)
    assert line.startswith(":3: (document): expected valid YAML, got a syntax error: ")


def test_duplicate_key(demo_hooks, tmp_path):
    text = "local:\n  drain_timeout: 1\n  drain_timeout: 2\n"
    assert problems(tmp_path, text, demo_hooks) == [":3: local.drain_timeout: expected each key once, got 'drain_timeout' again"]


def test_not_a_mapping(demo_hooks, tmp_path):
    assert problems(tmp_path, "- local\n", demo_hooks) == [":1: (document): expected a mapping, got a list"]


def test_missing_file(demo_hooks, tmp_path):
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "nope.yaml", demo_hooks)
    (line,) = info.value.problems
    assert LINE.match(line) and line.startswith(f"{tmp_path / 'nope.yaml'}:0: (file): expected a readable mesh file")


def test_unknown_plugin_name_lists_installed_ones(demo_hooks, tmp_path):
    # an unknown engine is one problem, not one more per strategy it might not support
    assert problems(tmp_path, "plugins:\n  load_balancer: fastest\n  engine: nginx\n", demo_hooks) == [
        ":2: plugins.load_balancer: expected an installed load balancer (random, round_robin), got 'fastest'",
        ":3: plugins.engine: expected an installed proxy engine (envoy, native), got 'nginx'",
    ]


def test_unknown_extra_plugin_lists_installed_ones(demo_hooks, tmp_path):
    assert problems(tmp_path, "plugins: {extra: [demo, acme]}\n", demo_hooks) == [
        ":1: plugins.extra[1]: expected an installed plugin (demo), got 'acme'",
    ]


def test_unsupported_engine_and_strategy(demo_hooks, tmp_path):
    text = "plugins:\n  engine: envoy\n  authorizers: [opa, tenant]\n"
    assert problems(tmp_path, text, demo_hooks) == [
        ":3: plugins.authorizers[1]: expected an authorizer that supports engine 'envoy', got 'tenant' (supports: native)",
    ]
    assert mesh_from_yaml(tmp_path, "plugins: {authorizers: [tenant]}\n", demo_hooks).plugins.engine == "native"


def test_unknown_section(demo_hooks, tmp_path):
    assert problems(tmp_path, "envoy: {}\nlocal: {}\n", demo_hooks) == [
        ":1: envoy: expected one of the sections mesh, plugins, local, got unknown section 'envoy'",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("local: {password: 12345}\n", ":1: local.password: expected a string, got *** (secret)"),
    ("local: {vault: {token: [hunter2]}}\n", ":1: local.vault.token: expected a string, got *** (secret)"),
])
def test_secrets_are_masked(demo_hooks, tmp_path, text, expected):
    (line,) = problems(tmp_path, text, demo_hooks)
    assert line == expected
    assert "12345" not in line and "hunter2" not in line


def test_cross_field_problems_come_from_the_settings_class(demo_hooks, tmp_path):
    text = "local:\n  apps:\n    - name: a\n    - name: a\n      replicas: -1\n"
    assert problems(tmp_path, text, demo_hooks) == [
        ":4: local.apps[1].name: expected a unique app name, got 'a' again",
        ":5: local.apps[1].replicas: expected 0 or more replicas, got -1",
    ]


def test_all_problems_are_reported_at_once_in_line_order(demo_hooks, tmp_path):
    text = """\
        mesh:
          domain: [x]
        plugins:
          load_balancer: fastest
          authorizers: [nope]
        local:
          drain_timeout: never
          apps:
            - name: a
              replicaz: 2
            - ports: [{port: http}]
        grafana: {}
    """
    assert problems(tmp_path, text, demo_hooks) == [
        ":2: mesh.domain: expected a string, got a list",
        ":4: plugins.load_balancer: expected an installed load balancer (random, round_robin), got 'fastest'",
        ":5: plugins.authorizers[0]: expected an installed authorizer (opa, tenant), got 'nope'",
        ":7: local.drain_timeout: expected a number, got 'never'",
        ":10: local.apps[0].replicaz: expected one of the keys name, replicas, ports, env, got unknown key 'replicaz'",
        ":11: local.apps[1].name: expected a value, got nothing (required)",
        ":11: local.apps[1].ports[0].port: expected an integer, got 'http'",
        ":12: grafana: expected one of the sections mesh, plugins, local, got unknown section 'grafana'",
    ]


def test_structure_is_strict():
    assert structure({"port": 1}, Port) == Port(1)
    with pytest.raises(Exception):  # noqa: B017 - cattrs' exception group
        structure({"port": "1"}, Port)


def test_settings_from_yaml_uses_the_same_rules():
    assert settings_from_yaml("drain_timeout: 2\n", DemoSettings).drain_timeout == 2.0
    with pytest.raises(MeshError) as info:
        settings_from_yaml("""
            apps:
              - {name: a}
              - {name: a}
        """, DemoSettings)
    assert info.value.problems == ["settings.yaml:3: apps[1].name: expected a unique app name, got 'a' again"]
    with pytest.raises(MeshError) as info:  # cross-field checks need a structured object: type errors first
        settings_from_yaml("apps: [{name: a}, {name: a}]\npassword: {}\n", DemoSettings)
    assert info.value.problems == ["settings.yaml:2: password: expected a string, got *** (secret)"]


def test_strict_collections_hold_after_the_converter_learns_new_classes():
    """cattrs registers some generated hooks directly for their type; the strict check must stay in front."""
    @attrs.frozen
    class First:
        env: dict[str, str] = attrs.Factory(dict)
        pair: tuple[int, str] = (0, "")

    @attrs.frozen
    class Second:
        labels: dict[str, str] = attrs.Factory(dict)

    assert structure({"env": {"A": "1"}, "pair": [1, "x"]}, First) == First({"A": "1"}, (1, "x"))
    assert structure({"labels": {"b": "2"}}, Second) == Second({"b": "2"})
    for data in ({"env": ["A"]}, {"pair": "1x"}):
        with pytest.raises(Exception) as info:  # noqa: B017 - cattrs' exception group
            structure(data, First)
        assert str(info.value.exceptions[0]).startswith("expected a ")


def _positive(_inst, _attr, value):
    if value <= 0:
        raise ValueError(f"expected a number > 0, got {value}")


@attrs.frozen
class Inner:
    weight: int = attrs.field(default=1, validator=_positive)


@attrs.frozen
class Outer:
    mode: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))
    items: tuple[Inner, ...] = ()


def test_attrs_validators_are_reported_at_their_field():
    assert settings_from_yaml("mode: b\nitems: [{weight: 2}]\n", Outer) == Outer("b", (Inner(2),))
    with pytest.raises(MeshError) as info:
        settings_from_yaml("""
            mode: c
            items:
              - weight: 1
              - weight: 0
        """, Outer)
    assert info.value.problems[1] == "settings.yaml:4: items[1].weight: expected a number > 0, got 0"
    assert info.value.problems[0].startswith("settings.yaml:1: mode: expected a valid value, got an error: ")
