"""The plugin manager factory and the typed facade over it.

Order of registration (documented, logged with ``KNOTWORK_TRACE_HOOKS=1``):
plugins passed explicitly first (tests, embedding), then the ``knotwork``
entry points sorted by name. ``check_pending()`` then catches misspelled hook
names. :class:`Hooks` is the only code that calls ``pm.hook``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import attrs
import pluggy
import structlog

from . import hookspecs
from .records import AREAS, CliCommand, Compiler

__all__ = ["Hooks", "PluginError", "PluginInfo", "make_plugin_manager"]

log = structlog.get_logger("knotwork.kernel")
PROJECT = "knotwork"


class PluginError(Exception):
    """A plugin is broken (not the user's mesh file): start-up refuses it."""


@attrs.frozen
class PluginInfo:
    """What `knotwork plugins` shows of one registered plugin."""

    name: str
    distribution: str
    version: str
    order: int
    hooks: tuple[str, ...]


def _check_impls(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (
                inspect.iscoroutinefunction(impl.function) or inspect.isasyncgenfunction(impl.function)
            ):
                pm.unregister(plugin)
                raise PluginError(
                    f"plugin/{name}: hook {caller.name} is implemented with 'async def'; hooks are "
                    "synchronous: return a record or factory and let the kernel run the async part"
                )


def make_plugin_manager(*, entry_points: bool = True, plugins: Iterable[tuple[str, object]] = ()) -> pluggy.PluginManager:
    """Build a plugin manager: specs, given plugins, then entry points by name."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.knotwork_dists = {}  # type: ignore[attr-defined]
    for name, plugin in plugins:
        register(pm, plugin, name)
    if entry_points:
        eps = sorted(importlib.metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)
        for ep in eps:
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must be named
                raise PluginError(f"plugin/{ep.name}: cannot be loaded: {exc!r}") from exc
            register(pm, module, ep.name, ep.dist)
    pm.check_pending()
    if os.environ.get("KNOTWORK_TRACE_HOOKS") == "1":
        pm.add_hookcall_monitoring(
            lambda hook, impls, kwargs: log.info("hook call", hook=hook, plugins=[i.plugin_name for i in impls], kwargs=kwargs),
            lambda outcome, hook, impls, kwargs: log.info("hook done", hook=hook, ok=outcome.exception is None),
        )
    return pm


def register(pm: pluggy.PluginManager, plugin: object, name: str, dist: Any = None) -> None:
    """Register one plugin, refusing async hook implementations by name."""
    pm.register(plugin, name=name)
    _check_impls(pm, plugin, name)
    pm.knotwork_dists[name] = dist  # type: ignore[attr-defined]


_KINDS = {
    "proxy_engines": "knotwork_proxy_engines",
    "platforms": "knotwork_platforms",
    "config_sources": "knotwork_config_sources",
    "certificate_authorities": "knotwork_certificate_authorities",
    "routers": "knotwork_routers",
    "load_balancers": "knotwork_load_balancers",
    "authenticators": "knotwork_authenticators",
    "authorizers": "knotwork_authorizers",
    "telemetry": "knotwork_telemetry_sinks",
    "compilers": "knotwork_compilers",
    "cli_commands": "knotwork_cli_commands",
}
STRATEGY_KINDS = ("routers", "load_balancers", "authenticators", "authorizers", "telemetry")


class Hooks:
    """The typed facade: one method per hook; the only caller of ``pm.hook``."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._registry: dict[str, dict[str, Any]] | None = None
        self._packages = {
            (p.__name__.split(".")[0] if isinstance(p, ModuleType) else type(p).__module__.split(".")[0]): n
            for n, p in pm.list_name_plugin()
        }

    # -- plumbing ---------------------------------------------------------
    def _call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        results = getattr(self.pm.hook, hook_name)(**kwargs)
        for result in results if isinstance(results, list) else [results]:
            if inspect.iscoroutine(result) or inspect.isasyncgen(result):
                code = getattr(result, "cr_code", None) or getattr(result, "ag_code", None)
                culprit = next(
                    (i.plugin_name for i in getattr(self.pm.hook, hook_name).get_hookimpls()
                     if getattr(i.function, "__code__", None) is code), "?")
                result.close() if hasattr(result, "close") else None
                raise PluginError(f"plugin/{culprit}: hook {hook_name} returned a coroutine; hooks must be synchronous")
        return results

    def plugin_of(self, obj: Any) -> str:
        """The plugin whose package defines `obj` (a factory or function)."""
        module = getattr(obj, "__module__", None) or type(obj).__module__
        return self._packages.get(module.split(".")[0], module.split(".")[0])

    def _collect(self, kind: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for batch in self._call(_KINDS[kind]):
            for record in batch or ():
                fn = getattr(record, "factory", None) or getattr(record, "compile", None) or getattr(record, "run", None) \
                    or getattr(record, "proxy", None)
                record = attrs.evolve(record, plugin=self.plugin_of(fn))
                if record.name in found:
                    raise PluginError(
                        f"plugin/{record.plugin}: {kind} name {record.name!r} is already provided by "
                        f"plugin/{found[record.name].plugin} ({self.distribution(found[record.name].plugin)})"
                    )
                found[record.name] = record
        return found

    def distribution(self, plugin: str) -> str:
        dist = self.pm.knotwork_dists.get(plugin)  # type: ignore[attr-defined]
        return f"{dist.name} {dist.version}" if dist is not None else "not installed (registered directly)"

    # -- registration hooks ----------------------------------------------
    def registry(self) -> dict[str, dict[str, Any]]:
        """Every registration record by kind and name (called once, cached)."""
        if self._registry is None:
            self._registry = {kind: self._collect(kind) for kind in _KINDS}
            self._check_slots(self._registry["compilers"].values())
        return self._registry

    def strategies(self) -> dict[str, dict[str, Any]]:
        reg = self.registry()
        return {kind: reg[kind] for kind in STRATEGY_KINDS}

    def compilers(self, plugins: Iterable[str] | None = None) -> list[Compiler]:
        """Compilers in run order (area, order, name), optionally only of `plugins`."""
        chosen = [c for c in self.registry()["compilers"].values() if plugins is None or c.plugin in plugins]
        return sorted(chosen, key=lambda c: (AREAS.index(c.area), c.order, c.name))

    def cli_commands(self) -> dict[str, CliCommand]:
        return self.registry()["cli_commands"]

    @staticmethod
    def _check_slots(compilers: Iterable[Compiler]) -> None:
        owners: dict[str, Compiler] = {}
        for compiler in compilers:
            if compiler.area not in AREAS:
                raise PluginError(f"plugin/{compiler.plugin}: compiler {compiler.name!r} has unknown area {compiler.area!r}")
            for slot in compiler.slots:
                if slot in owners:
                    raise PluginError(
                        f"plugin/{compiler.plugin}: compiler {compiler.name!r} claims slot {slot!r} already "
                        f"owned by compiler {owners[slot].name!r} of plugin/{owners[slot].plugin}"
                    )
                owners[slot] = compiler

    # -- event hooks ------------------------------------------------------
    def attest_workload(self, claim: Any) -> Any:
        return self._call("knotwork_attest_workload", claim=claim)

    def snapshot_published(self, version: str, nodes: Sequence[str], counts: dict[str, int]) -> None:
        self._call("knotwork_snapshot_published", version=version, nodes=nodes, counts=counts)

    # -- introspection ----------------------------------------------------
    def plugin_names(self) -> set[str]:
        return {name for name, _ in self.pm.list_name_plugin()}

    def plugins(self) -> list[PluginInfo]:
        infos = []
        for order, (name, plugin) in enumerate(self.pm.list_name_plugin()):
            dist = self.pm.knotwork_dists.get(name)  # type: ignore[attr-defined]
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or ()))
            infos.append(PluginInfo(name, dist.name if dist else "-", dist.version if dist else "-", order, hooks))
        return infos
