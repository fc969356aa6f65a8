"""The validator compiled from Istio's CRD schemas: what it catches, how it says it, what it lets through."""

from __future__ import annotations

import string
import textwrap
from pathlib import Path

import pytest

from knotwork_config import ConfigError, parse_resources
from knotwork_config.schema import API_VERSIONS, KINDS, check, compile_schema, compiled, parse_duration

ROOT = Path(__file__).resolve().parents[3]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_resources(textwrap.dedent(text).lstrip("\n"), "bad.yaml")
    return info.value.problems


def spec_problems(kind: str, spec: dict, group: str = "networking.istio.io") -> list[tuple[str, str]]:
    """(dotted path, problem) pairs, for short assertions."""
    out = []
    for path, message in check(group, kind, spec):
        out.append((".".join(str(p) for p in path), message))
    return out


def test_typos_are_caught_with_file_resource_field_and_the_nearest_name():
    assert problems("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - match: [{uri: {prefx: /}}]
            route:
            - destinaton: {host: reviews}
              weigth: 50
    """) == [
        "bad.yaml: VirtualService/default/reviews: spec.http[0].match[0].uri.prefx: expected one of the fields "
        "exact, prefix, regex, got unknown field 'prefx' (did you mean 'prefix'?)",
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].destination: expected a value, "
        "got nothing (required)",
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].destinaton: expected one of the fields "
        "destination, headers, weight, got unknown field 'destinaton' (did you mean 'destination'?)",
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].weigth: expected one of the fields "
        "destination, headers, weight, got unknown field 'weigth' (did you mean 'weight'?)",
    ]


def test_wrong_enum_values_list_the_allowed_ones():
    assert problems("""
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: httpbin, namespace: shop}
        spec:
          hosts: [httpbin.org]
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: STATIK
          location: MESH_OUTSIDE
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default}
        spec: {mtls: {mode: STRIKT}}
    """) == [
        "bad.yaml: ServiceEntry/shop/httpbin: spec.resolution: expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, "
        "DYNAMIC_DNS, got 'STATIK'",
        "bad.yaml: ServiceEntry/shop/httpbin: spec.location: expected one of MESH_EXTERNAL, MESH_INTERNAL, "
        "got 'MESH_OUTSIDE'",
        "bad.yaml: PeerAuthentication/default/default: spec.mtls.mode: expected one of UNSET, DISABLE, PERMISSIVE, "
        "STRICT, got 'STRIKT'",
    ]


def test_exclusive_fields_from_one_of_and_from_cel_rules():
    match = {"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/"}},
                                                 {"headers": {"end-user": {"exact": "jason", "regex": "j.*"}}}],
                                       "route": [{"destination": {"host": "r"}}]}]}
    assert spec_problems("VirtualService", match) == [
        ("spec.http.0.match.0.uri", "expected at most one of the fields exact, prefix, regex, got exact and prefix"),
        ("spec.http.0.match.1.headers.end-user",
         "expected at most one of the fields exact, prefix, regex, got exact and regex"),
    ]
    tls = {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
                        "tls": {"mode": "SIMPLE", "credentialName": "a", "credentialNames": ["b"]}}]}
    assert spec_problems("Gateway", tls) == [
        ("spec.servers.0.tls", "expected at most one of the fields credentialName, credentialNames, "
                               "got credentialName and credentialNames")]
    policy = {"selector": {"matchLabels": {"app": "a"}}, "targetRef": {"kind": "Service", "name": "a"}}
    assert spec_problems("AuthorizationPolicy", policy, "security.istio.io") == [
        ("spec", "expected at most one of the fields selector, targetRef, targetRefs, got selector and targetRef")]


@pytest.mark.parametrize(("text", "seconds"), [
    ("0.5s", 0.5), ("3s", 3.0), ("1m", 60.0), ("100ms", 0.1), ("1h30m", 5400.0), ("1.5s", 1.5), (".5s", 0.5),
    ("250us", 0.00025), ("0", 0.0),
])
def test_durations_in_go_syntax(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["3", "", "1x", "s", "3 s", 3, None, "1d"])
def test_not_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_duration_fields_are_recognised_from_their_cel_rule():
    route = {"route": [{"destination": {"host": "r"}}]}
    spec = {"hosts": ["r"], "http": [{**route, "timeout": "0.5s", "retries": {"attempts": 3, "perTryTimeout": "2s"}},
                                     {**route, "timeout": 3},
                                     {**route, "timeout": "3"},
                                     {**route, "timeout": "0s"},
                                     {**route, "fault": {"delay": {"fixedDelay": "7x", "percentage": {"value": 100}}}}]}
    assert spec_problems("VirtualService", spec) == [
        ("spec.http.1.timeout", "expected a duration such as '0.5s', '3s' or '1m', got 3"),
        ("spec.http.2.timeout", "expected a duration such as '0.5s', '3s' or '1m', got '3'"),
        ("spec.http.3.timeout", "expected a duration of at least 1ms, got '0s'"),
        ("spec.http.4.fault.delay.fixedDelay", "expected a duration such as '0.5s', '3s' or '1m', got '7x'"),
    ]


def test_integer_formats_ranges_and_port_rules():
    spec = {"hosts": ["a.example"], "resolution": "STATIC",
            "ports": [{"number": 70000, "name": "a"}, {"number": True, "name": "b"}, {"number": 8080, "name": "c",
                                                                                       "targetPort": -1}],
            "endpoints": [{"address": "127.0.0.1", "weight": 2 ** 32}]}
    assert spec_problems("ServiceEntry", spec) == [
        ("spec.ports.0.number", "expected an integer from 1 to 65535, got 70000"),
        ("spec.ports.1.number", "expected an integer, got True"),
        ("spec.ports.2.targetPort", "expected an integer from 1 to 65535, got -1"),
        ("spec.endpoints.0.weight", "expected an integer from 0 to 4294967295, got 4294967296"),
    ]
    route = {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": 2 ** 31}]}]}
    assert spec_problems("VirtualService", route) == [
        ("spec.http.0.route.0.weight", "expected an integer from -2147483648 to 2147483647, got 2147483648")]


def test_maps_take_yaml_integer_keys_as_kubernetes_does_and_check_keys_and_values():
    good = {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {8080: {"mode": "DISABLE"}}}
    assert spec_problems("PeerAuthentication", good, "security.istio.io") == []
    bad = {"selector": {"matchLabels": {"app": "a"}},
           "portLevelMtls": {0: {"mode": "DISABLE"}, "http": {"mode": "STRICT"}, 9080: {"mode": "OFF"}}}
    assert spec_problems("PeerAuthentication", bad, "security.istio.io") == [
        ("spec.portLevelMtls.0", "expected a port number from 1 to 65535 as the key, got '0'"),
        ("spec.portLevelMtls.http", "expected a port number from 1 to 65535 as the key, got 'http'"),
        ("spec.portLevelMtls.9080.mode", "expected one of UNSET, DISABLE, PERMISSIVE, STRICT, got 'OFF'"),
    ]
    labels = {"host": "r", "workloadSelector": {"matchLabels": {"app*": "a", "v": "x*", "n": 3}},
              "subsets": [{"name": "v1", "labels": [1]}]}
    assert spec_problems("DestinationRule", labels) == [
        ("spec.workloadSelector.matchLabels.app*",
         "expected a key without '*' (wildcard not allowed in label key match), got 'app*'"),
        ("spec.workloadSelector.matchLabels.v",
         "expected no '*' (wildcard not allowed in label value match), got 'x*'"),
        ("spec.workloadSelector.matchLabels.n", "expected a string, got 3"),
        ("spec.subsets.0.labels", "expected a mapping, got a list"),
    ]


def test_required_fields_and_cel_presence_rules():
    assert spec_problems("DestinationRule", {"subsets": [{"labels": {"version": "v1"}}]}) == [
        ("spec.host", "expected a value, got nothing (required)"),
        ("spec.subsets.0.name", "expected a value, got nothing (required)"),
    ]
    spec = {"hosts": ["a.example"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
            "endpoints": [{"labels": {"v": "1"}}]}
    assert spec_problems("ServiceEntry", spec) == [
        ("spec.endpoints.0", "expected one of the fields address, network, got neither (Address is required)")]
    del spec["resolution"]
    spec["endpoints"] = [{"address": "127.0.0.1"}]
    assert spec_problems("ServiceEntry", spec) == [
        ("spec.endpoints", "expected no endpoints when resolution is NONE (the default) (NONE mode cannot set "
                           "endpoints), got a list")]
    jwt = {"jwtRules": [{"issuer": "i", "jwks_uri": "ftp://keys"}, {"issuer": "i", "jwks_uri": "https://k/jwks"}]}
    assert spec_problems("RequestAuthentication", jwt, "security.istio.io") == [
        ("spec.jwtRules.0.jwks_uri", "expected a URL starting with http:// or https://, got 'ftp://keys'")]



def test_port_level_mtls_needs_a_workload_selector():
    """Istio: "mesh/namespace peer authentication cannot have port level mTLS"."""
    ports = {8080: {"mode": "DISABLE"}}
    expected = [("spec.portLevelMtls", "expected a non-empty selector.matchLabels with portLevelMtls "
                                       "(portLevelMtls requires selector)")]
    assert spec_problems("PeerAuthentication", {"portLevelMtls": ports}, "security.istio.io") == expected
    assert spec_problems("PeerAuthentication", {"selector": {"matchLabels": {}}, "portLevelMtls": ports},
                         "security.istio.io") == expected
    assert spec_problems("PeerAuthentication", {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": ports,
                                                "mtls": {"mode": "STRICT"}}, "security.istio.io") == []

def test_unique_list_keys():
    spec = {"hosts": ["a.example"], "ports": [{"number": 80, "name": "http"}, {"number": 80, "name": "http2"},
                                              {"number": 81, "name": "http"}]}
    assert spec_problems("ServiceEntry", spec) == [
        ("spec.ports.2", "expected each name once in the list, got name 'http' again"),
        ("spec.ports.1", "expected each number once in the list, got number 80 again"),
    ]


def test_wildcard_host_and_cross_namespace_reference():
    assert spec_problems("ServiceEntry", {"hosts": ["*"]}) == [
        ("spec.hosts.0", "expected a value other than '*' (hostname cannot be wildcard), got '*'")]
    policy = {"targetRef": {"kind": "Service", "name": "a", "namespace": "other"}}
    assert spec_problems("AuthorizationPolicy", policy, "security.istio.io") == [
        ("spec.targetRef.namespace",
         "expected nothing (cross namespace referencing is not currently supported), got 'other'")]


def test_null_values_count_as_absent_and_types_are_checked_everywhere():
    assert spec_problems("VirtualService", {"hosts": ["r"], "gateways": None, "http": [{"timeout": None}]}) == []
    assert spec_problems("Sidecar", {"egress": [{"hosts": "./*"}], "outboundTrafficPolicy": {"mode": "BLOCK"}}) == [
        ("spec.egress.0.hosts", "expected a list, got './*'"),
        ("spec.outboundTrafficPolicy.mode", "expected one of REGISTRY_ONLY, ALLOW_ANY, got 'BLOCK'"),
    ]
    assert spec_problems("Gateway", {"selector": {"istio": "ingressgateway"}, "servers": [
        {"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "hosts": ["*"], "tls": {"httpsRedirect": "yes"}}
    ]}) == [("spec.servers.0.tls.httpsRedirect", "expected true or false, got 'yes'")]


def test_preserve_unknown_fields_and_open_maps_let_anything_through():
    open_ = compile_schema({"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                            "properties": {"a": {"type": "string"}}})
    assert list(open_.problems({"a": "x", "anything": {"at": "all"}}, ("spec",))) == []
    assert list(open_.problems({"a": 1}, ("spec",))) == [(("spec", "a"), "expected a string, got 1")]
    closed = compile_schema({"type": "object"})
    assert list(closed.problems({"b": 1}, ("spec",))) == [(("spec", "b"), "expected no fields here, got unknown "
                                                                          "field 'b'")]


def test_unknown_kind_gives_nothing_and_compiling_happens_once():
    assert check("networking.istio.io", "EnvoyFilter", {"anything": 1}) == []
    assert compiled("networking.istio.io", "VirtualService") is compiled("networking.istio.io", "VirtualService")


def test_api_versions_are_those_istio_serves():
    assert API_VERSIONS == {"networking.istio.io": ("v1alpha3", "v1beta1", "v1"),
                            "security.istio.io": ("v1beta1", "v1"),
                            "telemetry.istio.io": ("v1alpha1", "v1")}
    for kind in KINDS.values():
        assert kind.versions == API_VERSIONS[kind.group], kind


def istio_yaml_files() -> list[Path]:
    """The Istio resource files of the repository's scenarios and examples (not the deliberately bad ones)."""
    files = [*ROOT.glob("tests/e2e/**/*.yaml"), *ROOT.glob("examples/**/*.yaml")]
    return sorted(p for p in files if "istio.io/" in p.read_text() and "bad" not in p.name)


def read_istio_yaml(path: Path) -> str:
    """A scenario file as its test applies it: placeholders such as ``${EXTERNAL_PORT}`` filled in."""
    return string.Template(path.read_text()).safe_substitute(EXTERNAL_PORT="18080")


@pytest.mark.parametrize("path", istio_yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_istio_yaml_of_the_repository_validates_cleanly(path):
    assert parse_resources(read_istio_yaml(path), str(path))


def test_the_repository_has_istio_yaml_to_check():
    assert len(istio_yaml_files()) >= 10


def test_the_deliberately_bad_traffic_file_is_refused_naming_the_field():
    path = ROOT / "tests/e2e/traffic/virtual-service-reviews-bad-weight.yaml"
    with pytest.raises(ConfigError) as info:
        parse_resources(path.read_text(), path.name)
    assert [p.split(": ")[2] for p in info.value.problems] == ["spec.http[0].route[0].weight"]
