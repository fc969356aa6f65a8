"""The Istio resource types as attrs classes, made from the same schema data as the validator.

``knotwork_config.types.VirtualService`` is a frozen attrs class with one
keyword-only field per property of the kind's ``spec`` schema (names as in
the YAML, ``from`` → ``from_``), each ``None`` when absent; nested object
types are classes reachable from their parent by the field's capitalised
name (``VirtualService.Http.Route.Destination``). Lists become tuples, maps
dicts, fields the schema leaves open (``x-kubernetes-preserve-unknown-fields``)
stay plain data.

The classes are made with :func:`attrs.make_class` when a kind is first
asked for, not generated into a committed module: the schema data stays the
only definition (no generated file to keep in sync or review), and a
process pays only for the kinds it uses (from a few milliseconds to ~0.1 s
for DestinationRule, whose traffic policies nest deeply).

:func:`structure` turns a validated spec into them; :func:`unstructure`
turns them back into the spec's plain data.
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import crds

__all__ = ["kind_class", "structure", "unstructure"]

Build = Callable[[Any], Any]

#: On every generated class: YAML field name -> Python attribute name.
FIELDS = "__istio_fields__"


def _kinds() -> dict[str, Mapping[str, Any]]:
    return {entry["kind"]: entry for entry in crds.data()["kinds"]}


_KINDS = _kinds()


def _same(value: Any) -> Any:
    return value


def _capital(name: str) -> str:
    return name[:1].upper() + name[1:]


def _attribute(prop: str) -> str:
    """A Python attribute name for a YAML field name: ``from`` -> ``from_``."""
    attr = "".join(c if c.isalnum() or c == "_" else "_" for c in prop)
    return attr + "_" if keyword.iskeyword(attr) or not attr.isidentifier() else attr


def _make(node: Mapping[str, Any], name: str, qualname: str) -> tuple[type | None, Build]:
    """(the class of an object node, or None) and the function building a value of `node`."""
    kind = node.get("type")
    if kind == "array" and isinstance(node.get("items"), Mapping):
        cls, item = _make(node["items"], name, qualname)
        return cls, (lambda value: tuple(item(v) for v in value)) if item is not _same else tuple
    if kind != "object" or node.get("x-kubernetes-preserve-unknown-fields"):
        return None, _same
    if "properties" not in node:
        extra = node.get("additionalProperties")
        if not isinstance(extra, Mapping):
            return None, _same
        cls, value_of = _make(extra, name, qualname)
        return cls, lambda value: {str(k): value_of(v) for k, v in value.items()}
    names: dict[str, str] = {}
    builders: list[tuple[str, str, Build]] = []
    nested: dict[str, type] = {}
    for prop, sub in node["properties"].items():
        attr = _attribute(prop)
        names[prop] = attr
        sub_cls, build = _make(sub, name + _capital(prop), f"{qualname}.{_capital(prop)}")
        if sub_cls is not None:
            nested[_capital(prop)] = sub_cls
        builders.append((prop, attr, build))
    cls = attrs.make_class(name, {attr: attrs.field(default=None, kw_only=True) for attr in names.values()},
                           frozen=True, slots=True)
    cls.__qualname__, cls.__module__ = qualname, __name__
    cls.__doc__ = f"Istio {qualname}: fields {', '.join(names)} (each None when absent)."
    setattr(cls, FIELDS, names)
    for nested_name, sub_cls in nested.items():
        setattr(cls, nested_name, sub_cls)

    def build(value: Mapping[str, Any]) -> Any:
        return cls(**{attr: make(value[prop]) for prop, attr, make in builders if value.get(prop) is not None})
    return cls, build


@functools.cache
def _kind(kind: str) -> tuple[type, Build]:
    entry = _KINDS.get(kind)
    if entry is None:
        raise KeyError(f"expected one of the kinds {', '.join(_KINDS)}, got {kind!r}")
    cls, build = _make(entry["schema"]["properties"]["spec"], kind, kind)
    assert cls is not None, kind
    return cls, build


def kind_class(kind: str) -> type:
    """The attrs class of a kind's ``spec`` (``"VirtualService"``); KeyError for a kind not in the data."""
    return _kind(kind)[0]


def structure(kind: str, spec: Mapping[str, Any]) -> Any:
    """A validated ``spec`` of `kind` as an instance of :func:`kind_class` (check it first with ``schema.check``)."""
    return _kind(kind)[1](spec)


def unstructure(value: Any) -> Any:
    """Plain data again: mappings with the YAML field names, lists, scalars (absent fields left out)."""
    names = getattr(type(value), FIELDS, None)
    if names is not None:
        return {prop: unstructure(getattr(value, attr)) for prop, attr in names.items()
                if getattr(value, attr) is not None}
    if isinstance(value, tuple | list):
        return [unstructure(v) for v in value]
    if isinstance(value, Mapping):
        return {k: unstructure(v) for k, v in value.items()}
    return value


def __getattr__(name: str) -> type:
    """``types.VirtualService`` and the like, made on first use."""
    if name in _KINDS:
        return kind_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_KINDS])
