"""Read Istio resources from multi-document YAML, whole-or-nothing.

:func:`parse_resources` returns every resource of a text, or raises
:class:`ConfigError` listing every problem, one line each::

    bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].destination.host: expected a string, got 3

YAML syntax errors name the line: ``bad.yaml:7: (yaml): expected valid YAML, got a syntax error: …``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from knotwork.model import Resource, SourceRef

from .schema import API_VERSIONS, KINDS, check, show

__all__ = ["ConfigError", "parse_resources", "resource_id"]

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


class ConfigError(Exception):
    """Resources refused: every problem, one formatted line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def resource_id(kind: Any, namespace: Any, name: Any) -> str:
    def part(value: Any) -> str:
        return value if isinstance(value, str) and value else "?"

    return f"{part(kind)}/{part(namespace)}/{part(name)}"


def _documents(text: str, file: str) -> list[tuple[Any, int]]:
    """(data, line of the document's start) per non-empty document."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{file}:{line}: (yaml): expected valid YAML, got a syntax error: {problem}"]) from None
    out = []
    constructor = yaml.constructor.SafeConstructor()
    for node in nodes:
        if node is None:
            continue
        try:
            data = constructor.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or node.start_mark
            raise ConfigError([f"{file}:{mark.line + 1}: (yaml): expected valid YAML, got an error: {exc}"]) from None
        if data is None:
            continue
        out.append((data, node.start_mark.line + 1))
    return out


def _resource(data: Any, line: int, file: str, namespace: str, forced: bool,
              problems: list[str], check_spec: bool = True) -> Resource | None:
    """One document as a Resource, or None after adding its problems."""
    if not isinstance(data, Mapping):
        problems.append(f"{file}:{line}: (document): expected a mapping (an Istio resource), got {show(data)}")
        return None
    meta = data.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    kind, name = data.get("kind"), meta.get("name")
    ns = meta.get("namespace") if meta.get("namespace") is not None else namespace
    before = len(problems)

    def add(path: tuple, message: str) -> None:
        problems.append(f"{file}: {resource_id(kind, ns, name)}: {dotted(path)}: {message}")

    for key in data:
        if key not in _TOP_LEVEL:
            add((key,), f"expected one of the fields {', '.join(_TOP_LEVEL)}, got unknown field {key!r}")
    api_version = data.get("apiVersion")
    group, _, version = str(api_version).rpartition("/") if isinstance(api_version, str) else ("", "", "")
    known = [f"{g}/{v}" for g, vs in API_VERSIONS.items() for v in vs]
    if group not in API_VERSIONS or version not in API_VERSIONS[group]:
        add(("apiVersion",), f"expected one of {', '.join(known)}, got {show(api_version)}")
        group = ""
    elif (group, kind) not in KINDS:
        kinds = sorted(k for g, k in KINDS if g == group)
        add(("kind",), f"expected a kind of {group} ({', '.join(kinds)}), got {show(kind)}")
    if not isinstance(data.get("metadata"), Mapping):
        add(("metadata",), f"expected a mapping, got {show(data.get('metadata'))}")
    elif not isinstance(name, str) or not name:
        add(("metadata", "name"), f"expected a name, got {show(name)}")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        add(("metadata", "name"), f"expected a DNS-1123 name (lower-case letters, digits, '-', '.'), got {name!r}")
    if not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns):
        add(("metadata", "namespace"), f"expected a DNS-1123 label (lower-case letters, digits, '-'), got {show(ns)}")
    elif forced and ns != namespace:
        add(("metadata", "namespace"), f"expected the namespace given with --namespace ({namespace!r}), got {ns!r}")
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, Mapping)
                               or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        add(("metadata", "labels"), f"expected a mapping of strings to strings, got {show(labels)}")
    spec = data.get("spec", {})
    if not isinstance(spec, Mapping):
        add(("spec",), f"expected a mapping, got {show(spec)}")
    elif group and check_spec:
        for path, message in check(group, kind, spec):
            add(path, message)
    if len(problems) > before:
        return None
    return Resource(api_version=api_version, kind=kind, name=name, namespace=ns, spec=dict(spec),
                    labels=dict(labels or {}), source=SourceRef(file, line))


def parse_resources(text: str, file: str, *, namespace: str = "default", forced_namespace: bool = False,
                    identity_only: bool = False) -> list[Resource]:
    """Every resource of `text` (multi-document YAML), in order; raises ConfigError with every problem.

    `namespace` is the default for resources that name none; with
    `forced_namespace` (``-n``) a resource naming another one is a problem.
    A resource defined twice in `text` is a problem. `identity_only` skips
    the spec checks (what ``delete`` needs).
    """
    problems: list[str] = []
    resources: list[Resource] = []
    seen: dict[tuple[str, str, str], int] = {}
    for data, line in _documents(text, file):
        if identity_only and isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k in ("apiVersion", "kind", "metadata")}
        res = _resource(data, line, file, namespace, forced_namespace, problems, check_spec=not identity_only)
        if res is None:
            continue
        if res.key in seen:
            problems.append(f"{file}: {res}: metadata.name: expected each resource once in a file, "
                            f"got it again (first at line {seen[res.key]}, again at line {line})")
            continue
        seen[res.key] = line
        resources.append(res)
    if problems:
        raise ConfigError(problems)
    return resources
