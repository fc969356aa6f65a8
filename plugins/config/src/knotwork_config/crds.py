"""Istio's CustomResourceDefinitions ⇄ Knotwork's vendored schema data.

Knotwork's one definition of the Istio resource types is
``istio_schemas.json`` beside this module: for each kind Knotwork reads, the
CRD's names, scope, served versions and OpenAPI v3 schema, taken from Istio's
published ``crd-all.gen.yaml`` (Apache-2.0; origin, version and notice are in
the file's ``source``) with descriptions removed. Three things derive from it:
the validator (:mod:`knotwork_config.schema`), the attrs classes
(:mod:`knotwork_config.types`) and the Kubernetes CRD manifests
(:func:`crd_manifests`).

:func:`extract` turns Istio's CRD documents into that data (used by
``plugins/config/tools/import_istio_crds.py``); :func:`crd_manifests` turns
the data back into CRD documents. ``extract(crd_manifests()) == load()["kinds"]``.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

__all__ = ["DATA_FILE", "KINDS_READ", "crd_manifests", "data", "extract", "load", "strip_descriptions"]

#: The vendored data file, inside the package.
DATA_FILE = "istio_schemas.json"

#: (group, kind) of every Istio resource type Knotwork reads, in the data file's order.
KINDS_READ: tuple[tuple[str, str], ...] = (
    ("networking.istio.io", "VirtualService"),
    ("networking.istio.io", "DestinationRule"),
    ("networking.istio.io", "Gateway"),
    ("networking.istio.io", "ServiceEntry"),
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "WorkloadEntry"),
    ("networking.istio.io", "WorkloadGroup"),
    ("security.istio.io", "AuthorizationPolicy"),
    ("security.istio.io", "PeerAuthentication"),
    ("security.istio.io", "RequestAuthentication"),
    ("telemetry.istio.io", "Telemetry"),
)

_VERSION_KEYS = ("name", "served", "storage", "subresources", "additionalPrinterColumns")
_CRD_LABELS = {"app.kubernetes.io/part-of": "knotwork"}


def strip_descriptions(node: Any) -> Any:
    """A copy of a schema without its ``description`` texts (the data file stays small)."""
    if isinstance(node, Mapping):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def extract(docs: Iterable[Any], kinds: Iterable[tuple[str, str]] = KINDS_READ) -> list[dict[str, Any]]:
    """The data of `kinds` from CRD documents (e.g. Istio's ``crd-all.gen.yaml``), in the order of `kinds`.

    Only served versions are kept. Raises ValueError when a kind is missing,
    or its served versions do not share one schema (the code expects one
    schema per kind; Istio generates every version from the same protos).
    """
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("kind") == "CustomResourceDefinition":
            spec = doc.get("spec") or {}
            found[(spec.get("group"), (spec.get("names") or {}).get("kind"))] = spec
    out = []
    for group, kind in kinds:
        spec = found.get((group, kind))
        if spec is None:
            raise ValueError(f"expected a CustomResourceDefinition of {group} {kind}, got none")
        versions = [v for v in spec["versions"] if v.get("served")]
        schemas = {json.dumps(strip_descriptions(v["schema"]["openAPIV3Schema"]), sort_keys=True)
                   for v in versions}
        if len(schemas) != 1:
            raise ValueError(f"expected one schema for all served versions of {group} {kind}, "
                             f"got {len(schemas)} different ones")
        out.append({
            "group": group,
            "kind": kind,
            "scope": spec["scope"],
            "names": dict(spec["names"]),
            "versions": [{k: strip_descriptions(v[k]) for k in _VERSION_KEYS if k in v} for v in versions],
            "schema": json.loads(schemas.pop()),
        })
    return out


@functools.cache
def data() -> dict[str, Any]:
    """The vendored data, parsed once and shared: read it, never change it (:func:`load` gives a copy)."""
    return json.loads(resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8"))


def load() -> dict[str, Any]:
    """The vendored data: ``{"source": {...origin, version, license...}, "kinds": [...]}`` (a fresh copy)."""
    return copy.deepcopy(data())


def crd_manifests(kinds: Iterable[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Kubernetes ``apiextensions.k8s.io/v1`` CustomResourceDefinitions of the kinds (default: all of the data).

    Ready to apply to a cluster (``kubectl apply -f``); each version carries
    the one schema of its kind.
    """
    kinds = data()["kinds"] if kinds is None else kinds
    out = []
    for entry in kinds:
        names = entry["names"]
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{names['plural']}.{entry['group']}", "labels": dict(_CRD_LABELS)},
            "spec": {
                "group": entry["group"],
                "names": copy.deepcopy(names),
                "scope": entry["scope"],
                "versions": [{**copy.deepcopy(v), "schema": {"openAPIV3Schema": copy.deepcopy(entry["schema"])}}
                             for v in entry["versions"]],
            },
        })
    return out
