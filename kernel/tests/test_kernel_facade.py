"""The plugin manager factory and the typed facade (knotwork.kernel)."""

from __future__ import annotations

import attrs
import pytest

from knotwork import CliCommand, Compiler, Strategy, hookimpl
from knotwork.kernel import Hooks, PluginError, make_plugin_manager
from knotwork.model import Identity
from knotwork.records import AttestationClaim


def strategy(name: str) -> Strategy:
    return Strategy(name=name, factory=object)


class Routers:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def knotwork_routers(self):
        return [strategy(n) for n in self.names]


# ── async implementations are refused ────────────────────────────────────────


def test_async_def_impl_is_refused_at_register_time(register_plugin, plugin_manager):
    class Async:
        @hookimpl
        async def knotwork_routers(self):
            return []

    plugin = Async()
    with pytest.raises(PluginError, match=r"^plugin/asyncy: hook knotwork_routers is implemented with 'async def'"):
        register_plugin(plugin, name="asyncy")
    assert not plugin_manager.is_registered(plugin)


def test_async_generator_impl_is_refused(register_plugin):
    class AsyncGen:
        @hookimpl
        async def knotwork_routers(self):
            yield []

    with pytest.raises(PluginError, match=r"^plugin/agen: hook knotwork_routers is implemented with 'async def'"):
        register_plugin(AsyncGen(), name="agen")


def test_async_impl_is_refused_by_make_plugin_manager():
    class Async:
        @hookimpl
        async def knotwork_load_balancers(self):
            return []

    with pytest.raises(PluginError, match=r"^plugin/lb: hook knotwork_load_balancers"):
        make_plugin_manager(entry_points=False, plugins=[("lb", Async())])


def test_coroutine_returned_by_a_sync_wrapper_is_refused_at_call_time(register_plugin, hooks):
    async def routers():
        return [strategy("host")]

    class Wrapper:
        @hookimpl
        def knotwork_routers(self):
            return routers()  # a sync function returning a coroutine: only a call can tell

    register_plugin(Routers("other"), name="fine")
    register_plugin(Wrapper(), name="sneaky")
    with pytest.raises(PluginError, match=r"^plugin/sneaky: hook knotwork_routers returned a coroutine"):
        hooks.registry()


def test_coroutine_from_an_event_hook_is_refused(register_plugin, hooks):
    async def observe():
        return None

    class Observer:
        @hookimpl
        def knotwork_snapshot_published(self, version):
            return observe()

    register_plugin(Observer(), name="observer")
    with pytest.raises(PluginError, match=r"^plugin/observer: hook knotwork_snapshot_published returned a coroutine"):
        hooks.snapshot_published("1", ["sidecar~a"], {})


def test_hook_wrappers_are_refused(register_plugin):
    class Wrapper:
        @hookimpl(wrapper=True)
        def knotwork_routers(self):
            return (yield)

    with pytest.raises(PluginError, match=r"^plugin/wrap: hook knotwork_routers is a hook wrapper"):
        register_plugin(Wrapper(), name="wrap")


# ── records: names, plugins, duplicates ──────────────────────────────────────


def test_records_are_attributed_to_the_plugin_that_returned_them(register_plugin, hooks):
    register_plugin(Routers("host"), name="one")
    register_plugin(Routers("header"), name="two")
    routers = hooks.registry()["routers"]
    assert {n: r.plugin for n, r in routers.items()} == {"host": "one", "header": "two"}
    assert hooks.distribution("one") == "registered directly"


def test_duplicate_record_names_name_both_plugins(register_plugin, hooks):
    register_plugin(Routers("host"), name="first")
    register_plugin(Routers("host"), name="second")
    with pytest.raises(PluginError) as info:
        hooks.registry()
    assert str(info.value) == (
        "plugin/second: routers name 'host' is already provided by plugin/first (registered directly)"
    )


def test_registry_sees_plugins_registered_later(register_plugin, hooks):
    assert hooks.registry()["routers"] == {}
    register_plugin(Routers("host"), name="late")
    assert list(hooks.registry()["routers"]) == ["host"]


def _compiler(name: str, slots: set[str], area: str = "routing") -> Compiler:
    return Compiler(name=name, area=area, slots=frozenset(slots), compile=lambda builder, inp: None)


class Compilers:
    def __init__(self, *compilers: Compiler) -> None:
        self.compilers = compilers

    @hookimpl
    def knotwork_compilers(self):
        return list(self.compilers)


def test_two_compilers_claiming_one_slot_name_both(register_plugin, hooks):
    register_plugin(Compilers(_compiler("routes", {"routes", "clusters"})), name="routing")
    register_plugin(Compilers(_compiler("my-clusters", {"clusters"})), name="acme")
    with pytest.raises(PluginError) as info:
        hooks.registry()
    message = str(info.value)
    assert message.startswith("plugin/acme: compiler 'my-clusters' claims slot 'clusters' already owned by")
    assert message.endswith("compiler 'routes' of plugin/routing")


def test_compiler_with_unknown_area(register_plugin, hooks):
    register_plugin(Compilers(_compiler("x", {"routes"}, area="magic")), name="wizard")
    with pytest.raises(PluginError, match=r"^plugin/wizard: compiler 'x' has unknown area 'magic'"):
        hooks.registry()


