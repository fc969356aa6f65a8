"""The validator of Istio resources, compiled from Istio's own CRD schemas.

The one definition is the vendored data of :mod:`knotwork_config.crds`
(Istio's published OpenAPI v3 schemas). :func:`check` walks a resource's
``spec`` against its kind's schema, compiled once per kind into a tree of
small check objects:

- types (``expected a string, got 3``), int32/uint32 ranges, enums (naming
  the allowed values), ``minLength``/``maxLength``/``pattern``, list and map
  sizes;
- objects are closed — an unknown field is an error naming the known ones
  (and the nearest, for a typo) — except where the schema says
  ``x-kubernetes-preserve-unknown-fields``; ``required``; maps
  (``additionalProperties``; YAML integer keys such as ``8080:`` are read as
  Kubernetes reads them, as strings);
- Istio's ``oneOf`` pattern for exclusive fields (``uri.exact|prefix|regex``);
- the CEL rules (``x-kubernetes-validations``) Istio writes, recognised by
  their shape: durations (``duration(self) >= duration('1ms')``, checked with
  :func:`parse_duration`), ports, wildcards, exclusive and required-together
  fields, unique list keys, a field that needs another non-empty one
  (PeerAuthentication's ``portLevelMtls`` needs ``selector.matchLabels``). A
  rule of another shape is skipped silently.

``None`` values count as absent, as Kubernetes prunes them.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from knotwork.config import describe as show

from . import crds

__all__ = ["API_VERSIONS", "KINDS", "Check", "Kind", "check", "compile_schema", "compiled", "parse_duration",
           "rule_shape", "show"]

Problem = tuple[tuple, str]


@attrs.frozen
class Kind:
    """One Istio resource type of the data: its group, kind, served versions and ``spec`` schema."""

    group: str
    kind: str
    plural: str
    versions: tuple[str, ...]
    spec: Mapping[str, Any] = attrs.field(repr=False, eq=False)


def _version_key(version: str) -> tuple[int, int, int]:
    """Kubernetes version order, oldest first: v1alpha1 < v1beta1 < v1 < v2alpha1."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if m is None:
        return (0, 0, 0)
    return int(m.group(1)), {"alpha": 0, "beta": 1, None: 2}[m.group(2)], int(m.group(3) or 0)


def _kinds() -> dict[tuple[str, str], Kind]:
    out = {}
    for entry in crds.data()["kinds"]:
        out[(entry["group"], entry["kind"])] = Kind(
            group=entry["group"], kind=entry["kind"], plural=entry["names"]["plural"],
            versions=tuple(sorted((v["name"] for v in entry["versions"]), key=_version_key)),
            spec=entry["schema"]["properties"]["spec"])
    return out


#: (group, kind) -> the kind's data, for every Istio resource type Knotwork reads.
KINDS: dict[tuple[str, str], Kind] = _kinds()

#: API group -> versions Knotwork reads (the versions Istio serves), oldest first.
API_VERSIONS: dict[str, tuple[str, ...]] = {}
for _k in KINDS.values():
    API_VERSIONS[_k.group] = tuple(sorted({*API_VERSIONS.get(_k.group, ()), *_k.versions}, key=_version_key))
del _k


def check(group: str, kind: str, spec: Any) -> list[Problem]:
    """Problems of one resource's spec, paths starting at ``spec``; [] for a kind not in :data:`KINDS`."""
    if (group, kind) not in KINDS:
        return []
    return list(compiled(group, kind).problems(spec, ("spec",)))


@functools.cache
def compiled(group: str, kind: str) -> Check:
    """The compiled check of a kind's ``spec`` (built on first use, then reused)."""
    return compile_schema(KINDS[(group, kind)].spec)


# ---------------------------------------------------------------------------- durations

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: Any) -> float:
    """Seconds of a duration string in Go's (and CEL's) syntax: ``'0.5s'``, ``'3s'``, ``'1m30s'``, ``'100ms'``.

    Raises ValueError for anything else (a bare number has no unit and is refused, as in Istio).
    """
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(value)
    total, pos = 0.0, 0
    while pos < len(text):
        part = _DURATION_PART.match(text, pos)
        if part is None:
            raise ValueError(value)
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    return sign * round(total, 9)


# ---------------------------------------------------------------------------- checks


class Check:
    """One compiled schema node: yields (path, problem) pairs for a value."""

    __slots__ = ()

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:  # pragma: no cover - interface
        raise NotImplementedError


