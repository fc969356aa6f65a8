"""The mesh file (`knotwork.yaml`): plugin selection and per-plugin settings.

Layout::

    mesh: {domain: cluster.local, trust_domain: cluster.local, root_namespace: knotwork-system}
    plugins: {platform: local, engine: native, router: host, load_balancer: round_robin, ...}
    local: {...}      # one section per selected record that declares settings
    native: {...}

Everything is validated before anything starts; all problems are reported at
once, one line each: ``FILE:LINE: dotted.path: expected X, got Y``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_origin

import attrs
import cattrs
import yaml
from cattrs._compat import is_hetero_tuple, is_tuple
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_any_set,
    is_frozenset,
    is_mapping,
    is_mutable_sequence,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import ForbiddenExtraKeysError

from .model import MeshSettings

if TYPE_CHECKING:
    from .kernel import Hooks

__all__ = ["Mesh", "MeshError", "Selection", "describe", "find_mesh_file", "load_mesh", "settings_from_text", "structure"]

MESH_FILE = "knotwork.yaml"
STATE_DIR = ".knotwork"


class MeshError(Exception):
    """User mistakes in a mesh file: every problem, one formatted line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class Selection:
    """Which record plays each role, by name (the `plugins:` section)."""

    platform: str = attrs.field(default="local", metadata={"help": "platform: runs workloads, discovers services"})
    engine: str = attrs.field(default="native", metadata={"help": "proxy engine of every sidecar and gateway"})
    certificate_authority: str | None = attrs.field(default="ca", metadata={
        "help": "certificate authority: workload identities and mTLS between sidecars (null: none, plaintext)"})
    router: str = attrs.field(default="host", metadata={"help": "router matching requests to routes"})
    load_balancer: str = attrs.field(default="round_robin", metadata={"help": "default load balancer"})
    config_sources: tuple[str, ...] = attrs.field(default=("files",), metadata={"help": "config sources of Istio resources"})
    authenticators: tuple[str, ...] = attrs.field(default=(), metadata={"help": "authenticators, in order"})
    authorizers: tuple[str, ...] = attrs.field(default=(), metadata={"help": "authorizers (deny wins)"})
    telemetry: tuple[str, ...] = attrs.field(default=("metrics", "access-log"), metadata={
        "help": "telemetry sinks, on every listener ([]: none; by default those installed of metrics, access-log)"})
    extra: tuple[str, ...] = attrs.field(default=(), metadata={"help": "in-house plugins to enable, by plugin name"})


#: role -> (registry kind in Hooks, human name)
ROLES: dict[str, tuple[str, str]] = {
    "platform": ("platforms", "platform"),
    "engine": ("proxy_engines", "proxy engine"),
    "certificate_authority": ("certificate_authorities", "certificate authority"),
    "router": ("routers", "router"),
    "load_balancer": ("load_balancers", "load balancer"),
    "config_sources": ("config_sources", "config source"),
    "authenticators": ("authenticators", "authenticator"),
    "authorizers": ("authorizers", "authorizer"),
    "telemetry": ("telemetry", "telemetry sink"),
}
STRATEGY_ROLES = ("router", "load_balancer", "authenticators", "authorizers", "telemetry")


@attrs.frozen
class Mesh:
    """A validated mesh file."""

    path: Path
    mesh: MeshSettings
    plugins: Selection
    settings: Mapping[str, Any]  # record name -> settings object

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return self.path.parent / STATE_DIR

    def selected(self, role: str) -> tuple[str, ...]:
        value = getattr(self.plugins, role)
        return value if isinstance(value, tuple) else ((value,) if value else ())

    def selection_map(self) -> dict[str, Any]:
        return attrs.asdict(self.plugins)


# ── converter: strict scalars, unknown keys refused ─────────────────────────

_converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _strict(kind: type, name: str, accept: tuple[type, ...]) -> None:
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accept):
            raise TypeError(f"expected {name}, got {describe(value)}")
        return kind(value)

    _converter.register_structure_hook(kind, hook)


