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
from typing import Any

import attrs
import pluggy
import structlog

from . import hookspecs
from .records import AREAS, CliCommand, Compiler

__all__ = ["Hooks", "PluginError", "PluginInfo", "check_pending", "make_plugin_manager", "register"]

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
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                pm.unregister(plugin)
                raise PluginError(f"plugin/{name}: hook {caller.name} is a hook wrapper; Knotwork calls each "
                                  "plugin's implementation on its own, so wrappers would wrap nothing")


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
    check_pending(pm)
    if os.environ.get("KNOTWORK_TRACE_HOOKS") == "1":
        pm.add_hookcall_monitoring(
            lambda hook, impls, kwargs: log.info("hook call", hook=hook, plugins=[i.plugin_name for i in impls], kwargs=kwargs),
            lambda outcome, hook, impls, kwargs: log.info("hook done", hook=hook, ok=outcome.exception is None),
        )
    return pm


def register(pm: pluggy.PluginManager, plugin: object, name: str, dist: Any = None) -> None:
    """Register one plugin, refusing async hook implementations by name."""
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"plugin/{name}: {' '.join(str(exc).split())}") from exc
    _check_impls(pm, plugin, name)
    pm.knotwork_dists[name] = dist  # type: ignore[attr-defined]


def check_pending(pm: pluggy.PluginManager) -> None:
    """Refuse hook implementations without a spec (a misspelled hook name), naming the plugin."""
    known = sorted(name for name, caller in vars(pm.hook).items() if caller.spec is not None)
    for hook_name, caller in sorted(vars(pm.hook).items()):
        for impl in caller.get_hookimpls() if caller.spec is None else ():
            if not impl.optionalhook:
                raise PluginError(f"plugin/{impl.plugin_name}: implements unknown hook {hook_name!r}; "
                                  f"is it misspelled? (known hooks: {', '.join(known)})")
    pm.check_pending()


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
        self._registry_key: tuple[tuple[str, int], ...] = ()

    # -- plumbing ---------------------------------------------------------
    def _call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call each plugin's implementation (through pluggy, in pluggy's call order).

        Returns ``(plugin name, result)`` for every non-None result, so each
        result is attributed to the plugin that returned it; a firstresult hook
        stops at the first. A coroutine result is refused, naming its plugin.
        """
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        first = bool(caller.spec and caller.spec.opts.get("firstresult"))
        out: list[tuple[str, Any]] = []
        for impl in reversed(impls):
            subset = self.pm.subset_hook_caller(hook_name, [i.plugin for i in impls if i is not impl])
            result = subset(**kwargs)
            if isinstance(result, list) and not first:
                result = result[0] if result else None
            if inspect.iscoroutine(result) or inspect.isasyncgen(result):
                result.close()
                raise PluginError(f"plugin/{impl.plugin_name}: hook {hook_name} returned a coroutine; "
                                  "hooks must be synchronous")
            if result is not None:
                out.append((impl.plugin_name, result))
                if first:
                    break
        return out

    def _collect(self, kind: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        order = {name: i for i, (name, _) in enumerate(self.pm.list_name_plugin())}
        for plugin, batch in sorted(self._call(_KINDS[kind]), key=lambda pair: order.get(pair[0], 0)):
            for record in batch or ():
                record = attrs.evolve(record, plugin=plugin)
                if record.name in found:
                    raise PluginError(
                        f"plugin/{record.plugin}: {kind} name {record.name!r} is already provided by "
                        f"plugin/{found[record.name].plugin} ({self.distribution(found[record.name].plugin)})"
                    )
                found[record.name] = record
        return found

    def distribution(self, plugin: str) -> str:
        dist = self.pm.knotwork_dists.get(plugin)  # type: ignore[attr-defined]
        return f"{dist.name} {dist.version}" if dist is not None else "registered directly"

    # -- registration hooks ----------------------------------------------
    def registry(self) -> dict[str, dict[str, Any]]:
        """Every registration record by kind and name (cached until a plugin is (un)registered)."""
        key = tuple((name, id(plugin)) for name, plugin in self.pm.list_name_plugin())
        if self._registry is None or key != self._registry_key:
            registry = {kind: self._collect(kind) for kind in _KINDS}
            self._check_slots(registry["compilers"].values())
            self._registry, self._registry_key = registry, key
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
        """The identity proven by the first plugin that knows the claim's credential, else None."""
        results = self._call("knotwork_attest_workload", claim=claim)
        return results[0][1] if results else None

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