def test_compilers_run_in_area_order_then_order_then_name(register_plugin, hooks):
    register_plugin(Compilers(
        _compiler("z-tel", {"a"}, area="telemetry"),
        _compiler("b-net", {"b"}, area="networking"),
        _compiler("a-net", {"c"}, area="networking"),
        attrs.evolve(_compiler("first-net", {"d"}, area="networking"), order=-1),
    ), name="p")
    assert [c.name for c in hooks.compilers()] == ["first-net", "a-net", "b-net", "z-tel"]
    assert hooks.compilers(plugins=["nobody"]) == []


# ── misspelled hooks, bad signatures ─────────────────────────────────────────


def test_check_pending_catches_a_misspelled_hook_name():
    class Typo:
        @hookimpl
        def knotwork_router(self):
            return []

    with pytest.raises(PluginError, match=r"^plugin/typo: implements unknown hook 'knotwork_router'; is it misspelled\?"):
        make_plugin_manager(entry_points=False, plugins=[("typo", Typo())])


def test_register_plugin_fixture_checks_pending_too(register_plugin, plugin_manager):
    class Typo:
        @hookimpl
        def knotwork_load_balancer(self):
            return []

    plugin = Typo()
    with pytest.raises(PluginError, match=r"^plugin/typo: implements unknown hook 'knotwork_load_balancer'"):
        register_plugin(plugin, name="typo")
    assert not plugin_manager.is_registered(plugin)


def test_an_argument_the_spec_lacks_is_refused(register_plugin):
    class Wrong:
        @hookimpl
        def knotwork_routers(self, mesh):
            return []

    with pytest.raises(PluginError, match=r"^plugin/wrong: .*'mesh'.* can not be found in the hookspec"):
        register_plugin(Wrong(), name="wrong")


# ── event hooks ──────────────────────────────────────────────────────────────


def test_attest_workload_stops_at_the_first_result(register_plugin, hooks, hook_recorder):
    class Unknown:
        @hookimpl
        def knotwork_attest_workload(self, claim):
            return None

    class Local:
        @hookimpl
        def knotwork_attest_workload(self, claim):
            return Identity.parse(claim.identity) if claim.credential == "good" else None

    register_plugin(Local(), name="local")
    register_plugin(Unknown(), name="unknown")
    claim = AttestationClaim("local", "sidecar~a", "spiffe://cluster.local/ns/default/sa/a", "good")
    assert hooks.attest_workload(claim) == Identity("cluster.local", "default", "a")
    # the last registered is asked first, as in pluggy
    assert [c.plugins for c in hook_recorder.calls("knotwork_attest_workload")] == [("unknown",), ("local",)]
    assert hooks.attest_workload(AttestationClaim("local", "n", "x", "bad")) is None


def test_snapshot_published_reaches_every_plugin(register_plugin, hooks):
    seen = []

    class Observer:
        def __init__(self, tag):
            self.tag = tag

        @hookimpl
        def knotwork_snapshot_published(self, version, counts):  # a subset of the arguments is fine
            seen.append((self.tag, version, counts))

    register_plugin(Observer("a"), name="a")
    register_plugin(Observer("b"), name="b")
    hooks.snapshot_published("7", ["sidecar~x"], {"clusters": 2})
    assert sorted(seen) == [("a", "7", {"clusters": 2}), ("b", "7", {"clusters": 2})]


def test_cli_commands_and_plugin_infos(register_plugin, hooks):
    class Cmd:
        @hookimpl
        def knotwork_cli_commands(self):
            return [CliCommand(name="hello", help="say hello", configure=lambda p: None, run=lambda a: 0)]

    register_plugin(Cmd(), name="greeter")
    assert hooks.cli_commands()["hello"].plugin == "greeter"
    (info,) = hooks.plugins()
    assert (info.name, info.distribution, info.hooks) == ("greeter", "-", ("knotwork_cli_commands",))
    assert hooks.plugin_names() == {"greeter"}


# ── tracing ──────────────────────────────────────────────────────────────────


def test_trace_hooks_env_logs_every_hook_call(monkeypatch, capture_logs):
    monkeypatch.setenv("KNOTWORK_TRACE_HOOKS", "1")
    pm = make_plugin_manager(entry_points=False, plugins=[("one", Routers("host"))])
    Hooks(pm).registry()
    calls = [e for e in capture_logs if e["event"] == "hook call" and e["hook"] == "knotwork_routers"]
    assert calls == [{"event": "hook call", "log_level": "info", "hook": "knotwork_routers", "plugins": ["one"], "kwargs": {}}]
    assert any(e["event"] == "hook done" and e["hook"] == "knotwork_routers" and e["ok"] for e in capture_logs)


def test_no_trace_without_the_env(monkeypatch, capture_logs):
    monkeypatch.delenv("KNOTWORK_TRACE_HOOKS", raising=False)
    Hooks(make_plugin_manager(entry_points=False, plugins=[("one", Routers("host"))])).registry()
    assert capture_logs == []


def test_lazy_imports_its_target_on_the_first_call_only():
    import sys

    from knotwork import lazy

    sys.modules.pop("colorsys", None)
    to_hls = lazy("colorsys:rgb_to_hls")
    assert "colorsys" not in sys.modules  # naming it imports nothing
    assert to_hls(1.0, 0.0, 0.0) == (0.0, 0.5, 1.0)
    assert "colorsys" in sys.modules
    assert to_hls.__name__ == "lazy(colorsys:rgb_to_hls)"
    with pytest.raises(ValueError, match="expected 'package.module:name'"):
        lazy("colorsys.rgb_to_hls")
    with pytest.raises(AttributeError):
        lazy("colorsys:nope")()
