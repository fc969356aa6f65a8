"""The vendored Istio schema data: its structure, the CRD manifests made from it, the importer, the attrs types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from knotwork_config import crds, parse_resources, types
from knotwork_config.schema import KINDS, compile_schema, rule_shape
from test_schema import istio_yaml_files, read_istio_yaml

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "plugins/config/tools/import_istio_crds.py"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(docs) -> str:
    return yaml.dump_all(docs, Dumper=DUMPER)

#: Every schema keyword the validator reads; a new one in a future Istio must be looked at (then added here).
UNDERSTOOD = {"type", "properties", "additionalProperties", "items", "required", "enum", "format", "minimum",
              "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties",
              "maxProperties", "oneOf", "anyOf", "allOf", "not", "nullable", "x-kubernetes-validations",
              "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
              "x-kubernetes-int-or-string"}

#: CEL rules of Istio's schemas Knotwork does not evaluate (they are skipped; Istio checks them at admission).
SKIPPED_RULES = {
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? '
    'self.resolution : "NONE") in ["STATIC", "NONE"]))',
    '((has(self.operation) ? self.operation : "") == "UPSERT") ? (self.value != "") : true',
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? ((has(self.endpoints) ? '
    'self.endpoints : []).size() <= 1) : true',
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true',
    '(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && '
    '!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true',
    'self.startsWith("unix://") ? !self.endsWith("/") : true',
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true',
}


def nodes(node):
    """Every schema node under `node`, itself included."""
    yield node
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            yield from nodes(node[key])
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key) or ():
            yield from nodes(sub)
    for sub in (node.get("properties") or {}).values():
        yield from nodes(sub)


def test_data_file_records_its_origin_and_license():
    source = crds.load()["source"]
    assert source["project"] == "Istio" and source["repository"] == "https://github.com/istio/istio"
    assert source["path"] == "manifests/charts/base/files/crd-all.gen.yaml"
    assert source["license"] == "Apache-2.0" and "Apache License, Version 2.0" in source["notice"]
    assert source["version"].count(".") == 2 and len(source["commit"]) == 40


def test_data_file_has_the_structure_the_code_reads():
    kinds = crds.load()["kinds"]
    assert [(k["group"], k["kind"]) for k in kinds] == list(crds.KINDS_READ)
    for entry in kinds:
        assert set(entry) == {"group", "kind", "scope", "names", "versions", "schema"}, entry["kind"]
        assert entry["scope"] == "Namespaced"
        assert entry["names"]["kind"] == entry["kind"] and entry["names"]["plural"].islower()
        assert entry["versions"] and all(v["served"] for v in entry["versions"])
        assert sum(v["storage"] for v in entry["versions"]) == 1, entry["kind"]
        schema = entry["schema"]
        assert schema["type"] == "object" and set(schema["properties"]) == {"spec", "status"}
        spec = schema["properties"]["spec"]
        assert spec["type"] == "object" and spec["properties"], entry["kind"]
        for node in nodes(spec):
            assert "description" not in node
            assert set(node) <= UNDERSTOOD, (entry["kind"], set(node) - UNDERSTOOD)
            compile_schema(node)
    assert len({k["kind"] for k in kinds}) == len(kinds), "types.structure() looks kinds up by name alone"


def test_every_cel_rule_is_evaluated_or_knowingly_skipped():
    seen = set()
    for entry in crds.load()["kinds"]:
        for node in nodes(entry["schema"]["properties"]["spec"]):
            for rule in node.get("x-kubernetes-validations") or ():
                text = " ".join(rule["rule"].split())
                seen.add(text)
                assert rule_shape(text) is not None or text in SKIPPED_RULES, text
    evaluated = {r for r in seen if rule_shape(r) is not None}
    assert "duration(self) >= duration('1ms')" in evaluated and len(evaluated) > len(SKIPPED_RULES)
    assert SKIPPED_RULES <= seen, "a rule listed as skipped is gone from the data: drop it from SKIPPED_RULES"


def test_crd_manifests_round_trip_the_data():
    manifests = crds.crd_manifests()
    assert [m["metadata"]["name"] for m in manifests][:2] == ["virtualservices.networking.istio.io",
                                                              "destinationrules.networking.istio.io"]
    for manifest in manifests:
        assert manifest["apiVersion"] == "apiextensions.k8s.io/v1" and manifest["kind"] == "CustomResourceDefinition"
        versions = manifest["spec"]["versions"]
        assert all(v["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"] == "object" for v in versions)
    as_yaml = yaml.load_all(dump(manifests), Loader=LOADER)
    assert crds.extract(as_yaml) == crds.load()["kinds"]
    assert [(k.group, k.kind) for k in KINDS.values()] == list(crds.KINDS_READ)


def with_descriptions(manifests):
    """Istio's shape: descriptions everywhere, and an unserved version that must not be imported."""
    for manifest in manifests:
        manifest["spec"]["versions"].append({**manifest["spec"]["versions"][0], "name": "v0", "served": False})
        for version in manifest["spec"]["versions"]:
            for node in nodes(version["schema"]["openAPIV3Schema"]):
                node["description"] = "words"
    return manifests