Rule = Callable[[Any, tuple], Iterator[Problem]]


def _run(rules: tuple[Rule, ...], value: Any, path: tuple) -> Iterator[Problem]:
    for rule in rules:
        yield from rule(value, path)


class _Anything(Check):
    __slots__ = ()

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        return iter(())


class _Bool(Check):
    __slots__ = ()

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, bool):
            yield path, f"expected true or false, got {show(value)}"


class _Int(Check):
    __slots__ = ("low", "high", "rules")

    def __init__(self, low: int, high: int, rules: tuple[Rule, ...]) -> None:
        self.low, self.high, self.rules = low, high, rules

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, int):
            yield path, f"expected an integer, got {show(value)}"
        elif not self.low <= value <= self.high:
            yield path, f"expected an integer from {self.low} to {self.high}, got {value}"
        else:
            yield from _run(self.rules, value, path)


class _Number(Check):
    __slots__ = ("low", "high")

    def __init__(self, low: float | None, high: float | None) -> None:
        self.low, self.high = low, high

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            yield path, f"expected a number, got {show(value)}"
        elif self.low is not None and value < self.low or self.high is not None and value > self.high:
            yield path, f"expected a number from {self.low} to {self.high}, got {value}"


class _IntOrString(Check):
    __slots__ = ()

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if isinstance(value, bool) or not isinstance(value, int | str):
            yield path, f"expected an integer or a string, got {show(value)}"


class _Str(Check):
    __slots__ = ("enum", "min_length", "max_length", "pattern", "rules")

    def __init__(self, enum: tuple[str, ...] | None, min_length: int, max_length: int | None,
                 pattern: re.Pattern | None, rules: tuple[Rule, ...]) -> None:
        self.enum, self.min_length, self.max_length = enum, min_length, max_length
        self.pattern, self.rules = pattern, rules

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, str):
            yield path, f"expected a string, got {show(value)}"
        elif self.enum is not None and value not in self.enum:
            yield path, f"expected one of {', '.join(self.enum)}, got {show(value)}"
        elif len(value) < self.min_length:
            yield path, f"expected at least {self.min_length} characters, got {show(value)}"
        elif self.max_length is not None and len(value) > self.max_length:
            yield path, f"expected at most {self.max_length} characters, got {len(value)}"
        elif self.pattern is not None and not self.pattern.search(value):
            yield path, f"expected a string matching {self.pattern.pattern}, got {show(value)}"
        else:
            yield from _run(self.rules, value, path)


class _Duration(Check):
    __slots__ = ("minimum", "minimum_text")

    def __init__(self, minimum_text: str | None) -> None:
        self.minimum_text = minimum_text
        self.minimum = parse_duration(minimum_text) if minimum_text else None

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        try:
            seconds = parse_duration(value)
        except ValueError:
            yield path, f"expected a duration such as '0.5s', '3s' or '1m', got {show(value)}"
            return
        if self.minimum is not None and seconds < self.minimum:
            yield path, f"expected a duration of at least {self.minimum_text}, got {show(value)}"


class _List(Check):
    __slots__ = ("item", "min_items", "max_items", "rules")

    def __init__(self, item: Check, min_items: int, max_items: int | None, rules: tuple[Rule, ...]) -> None:
        self.item, self.min_items, self.max_items, self.rules = item, min_items, max_items, rules

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, list | tuple):
            yield path, f"expected a list, got {show(value)}"
            return
        if len(value) < self.min_items:
            yield path, f"expected at least {self.min_items} item{'s' * (self.min_items != 1)}, got {len(value)}"
        elif self.max_items is not None and len(value) > self.max_items:
            yield path, f"expected at most {self.max_items} items, got {len(value)}"
        before = False
        item = self.item
        for i, element in enumerate(value):
            if element is None:
                yield (*path, i), f"expected an item, got {show(element)}"
                before = True
                continue
            for problem in item.problems(element, (*path, i)):
                before = True
                yield problem
        if not before:
            yield from _run(self.rules, value, path)