_strict(int, "an integer", (int,))
_strict(float, "a number", (int, float))
_strict(str, "a string", (str,))
_strict(bool, "true or false", (bool,))
_converter.register_structure_hook(Path, lambda v, _: Path(v) if isinstance(v, str) else _bad("a path", v))


def _enum(value: Any, cls: type[enum.Enum]) -> Any:
    values = [m.value for m in cls]
    return cls(value) if value in values else _bad("one of " + ", ".join(map(str, values)), value)


for _base in (enum.Enum, enum.StrEnum):  # StrEnum before str in the MRO: the string hook must not win
    _converter.register_structure_hook(_base, _enum)


def _collection_hook(t: Any) -> Any:
    """Lists and mappings as cattrs structures them, but only from a YAML list or
    mapping: cattrs alone would turn the string ``acme`` into ``('a', 'c', 'm', 'e')``."""
    # (not the converter's gen_* methods: they register their hook for `t` directly, bypassing this one)
    if is_mapping(t):
        to = get_origin(t) or t
        to = dict if to in (Mapping, MutableMapping) else to
        expected, accept, inner = "a mapping", dict, mapping_structure_factory(t, _converter, to, detailed_validation=True)
    elif is_hetero_tuple(t):
        expected, accept, inner = "a list", list, _converter._structure_tuple  # noqa: SLF001
    elif is_tuple(t) or (is_sequence(t) and not is_mutable_sequence(t)):
        expected, accept, inner = "a list", list, homogenous_tuple_structure_factory(t, _converter)
    elif is_sequence(t):
        expected, accept, inner = "a list", list, list_structure_factory(t, _converter)
    else:
        expected, accept = "a list", list
        inner = _converter._structure_frozenset if is_frozenset(t) else _converter._structure_set  # noqa: SLF001

    def hook(value: Any, cl: Any) -> Any:
        if not isinstance(value, accept):
            raise TypeError(f"expected {expected}, got {describe(value)}")
        return inner(value, cl)

    return hook


_converter.register_structure_hook_factory(
    lambda t: is_mapping(t) or is_sequence(t) or is_hetero_tuple(t) or is_any_set(t), _collection_hook)


def _bad(expected: str, value: Any) -> Any:
    raise TypeError(f"expected {expected}, got {describe(value)}")


def describe(value: Any) -> str:
    """How a wrong value is named in a problem line: `a mapping`, `a list`, `nothing`, or its repr."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def structure(data: Any, cls: type) -> Any:
    """Structure `data` into `cls` with the mesh file's strict rules."""
    return _converter.structure(data, cls)


# ── YAML with line numbers ───────────────────────────────────────────────────


def _compose(text: str, file: str) -> tuple[Any, dict[tuple, int]]:
    lines: dict[tuple, int] = {}
    constructor = yaml.constructor.SafeConstructor()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise MeshError([f"{file}:{line}: (document): expected valid YAML, got a syntax error: {problem}"]) from None
    problems: list[str] = []

    def build(n: yaml.Node, path: tuple) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    problems.append(f"{file}:{key_node.start_mark.line + 1}: {_dotted((*path, key))}: "
                                    f"expected each key once, got {key!r} again")
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, (*path, i)) for i, v in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    data = build(node, ()) if node is not None else {}
    if problems:
        raise MeshError(problems)
    return data, lines


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


# ── error walking ────────────────────────────────────────────────────────────


