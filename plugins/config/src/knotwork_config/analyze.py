"""``knotwork analyze [DIR]``: Istio-style analysis of a mesh's resources, like ``istioctl analyze``.

What is analyzed is what the running mesh would see: the files of the
config folder, the resources applied with ``knotwork apply`` (read from
``.knotwork/applied/resources.json``), plus ``-f FILE`` resources as if they
were applied now. The service registry (services, ports, gateway workloads
and the resources platforms declare, such as ``knotwork up``'s ingress
Gateway) comes from the running control plane over its admin socket; with
no mesh running, the checks that need it are skipped and the command says
so once on stderr.

Each finding has a stable code (``KW0101``: the number mirrors Istio's
``IST0101`` where Istio has the same analyzer; ``KW1xxx`` are Knotwork's
own), a level, the file and line, the resource and the field. The checks
themselves are in :mod:`knotwork_config.analyzers`.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from knotwork.model import MeshSettings, Resource, SourceRef, resolve_host

from .parse import ConfigError, parse_resources
from .store import APPLIED_FILE, Store

__all__ = ["MESSAGES", "Finding", "Inputs", "Item", "Level", "Message", "Registry", "load_inputs", "render"]


class Level(enum.IntEnum):
    """How serious a finding is; the order is the threshold order."""

    Info = 0
    Warning = 1
    Error = 2

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class Message:
    """A kind of finding: stable code, level and name (Istio's message types)."""

    code: str
    level: Level
    name: str
    description: str


def _messages(*items: Message) -> dict[str, Message]:
    return {m.code: m for m in items}


#: Every code analyze can report. Numbers below 1000 mirror Istio's ``IST`` codes.
MESSAGES: dict[str, Message] = _messages(
    Message("KW0001", Level.Error, "InternalError", "an analyzer failed; this is a bug in Knotwork"),
    Message("KW0101", Level.Error, "ReferencedResourceNotFound",
            "a destination host, host:port, subset, gateway or Gateway selector names nothing that exists"),
    Message("KW0106", Level.Error, "SchemaValidationError",
            "a resource is not valid: YAML, apiVersion/kind, metadata, unknown fields or types"),
    Message("KW0109", Level.Error, "ConflictingMeshGatewayVirtualServiceHosts",
            "several VirtualServices bound to the mesh gateway define one host; only the first one is used"),
    Message("KW0112", Level.Error, "VirtualServiceDestinationPortSelectorRequired",
            "a destination has no port while its service has several"),
    Message("KW0113", Level.Error, "MTLSPolicyConflict",
            "a DestinationRule's tls mode is refused by the destination's mesh or namespace PeerAuthentication"),
    Message("KW0122", Level.Warning, "InvalidRegexp", "a regular expression does not compile"),
    Message("KW0130", Level.Warning, "VirtualServiceUnreachableRule",
            "an HTTP route follows an unconditional one, or every match of it is matched by earlier routes"),
    Message("KW0131", Level.Info, "VirtualServiceIneffectiveMatch",
            "one match of an HTTP route is matched by an earlier route's match"),
    Message("KW0132", Level.Warning, "VirtualServiceHostNotFoundInGateway",
            "a VirtualService host is not among the hosts of a Gateway it binds"),
    Message("KW1001", Level.Warning, "DestinationRuleHostNotFound",
            "a DestinationRule's host is neither a service nor a ServiceEntry host"),
    Message("KW1002", Level.Warning, "RouteWeightsNotHundred",
            "the weights of a route's destinations do not sum to 100 (traffic is split in proportion)"),
    Message("KW1003", Level.Error, "ResourceDefinedTwice",
            "a resource is defined both in the config folder and by apply (or in two config files)"),
    Message("KW1004", Level.Error, "TranslationError",
            "the running mesh's compilers cannot translate a resource (apply would refuse it); needs the mesh"),
)


@attrs.frozen
class Finding:
    """One thing analyze found."""

    code: str
    message: str
    resource: tuple[str, str, str] | None = None  # (kind, namespace, name)
    file: str = ""
    line: int = 0
    field: str = ""

    @property
    def level(self) -> Level:
        return MESSAGES[self.code].level

    @property
    def name(self) -> str:
        return MESSAGES[self.code].name

    def sort_key(self) -> tuple:
        return (self.file, self.line, self.resource or ("", "", ""), self.field, self.code, self.message)

    def where(self) -> str:
        place = f"{self.file}:{self.line}" if self.file and self.line else self.file
        if self.resource is None:
            return place
        kind, namespace, name = self.resource
        return f"{kind} {namespace}/{name}" + (f" {place}" if place else "")

    def line_text(self) -> str:
        field = f"{self.field}: " if self.field else ""
        return f"{self.level} [{self.code}] ({self.where()}) {field}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        kind, namespace, name = self.resource or ("", "", "")
        return {"code": self.code, "level": str(self.level), "type": self.name,
                "resource": f"{kind}/{namespace}/{name}" if self.resource else "",
                "kind": kind, "namespace": namespace, "name": name,
                "file": self.file, "line": self.line, "field": self.field, "message": self.message}


# ── inputs ─────────────────────────────────────────────────────────────────────

Locate = Callable[[tuple], int]


@attrs.frozen
class Item:
    """A resource under analysis: where it came from and how to find a field's line."""

    resource: Resource
    origin: str  # "config" | "applied" | "file" | a platform's name
    locate: Locate = attrs.field(eq=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.resource.key

    def finding(self, code: str, field: tuple, message: str) -> Finding:
        return Finding(code, message, self.resource.key, self.resource.source.file, self.locate(field),
                       _dotted(field))


@attrs.frozen
class Registry:
    """The live service registry, as the control plane's admin socket reports it."""

    services: Mapping[str, tuple[int, ...]]  # FQDN -> service ports
    gateway_labels: tuple[Mapping[str, str], ...]  # labels of every gateway proxy

    @classmethod
    def from_admin(cls, reply: Mapping[str, Any]) -> Registry:
        services = {str(s["fqdn"]): tuple(int(p["port"]) for p in s.get("ports") or ())
                    for s in reply.get("services") or ()}
        gateways = tuple(dict(p.get("labels") or {}) for p in reply.get("proxies") or () if p.get("kind") == "gateway")
        return cls(services, gateways)


@attrs.frozen
class Inputs:
    """Everything analyzed: resources (in the order the mesh reads them), findings of loading, the registry."""

    mesh: MeshSettings
    items: tuple[Item, ...]
    findings: tuple[Finding, ...]
    registry: Registry | None

    def of_kind(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.resource.kind == kind]

    def resolve(self, host: str, namespace: str) -> str:
        return resolve_host(host, namespace, self.mesh.domain)


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _undotted(text: str) -> tuple:
    return tuple(int(index) if index else name for name, index in _PATH_PART.findall(text))


# -- where a field is written: line numbers from the YAML node tree -------------

def _scalar(node: yaml.Node | None) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node, int] | None:
    """The node at `part` under `node`, and the line it is written on."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if _scalar(key) == part:
                return value, key.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None


def _locator(document: yaml.Node | None, fallback: int) -> Locate:
    def locate(path: tuple) -> int:
        node, line = document, fallback
        for part in path:
            if node is None:
                break
            found = _child(node, part)
            if found is None:
                break
            node, line = found
        return line

    return locate


def _documents(text: str, namespace: str) -> dict[tuple[str, str, str], yaml.Node]:
    """Each document's node by resource key; {} when the text is not YAML."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str, str, str], yaml.Node] = {}
    for node in nodes:
        if not isinstance(node, yaml.MappingNode):
            continue
        found = _child(node, "metadata")
        meta = found[0] if found else None
        name = _child(meta, "name") if meta is not None else None
        ns = _child(meta, "namespace") if meta is not None else None
        kind = _child(node, "kind")
        out.setdefault((str(_scalar(kind[0]) if kind else None), str(_scalar(ns[0]) if ns else namespace),
                        str(_scalar(name[0]) if name else None)), node)
    return out


# -- problems of parse_resources / Store as findings ---------------------------

_RESOURCE_LINE = re.compile(r"^(?P<rid>[^\s:/]+/[^\s:/]+/[^\s:/]+): (?P<field>[^:\s]+): (?P<message>.*)$", re.S)
_FILE_LINE = re.compile(r"^(?P<line>\d+): (?P<field>\([a-z]+\)): (?P<message>.*)$", re.S)


def _problem(code: str, line_text: str, file: str, nodes: Mapping[tuple, yaml.Node]) -> Finding:
    """One ``FILE[:LINE]: Kind/ns/name: field: problem`` line as a finding."""
    rest = line_text[len(file):] if line_text.startswith(file) else line_text
    rest = rest[1:] if rest.startswith(":") else rest
    m = _FILE_LINE.match(rest)
    if m:
        return Finding(code, m["message"], None, file, int(m["line"]), m["field"])
    m = _RESOURCE_LINE.match(rest.strip())
    if m:
        kind, namespace, name = m["rid"].split("/")
        path = _undotted(m["field"])
        node = nodes.get((kind, namespace, name))
        line = _locator(node, node.start_mark.line + 1)(path) if node is not None else 0
        return Finding(code, m["message"], (kind, namespace, name), file, line, m["field"])
    return Finding(code, rest.strip(), None, file)


# -- loading --------------------------------------------------------------------

_SUFFIXES = (".yaml", ".yml")


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in _SUFFIXES and not p.name.startswith(".") and p.is_file())


