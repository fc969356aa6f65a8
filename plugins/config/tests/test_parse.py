"""Reading and validating Istio resources: good files, and the exact problem lines of bad ones."""

from __future__ import annotations

import textwrap

import pytest

from knotwork.model import SourceRef
from knotwork_config import ConfigError, parse_resources


def parse(text: str, file: str = "f.yaml", **kw):
    return parse_resources(textwrap.dedent(text).lstrip("\n"), file, **kw)


def problems(text: str, file: str = "bad.yaml", **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, file, **kw)
    return info.value.problems


GOOD = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  labels: {team: books}
spec:
  hosts: [reviews]
  http:
  - timeout: 0.5s
    route:
    - destination: {host: reviews, subset: v2}
      weight: 100
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: mesh-default, namespace: knotwork-system}
spec: {accessLogging: [{providers: [{name: envoy}]}]}
"""


def test_good_file_gives_resources_with_source_lines():
    res = parse(GOOD)
    assert [str(r) for r in res] == ["VirtualService/default/reviews", "DestinationRule/shop/reviews",
                                     "PeerAuthentication/istio-system/default",
                                     "Telemetry/knotwork-system/mesh-default"]
    vs = res[0]
    assert vs.api_version == "networking.istio.io/v1" and vs.labels == {"team": "books"}
    assert vs.spec["http"][0]["route"][0]["destination"] == {"host": "reviews", "subset": "v2"}
    assert [r.source for r in res] == [SourceRef("f.yaml", 1), SourceRef("f.yaml", 14), SourceRef("f.yaml", 21),
                                       SourceRef("f.yaml", 26)]


def test_namespace_option_is_the_default_and_refuses_another():
    assert parse(GOOD.split("---")[0], namespace="prod", forced_namespace=True)[0].namespace == "prod"
    lines = problems(GOOD.split("---")[1], namespace="prod", forced_namespace=True)
    assert lines == ["bad.yaml: DestinationRule/shop/reviews: metadata.namespace: expected the namespace given "
                     "with --namespace ('prod'), got 'shop'"]


def test_bad_types_in_nested_fields():
    assert problems("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - timeout: 3
            route:
            - destination: {host: 3}
              weight: "50"
        ---
        apiVersion: networking.istio.io/v1alpha3
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          subsets: [{labels: {version: 2}}, {name: v1, labels: [a]}]
    """) == [
        "bad.yaml: VirtualService/default/reviews: spec.http[0].timeout: expected a duration such as '0.5s', '3s' "
        "or '1m', got 3",
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].destination.host: expected a string, got 3",
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].weight: expected an integer, got '50'",
        "bad.yaml: DestinationRule/default/reviews: spec.subsets[0].name: expected a value, got nothing (required)",
        "bad.yaml: DestinationRule/default/reviews: spec.subsets[0].labels.version: expected a string, got 2",
        "bad.yaml: DestinationRule/default/reviews: spec.subsets[1].labels: expected a mapping, got a list",
    ]


def test_identity_problems():
    assert problems("""
        apiVersion: networking.istio.io/v2
        kind: VirtualService
        metadata: {name: a}
        ---
        apiVersion: security.istio.io/v1
        kind: VirtualService
        metadata: {name: b}
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: Bad_Name, namespace: x}
        spec: []
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        spec: {}
        ---
        - just a list
    """) == [
        "bad.yaml: VirtualService/default/a: apiVersion: expected one of networking.istio.io/v1alpha3, "
        "networking.istio.io/v1beta1, networking.istio.io/v1, security.istio.io/v1beta1, security.istio.io/v1, "
        "telemetry.istio.io/v1alpha1, telemetry.istio.io/v1, got 'networking.istio.io/v2'",
        "bad.yaml: VirtualService/default/b: kind: expected a kind of security.istio.io (AuthorizationPolicy, "
        "PeerAuthentication, RequestAuthentication), got 'VirtualService'",
        "bad.yaml: Gateway/x/Bad_Name: metadata.name: expected a DNS-1123 name (lower-case letters, digits, '-', "
        "'.'), got 'Bad_Name'",
        "bad.yaml: Gateway/x/Bad_Name: spec: expected a mapping, got a list",
        "bad.yaml: Gateway/default/?: metadata: expected a mapping, got nothing",
        "bad.yaml:18: (document): expected a mapping (an Istio resource), got a list",
    ]


def test_unknown_top_level_spec_field_lists_the_known_ones():
    assert problems("""
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: r}
        spec: {host: r, subset: []}
    """) == ["bad.yaml: DestinationRule/default/r: spec.subset: expected one of the fields exportTo, host, "
             "subsets, trafficPolicy, workloadSelector, got unknown field 'subset' (did you mean 'subsets'?)"]


def test_yaml_syntax_error_names_the_line():
    assert problems("""
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: g
        spec: {}
    """) == ["bad.yaml:4: (yaml): expected valid YAML, got a syntax error: expected ',' or '}', but got ':'"]


def test_duplicate_in_one_file():
    doc = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n"
    assert problems(doc + "---\n" + doc) == [
        "bad.yaml: Gateway/default/g: metadata.name: expected each resource once in a file, got it again "
        "(first at line 1, again at line 6)"]


def test_empty_documents_are_skipped():
    assert parse("---\n# nothing\n---\n") == []