def _map_key(key: Any) -> str | None:
    """A mapping key as Kubernetes reads it from YAML: strings, and integers as their digits."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    return None


class _Obj(Check):
    """A mapping: known fields, optionally a check for any other key (a map), exclusive groups, rules."""

    __slots__ = ("fields", "known", "extra", "closed", "required", "exclusive", "min_properties",
                 "max_properties", "rules", "key_rules")

    def __init__(self, fields: dict[str, Check], extra: Check | None, closed: bool, required: tuple[str, ...],
                 exclusive: tuple[tuple[str, ...], ...], min_properties: int, max_properties: int | None,
                 rules: tuple[Rule, ...], key_rules: tuple[Rule, ...]) -> None:
        self.fields, self.extra, self.closed, self.required = fields, extra, closed, required
        self.known = ", ".join(fields)
        self.exclusive, self.min_properties, self.max_properties = exclusive, min_properties, max_properties
        self.rules, self.key_rules = rules, key_rules

    def problems(self, value: Any, path: tuple) -> Iterator[Problem]:
        if not isinstance(value, Mapping):
            yield path, f"expected a mapping, got {show(value)}"
            return
        found = False
        for name in self.required:
            if value.get(name) is None:
                found = True
                yield (*path, name), "expected a value, got nothing (required)"
        fields, extra = self.fields, self.extra
        for key, item in value.items():
            field = fields.get(key) if isinstance(key, str) else None
            if field is None and extra is not None:
                name = _map_key(key)
                if name is None:
                    found = True
                    yield (*path, str(key)), f"expected a string key, got {show(key)}"
                    continue
                for rule in self.key_rules:
                    for problem in rule(name, path):
                        found = True
                        yield problem
                field, key = extra, name
            if field is None:
                if self.closed:
                    found = True
                    yield (*path, key), self._unknown(key)
                continue
            if item is not None:
                for problem in field.problems(item, (*path, key)):
                    found = True
                    yield problem
        if self.max_properties is not None and len(value) > self.max_properties:
            found = True
            yield path, f"expected at most {self.max_properties} entries, got {len(value)}"
        if len(value) < self.min_properties:
            found = True
            yield path, f"expected at least {self.min_properties} entries, got {len(value)}"
        for group in self.exclusive:
            given = [name for name in group if value.get(name) is not None]
            if len(given) > 1:
                found = True
                yield path, f"expected at most one of the fields {', '.join(group)}, got {' and '.join(given)}"
        if not found:
            yield from _run(self.rules, value, path)

    def _unknown(self, key: Any) -> str:
        if not self.fields:
            return f"expected no fields here, got unknown field {key!r}"
        near = difflib.get_close_matches(str(key), list(self.fields), n=1, cutoff=0.7)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"expected one of the fields {self.known}, got unknown field {key!r}{hint}"


# ---------------------------------------------------------------------------- CEL rules by shape


def _has(value: Mapping, name: str) -> bool:
    return value.get(name) is not None


_STRING_LIST = re.compile(r'"((?:[^"\\]|\\.)*)"')
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"duration\(self\) >= duration\('([^']+)'\)"), "duration"),
    (re.compile(r"0 < self && self <= (\d+)"), "int_max"),
    (re.compile(r"self in \[(.*)\]"), "in"),
    (re.compile(r'self != "(.*)"'), "not_equal"),
    (re.compile(r'!self\.contains\("(.*)"\)'), "not_contains"),
    (re.compile(r"self\.size\(\) == 0"), "empty"),
    (re.compile(r'self\.all\(key, !key\.contains\("(.*)"\)\)'), "key_not_contains"),
    (re.compile(r"self\.all\(key, key\.size\(\) != 0\)"), "key_not_empty"),
    (re.compile(r"self\.all\(key, 0 < int\(key\) && int\(key\) <= (\d+)\)"), "key_port"),
    (re.compile(r'self\.all\(key, size\(key\) < (\d+) && key\.matches\("(.*)"\)\)'), "key_matches"),
    (re.compile(r"\(has\(self\.\w+\) \? 1 : 0\)(?: \+ \(has\(self\.\w+\) \? 1 : 0\))+ <= 1"), "exclusive"),
    (re.compile(r"has\(self\.(\w+)\) \|\| has\(self\.(\w+)\)"), "any_of"),
    (re.compile(r"self\.all\((\w+), self\.exists_one\((\w+), \1\.(\w+) == \2\.\3\)\)"), "unique"),
    (re.compile(r'\(\(has\(self\.(\w+)\) \? self\.\1 : "(\w*)"\) == "(\w+)"\) '
                r'\? !has\(self\.(\w+)\) : true'), "forbids"),
    (re.compile(r"url\(self\)\.getScheme\(\) in \[(.*)\]"), "url_scheme"),
    (re.compile(r"has\(self\.(\w+)\) \? \(\(\(has\(self\.(\w+)\) && has\(self\.\2\.(\w+)\)\) "
                r"\? self\.\2\.\3 : \{\}\)\.size\(\) > 0\) : true"), "requires_nonempty"),
]


def rule_shape(rule: str) -> str | None:
    """The shape of a CEL rule Knotwork evaluates (``"duration"``, ``"exclusive"``, …); None for one it skips."""
    text = " ".join(rule.split())
    return next((shape for pattern, shape in _RULES if pattern.fullmatch(text)), None)


def _parse_rules(node: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    """(shape, captured groups, message) of each recognised CEL rule of a node; others are skipped."""
    out = []
    for rule in node.get("x-kubernetes-validations") or ():
        text = " ".join(str(rule.get("rule", "")).split())
        for pattern, shape in _RULES:
            m = pattern.fullmatch(text)
            if m is not None:
                groups = tuple(re.findall(r"has\(self\.(\w+)\)", text)) if shape == "exclusive" else m.groups()
                out.append((shape, groups, str(rule.get("message", ""))))
                break
    return out


def _value_rule(shape: str, groups: tuple[str, ...], message: str) -> Rule | None:
    if shape == "not_equal":
        literal = groups[0]

        def not_equal(value: Any, path: tuple) -> Iterator[Problem]:
            if value == literal:
                yield path, f"expected a value other than {literal!r} ({message}), got {show(value)}"
        return not_equal
    if shape == "not_contains":
        literal = groups[0]

        def not_contains(value: Any, path: tuple) -> Iterator[Problem]:
            if literal in value:
                yield path, f"expected no {literal!r} ({message}), got {show(value)}"
        return not_contains
    if shape == "empty":
        def empty(value: Any, path: tuple) -> Iterator[Problem]:
            if len(value):
                yield path, f"expected nothing ({message}), got {show(value)}"
        return empty
    if shape == "any_of":
        def any_of(value: Any, path: tuple) -> Iterator[Problem]:
            if not any(_has(value, name) for name in groups):
                yield path, f"expected one of the fields {', '.join(groups)}, got neither ({message})"
        return any_of
    if shape == "forbids":
        field, default, when, forbidden = groups

        def forbids(value: Any, path: tuple) -> Iterator[Problem]:
            if value.get(field, default) == when and _has(value, forbidden):
                yield (*path, forbidden), (f"expected no {forbidden} when {field} is {when}"
                                           f"{' (the default)' if default == when else ''} ({message}), "
                                           f"got {show(value[forbidden])}")
        return forbids
    if shape == "url_scheme":
        schemes = tuple(_STRING_LIST.findall(groups[0]))

        def url_scheme(value: Any, path: tuple) -> Iterator[Problem]:
            if value.partition("://")[0] not in schemes or "://" not in value:
                yield path, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {show(value)}"
        return url_scheme
    if shape == "requires_nonempty":
        field, parent, child = groups

        def requires_nonempty(value: Any, path: tuple) -> Iterator[Problem]:
            given = value.get(parent)
            if _has(value, field) and not (isinstance(given, Mapping) and given.get(child)):
                yield (*path, field), f"expected a non-empty {parent}.{child} with {field} ({message})"
        return requires_nonempty
    if shape == "unique":
        field = groups[2]

        def unique(value: Any, path: tuple) -> Iterator[Problem]:
            yield from _unique(value, path, (field,))
        return unique
    return None


def _key_rule(shape: str, groups: tuple[str, ...], message: str) -> Rule | None:
    if shape == "key_not_contains":
        literal = groups[0]

        def key_not_contains(key: str, path: tuple) -> Iterator[Problem]:
            if literal in key:
                yield (*path, key), f"expected a key without {literal!r} ({message}), got {key!r}"
        return key_not_contains
    if shape == "key_not_empty":
        def key_not_empty(key: str, path: tuple) -> Iterator[Problem]:
            if not key:
                yield (*path, key), "expected a non-empty key, got ''"
        return key_not_empty
    if shape == "key_port":
        high = int(groups[0])

        def key_port(key: str, path: tuple) -> Iterator[Problem]:
            if not (key.isdigit() and 0 < int(key) <= high):
                yield (*path, key), f"expected a port number from 1 to {high} as the key, got {key!r}"
        return key_port
    if shape == "key_matches":
        limit, pattern = int(groups[0]), re.compile(groups[1].replace("\\\\", "\\"))

        def key_matches(key: str, path: tuple) -> Iterator[Problem]:
            if not (len(key) < limit and pattern.search(key)):
                yield (*path, key), (f"expected a key of fewer than {limit} characters matching "
                                     f"{pattern.pattern} ({message}), got {key!r}")
        return key_matches
    return None


def _unique(value: list, path: tuple, keys: tuple[str, ...]) -> Iterator[Problem]:
    seen: set = set()
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            continue
        key = tuple(item.get(k) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k} {show(v)}" for k, v in zip(keys, key, strict=True))
            yield (*path, i), f"expected each {'/'.join(keys)} once in the list, got {shown} again"
        seen.add(key)


# ---------------------------------------------------------------------------- compiling


def _exclusive_groups(node: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Istio's "at most one of" pattern: oneOf [not anyOf [required a, required b…], required a, required b…]."""
    out = []
    alternatives = [node["oneOf"]] if "oneOf" in node else []
    alternatives += [part["oneOf"] for part in node.get("allOf") or () if "oneOf" in part]
    for one_of in alternatives:
        names = [n for option in one_of for n in option.get("required") or ()]
        if names:
            out.append(tuple(names))
    return out