def _read(path: Path, name: str, findings: list[Finding]) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(Finding("KW0106", f"expected a readable UTF-8 YAML file, got {getattr(exc, 'strerror', None) or exc}",
                                None, name, 0, "(file)"))
        return None


def _parse(text: str, name: str, namespace: str, forced: bool,
           findings: list[Finding]) -> tuple[list[Resource], dict[tuple, yaml.Node]] | None:
    nodes = _documents(text, namespace)
    try:
        return parse_resources(text, name, namespace=namespace, forced_namespace=forced), nodes
    except ConfigError as exc:
        findings.extend(_problem("KW0106", line, name, nodes) for line in exc.problems)
        return None


def _item(res: Resource, origin: str, nodes: Mapping[tuple, yaml.Node]) -> Item:
    return Item(res, origin, _locator(nodes.get(res.key), res.source.line))


def load_inputs(mesh_dir: Path, state_dir: Path, mesh: MeshSettings, config_dir: str, *,
                extra: Iterable[tuple[str, str]] = (), namespace: str = "default", forced_namespace: bool = False,
                registry: Mapping[str, Any] | None = None) -> Inputs:
    """Read the config folder, the applied store, `extra` (name, text) files and the admin `registry` reply.

    The merge is the ``files`` source's own: a config file with a bad
    resource is refused whole (its problems are findings, its resources are
    not analyzed further); a resource defined in two places is a finding;
    `extra` resources replace applied ones of the same key, as ``apply`` would.
    """
    findings: list[Finding] = []
    nodes: dict[str, dict[tuple, yaml.Node]] = {}
    store = Store(state_dir / "applied")
    try:
        store.load_applied()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        findings.append(Finding("KW0106", f"expected the applied resources as Knotwork writes them, got {exc!r}",
                                None, str(Path(state_dir.name) / "applied" / APPLIED_FILE), 0, "(file)"))
    folder = mesh_dir / config_dir
    for path in _yaml_files(folder) if folder.is_dir() else ():
        name = str(path.relative_to(mesh_dir))
        text = _read(path, name, findings)
        parsed = None if text is None else _parse(text, name, "default", False, findings)
        if parsed is None:
            continue
        resources, nodes[name] = parsed
        try:
            store.set_file(name, resources)
        except ConfigError as exc:
            findings.extend(_problem("KW1003", line, name, nodes[name]) for line in exc.problems)
    items = [_item(r, "config", nodes[name]) for name in sorted(store.files) for r in store.files[name]]
    applied: dict[tuple, Item] = {r.key: _item(r, "applied", {}) for r in store.applied.values()}
    in_files = {r.key: r for rs in store.files.values() for r in rs}
    for name, text in extra:
        parsed = _parse(text, name, namespace, forced_namespace, findings)
        if parsed is None:
            continue
        resources, file_nodes = parsed
        for res in resources:
            if res.key in in_files:
                findings.append(Finding(
                    "KW1003", f"expected each resource in one place, got it defined both in {in_files[res.key].source} "
                              f"and by this file (knotwork apply would refuse it)",
                    res.key, name, _locator(file_nodes.get(res.key), res.source.line)(("metadata", "name")),
                    "metadata.name"))
                continue
            applied[res.key] = _item(res, "file", file_nodes)
    items += applied.values()
    live = None
    if registry is not None:
        live = Registry.from_admin(registry)
        for r in registry.get("resources") or ():
            if r.get("source") == "files":  # this plugin's own source: read above, from disk
                continue
            res = Resource(api_version=r["apiVersion"], kind=r["kind"], name=r["name"], namespace=r["namespace"],
                           spec=r.get("spec") or {}, labels=r.get("labels") or {},
                           source=SourceRef(r.get("file") or "", r.get("line") or 0))
            items.append(Item(res, str(r.get("source")), _locator(None, res.source.line)))
    return Inputs(mesh, tuple(items), tuple(findings), live)