def _walk(exc: BaseException, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if hasattr(note, "name"):
                    sub_path = (*path, note.name)
                elif hasattr(note, "index"):
                    sub_path = (*path, note.index)
            yield from _walk(sub, sub_path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = ", ".join(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        for key in sorted(exc.extra_fields, key=str):
            yield (*path, key), f"expected one of the keys {known}, got unknown key {key!r}"
    elif isinstance(exc, KeyError):
        yield path, "expected a value, got nothing (required)"
    elif isinstance(exc, (TypeError, ValueError)) and str(exc).startswith("expected"):
        yield path, str(exc)
    elif isinstance(exc, (TypeError, ValueError, AttributeError)):
        yield path, f"expected a valid value, got an error: {exc}"
    else:
        raise exc


def _secret_paths(cls: Any, data: Any, path: tuple) -> Iterator[tuple]:
    if not attrs.has(cls) or not isinstance(data, dict):
        return
    attrs.resolve_types(cls)
    for field in attrs.fields(cls):
        if field.metadata.get("secret"):
            yield (*path, field.name)
        elif isinstance(field.type, type) and attrs.has(field.type):
            yield from _secret_paths(field.type, data.get(field.name), (*path, field.name))


class _Report:
    def __init__(self, file: str, lines: dict[tuple, int], data: Any) -> None:
        self.file, self.lines, self.data = file, lines, data
        self.problems: list[tuple[int, str]] = []
        self.secrets: set[tuple] = set()

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def add(self, path: tuple, message: str) -> None:
        if any(path[: len(s)] == s for s in self.secrets):
            message = message.split(", got ")[0] + ", got *** (secret)"
        self.problems.append((self.line(path), f"{self.file}:{self.line(path)}: {_dotted(path)}: {message}"))

    def structure(self, data: Any, cls: type, path: tuple) -> Any:
        self.secrets.update(_secret_paths(cls, data, path))
        try:
            with attrs.validators.disabled():  # run by _validate, so each failure names its field
                obj = _converter.structure(data if data is not None else {}, cls)
        except Exception as exc:  # noqa: BLE001 - every cattrs failure becomes a problem line
            if isinstance(data, (list, str, int)) and attrs.has(cls):
                self.add(path, f"expected a mapping, got {describe(data)}")
                return None
            for sub_path, message in _walk(exc, path):
                self.add(sub_path, message)
            return None
        before = len(self.problems)
        self._validate(obj, path)
        return obj if len(self.problems) == before else None

    def _validate(self, value: Any, path: tuple) -> None:
        """Run the attrs validators of `value` and everything in it, naming each failing field."""
        if attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                item = getattr(value, field.name)
                if field.validator is not None:
                    try:
                        field.validator(value, field, item)
                    except (TypeError, ValueError) as exc:
                        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
                        self.add((*path, field.name), text if text.startswith("expected")
                                 else f"expected a valid value, got an error: {text}")
                        continue
                self._validate(item, (*path, field.name))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                self._validate(item, (*path, i))
        elif isinstance(value, dict):
            for key, item in value.items():
                self._validate(item, (*path, key))

    def settings(self, data: Any, cls: type, path: tuple) -> Any:
        """Structure one settings section, then add its own cross-field `problems()`."""
        obj = self.structure(data, cls, path)
        if obj is not None:
            for sub_path, message in getattr(obj, "problems", lambda: [])():
                self.add((*path, *sub_path), message)
        return obj

    def raise_if_any(self) -> None:
        if self.problems:
            raise MeshError([text for _, text in sorted(self.problems)])


def settings_from_text(text: str, cls: type, file: str = "settings.yaml") -> Any:
    """Parse one settings section (YAML) into `cls` exactly as a mesh file's section is.

    Raises :class:`MeshError` with every problem, paths relative to the section.
    """
    data, lines = _compose(text, file)
    report = _Report(file, lines, data)
    obj = report.settings(data, cls, ())
    report.raise_if_any()
    return obj


def find_mesh_file(target: str | Path | None) -> Path:
    """`DIR` (containing knotwork.yaml) or a file path; default: the current directory."""
    path = Path(target or ".")
    return path / MESH_FILE if path.is_dir() else path


def load_mesh(target: str | Path | None, hooks: Hooks, *, engine: str | None = None) -> Mesh:
    """Read and validate a mesh file; raise MeshError listing every problem."""
    path = find_mesh_file(target).absolute()
    try:
        text = path.read_text()
    except OSError as exc:
        raise MeshError([f"{path}:0: (file): expected a readable mesh file, got {exc.strerror or exc}"]) from None
    data, lines = _compose(text, str(path))
    if not isinstance(data, dict):
        raise MeshError([f"{path}:{lines.get((), 1)}: (document): expected a mapping, got {describe(data)}"])
    if engine:
        data.setdefault("plugins", {})
        if isinstance(data["plugins"], dict):
            data["plugins"]["engine"] = engine
    report = _Report(str(path), lines, data)
    settings = report.structure(data.get("mesh"), MeshSettings, ("mesh",)) or MeshSettings()
    selection = report.structure(data.get("plugins"), Selection, ("plugins",))
    if selection is None:
        report.raise_if_any()
    registry = hooks.registry()
    plugins_given = data.get("plugins") if isinstance(data.get("plugins"), dict) else {}
    defaulted = set() if "config_sources" in plugins_given else set(selection.config_sources)
    if "certificate_authority" not in plugins_given and selection.certificate_authority not in registry["certificate_authorities"]:
        selection = attrs.evolve(selection, certificate_authority=None)  # the default CA is not installed: no mTLS
    if "telemetry" not in plugins_given:  # the default sinks that are installed
        selection = attrs.evolve(selection, telemetry=tuple(n for n in selection.telemetry if n in registry["telemetry"]))
    sections: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for role, (kind, human) in ROLES.items():
        value = getattr(selection, role)
        for i, name in enumerate(value if isinstance(value, tuple) else (value,) if value else ()):
            where = ("plugins", role, i) if isinstance(value, tuple) else ("plugins", role)
            record = registry[kind].get(name)
            if record is None and role == "config_sources" and name in defaulted:
                continue  # a default config source not installed: the control plane skips it
            if record is None:
                installed = ", ".join(sorted(registry[kind])) or "none"
                report.add(where, f"expected an installed {human} ({installed}), got {name!r}")
                continue
            records[name] = record
            # (with an unknown engine, that one problem is enough)
            engine_known = selection.engine in registry["proxy_engines"]
            if role in STRATEGY_ROLES and engine_known and selection.engine not in record.engines:
                article = "an" if human[0] in "aeiou" else "a"
                report.add(where, f"expected {article} {human} that supports engine {selection.engine!r}, "
                                  f"got {name!r} (supports: {', '.join(sorted(record.engines))})")
    plugin_names = hooks.plugin_names()
    for i, name in enumerate(selection.extra):
        if name not in plugin_names:
            report.add(("plugins", "extra", i), f"expected an installed plugin ({', '.join(sorted(plugin_names))}), got {name!r}")
    for key in data:
        if key in ("mesh", "plugins"):
            continue
        record = records.get(key)
        if record is None or record.settings is None:
            known = ", ".join(["mesh", "plugins", *sorted(n for n, r in records.items() if r.settings)])
            report.add((key,), f"expected one of the sections {known}, got unknown section {key!r}")
    for name, record in records.items():
        if record.settings is None:
            continue
        obj = report.settings(data.get(name), record.settings, (name,))
        if obj is not None:
            sections[name] = obj
    report.raise_if_any()
    return Mesh(path=path, mesh=settings, plugins=selection, settings=sections)


def preflight(mesh: Mesh, hooks: Any) -> None:
    """Run the `check` of every selected component (platform, config sources, certificate authority);
    raise one :class:`MeshError` with all their problems."""
    from .records import ComponentContext

    registry = hooks.registry()
    problems: list[str] = []
    for role in ("platform", "config_sources", "certificate_authority"):
        for name in mesh.selected(role):
            record = registry[ROLES[role][0]].get(name)
            if record is None or record.check is None:
                continue
            ctx = ComponentContext(mesh=mesh.mesh, settings=mesh.settings.get(name), mesh_dir=mesh.dir,
                                   state_dir=mesh.state_dir, selection=mesh.selection_map())
            try:
                record.check(ctx)
            except MeshError as exc:
                problems += exc.problems
    if problems:
        raise MeshError(problems)