def compile_schema(node: Mapping[str, Any]) -> Check:
    """The check of one OpenAPI v3 schema node (and everything under it)."""
    rules = _parse_rules(node)
    kind = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        return _IntOrString()
    if kind == "string":
        durations = [groups[0] for shape, groups, _ in rules if shape == "duration"]
        if durations:
            return _Duration(durations[0])
        enum = tuple(node["enum"]) if "enum" in node else None
        for shape, groups, _ in rules:
            if shape == "in":
                allowed = tuple(_STRING_LIST.findall(groups[0]))
                enum = allowed if enum is None else tuple(v for v in enum if v in allowed)
        pattern = re.compile(node["pattern"]) if "pattern" in node else None
        checks = tuple(r for shape, groups, msg in rules if (r := _value_rule(shape, groups, msg)) is not None)
        return _Str(enum, node.get("minLength", 0), node.get("maxLength"), pattern, checks)
    if kind == "integer":
        bits = 32 if node.get("format") == "int32" else 64
        low, high = node.get("minimum", -(2 ** (bits - 1))), node.get("maximum", 2 ** (bits - 1) - 1)
        for shape, groups, _ in rules:
            if shape == "int_max":
                low, high = max(low, 1), min(high, int(groups[0]))
        return _Int(low, high, ())
    if kind == "number":
        return _Number(node.get("minimum"), node.get("maximum"))
    if kind == "boolean":
        return _Bool()
    if kind == "array":
        checks = [r for shape, groups, msg in rules if (r := _value_rule(shape, groups, msg)) is not None]
        if node.get("x-kubernetes-list-type") == "map" and node.get("x-kubernetes-list-map-keys"):
            keys = tuple(node["x-kubernetes-list-map-keys"])
            checks.insert(0, lambda value, path: _unique(value, path, keys))
        item = compile_schema(node["items"]) if "items" in node else _Anything()
        return _List(item, node.get("minItems", 0), node.get("maxItems"), tuple(checks))
    if kind == "object":
        preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
        fields = {name: compile_schema(sub) for name, sub in (node.get("properties") or {}).items()}
        extra_node = node.get("additionalProperties")
        extra = compile_schema(extra_node) if isinstance(extra_node, Mapping) else _Anything() if extra_node else None
        groups = _exclusive_groups(node)
        groups += [g for shape, g, _ in rules if shape == "exclusive"]
        exclusive: list[tuple[str, ...]] = []
        for group in groups:
            if not any(set(group) == set(known) for known in exclusive):
                exclusive.append(group)
        checks = tuple(r for shape, g, msg in rules if (r := _value_rule(shape, g, msg)) is not None)
        key_checks = tuple(r for shape, g, msg in rules if (r := _key_rule(shape, g, msg)) is not None)
        return _Obj(fields, extra, not preserve and extra is None, tuple(node.get("required") or ()),
                    tuple(exclusive), node.get("minProperties", 0), node.get("maxProperties"), checks, key_checks)
    return _Anything()