# ── output ─────────────────────────────────────────────────────────────────────

def render(findings: Iterable[Finding], output: str) -> str:
    """The findings as istioctl prints them (``log``), or as ``json``/``yaml`` documents."""
    ordered = sorted(findings, key=Finding.sort_key)
    if output == "json":
        return json.dumps([f.as_dict() for f in ordered], indent=1)
    if output == "yaml":
        return yaml.safe_dump([f.as_dict() for f in ordered], sort_keys=False).rstrip("\n")
    return "\n".join(f.line_text() for f in ordered)


def codes_table() -> Iterator[str]:
    """The message table as Markdown rows (kept in sync with the README by a test)."""
    for m in MESSAGES.values():
        yield f"| `{m.code}` | {m.level} | {m.name} | {m.description} |"


# -- the running mesh's trial compile ----------------------------------------------

_COMPILE_LINE = re.compile(r"^(?P<file>.*?): (?P<rid>[^\s:/]+/[^\s:/]+/[^\s:/]+): (?P<field>\S+): (?P<message>.*)$", re.S)


def own_resources(inputs: Inputs) -> list[dict[str, Any]]:
    """The resources the ``files`` source would hold, as the control plane's ``validate`` method takes them."""
    return [{"apiVersion": i.resource.api_version, "kind": i.resource.kind, "name": i.resource.name,
             "namespace": i.resource.namespace, "labels": dict(i.resource.labels), "spec": i.resource.spec,
             "file": i.resource.source.file, "line": i.resource.source.line}
            for i in inputs.items if i.origin in ("config", "applied", "file")]


def compile_findings(inputs: Inputs, problems: Iterable[str]) -> list[Finding]:
    """The problem lines of a trial compile (``FILE: Kind/ns/name: field: problem``) as KW1004 findings."""
    items = {i.key: i for i in inputs.items}
    out = []
    for line in problems:
        m = _COMPILE_LINE.match(line)
        key = tuple(m["rid"].split("/", 2)) if m else None
        item = items.get(key) if key else None  # type: ignore[arg-type]
        if m is None or item is None:
            out.append(Finding("KW1004", line))
            continue
        out.append(item.finding("KW1004", _undotted(m["field"]), m["message"]))
    return out