def test_extract_keeps_served_versions_and_drops_descriptions():
    assert crds.extract(with_descriptions(crds.crd_manifests())) == crds.load()["kinds"]


def test_extract_refuses_a_missing_kind_or_versions_with_different_schemas():
    manifests = crds.crd_manifests()
    with pytest.raises(ValueError, match="expected a CustomResourceDefinition of telemetry.istio.io Telemetry"):
        crds.extract(manifests[:-1])
    manifests[0]["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["x"] = {}
    with pytest.raises(ValueError, match="expected one schema for all served versions of .* VirtualService"):
        crds.extract(manifests)


def test_import_tool_regenerates_the_data_file_from_a_crd_yaml(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("import_istio_crds", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    crd_yaml = tmp_path / "crd-all.gen.yaml"
    crd_yaml.write_text(dump(with_descriptions(crds.crd_manifests())))
    source = crds.load()["source"]
    out = tmp_path / "istio_schemas.json"
    assert tool.main([str(crd_yaml), "--istio-version", source["version"], "--commit", source["commit"],
                      "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == crds.load()
    crd_yaml.write_text("kind: [")
    assert tool.main([str(crd_yaml), "--istio-version", "1", "--commit", "c", "-o", str(out)]) == 2


# ---------------------------------------------------------------------------- attrs types


def test_every_kind_has_an_attrs_class_with_nested_classes():
    for _, kind in crds.KINDS_READ:
        cls = getattr(types, kind)
        assert cls is types.kind_class(kind) and cls.__name__ == kind
    vs = types.VirtualService
    assert vs.Http.Route.Destination.__qualname__ == "VirtualService.Http.Route.Destination"
    assert {"hosts", "gateways", "http", "tcp", "tls", "exportTo"} <= {f.name for f in vs.__attrs_attrs__}
    with pytest.raises(KeyError, match="expected one of the kinds"):
        types.kind_class("EnvoyFilter")
    with pytest.raises(AttributeError):
        types.EnvoyFilter  # noqa: B018


def test_structure_gives_frozen_objects_and_keyword_fields_get_an_underscore():
    vs = types.structure("VirtualService", {
        "hosts": ["reviews"],
        "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/"}}],
                  "route": [{"destination": {"host": "reviews", "subset": "v2"}, "weight": 100}],
                  "timeout": "0.5s"}]})
    route = vs.http[0]
    assert vs.hosts == ("reviews",) and route.timeout == "0.5s" and route.retries is None
    assert route.match[0].headers["end-user"] == types.VirtualService.Http.Match.Headers(exact="jason")
    assert route.route[0].destination == types.VirtualService.Http.Route.Destination(host="reviews", subset="v2")
    with pytest.raises(AttributeError):
        route.timeout = "1s"
    policy = types.structure("AuthorizationPolicy", {"rules": [{"from": [{"source": {"principals": ["a"]}}]}]})
    assert policy.rules[0].from_[0].source.principals == ("a",)
    assert types.unstructure(policy) == {"rules": [{"from": [{"source": {"principals": ["a"]}}]}]}


def test_every_istio_yaml_of_the_repository_round_trips_through_the_types():
    count = 0
    for path in istio_yaml_files():
        for res in parse_resources(read_istio_yaml(path), str(path)):
            assert types.unstructure(types.structure(res.kind, res.spec)) == res.spec, (path, res)
            count += 1
    assert count >= 10
