"""`knotwork analyze`: each analyzer on small files, the command as a user runs it, and a live Bookinfo mesh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from config_helpers import write

from knotwork.model import MeshSettings, Resource, SourceRef
from knotwork_config.analyze import MESSAGES, Finding, codes_table, load_inputs, render
from knotwork_config.analyzers import run_all
from knotwork_config.commands import ANALYZE_ISSUES
from knotwork_config.store import Store

REPO = Path(__file__).resolve().parents[3]

REVIEWS_DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""

#: A registry reply as the control plane's admin method `registry` gives it.
BOOKINFO = {
    "services": [{"name": n, "namespace": "default", "fqdn": f"{n}.default.svc.cluster.local",
                  "ports": [{"port": 9080, "name": "http", "protocol": "HTTP"}]}
                 for n in ("productpage", "reviews", "ratings", "details")]
    + [{"name": "multi", "namespace": "default", "fqdn": "multi.default.svc.cluster.local",
        "ports": [{"port": 80, "name": "http"}, {"port": 8080, "name": "http-admin"}]}],
    "proxies": [{"id": "gateway~ingress", "kind": "gateway", "workload": "ingress", "namespace": "knotwork-system",
                 "labels": {"istio": "ingressgateway", "app": "knotwork-ingressgateway"}}],
    "resources": [],
}


def vs(name: str, body: str, namespace: str | None = None) -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}{ns}}}\nspec:\n{body}"


def analyze(mesh_dir: Path, *texts: str, registry: dict | None = None, extra: list[tuple[str, str]] = ()) -> list[Finding]:
    """Write `texts` as config/ files and analyze the mesh directory."""
    for i, text in enumerate(texts):
        write(mesh_dir / "config" / f"r{i}.yaml", text)
    inputs = load_inputs(mesh_dir, mesh_dir / ".knotwork", MeshSettings(), "config", extra=extra, registry=registry)
    return run_all(inputs)


def codes(findings: list[Finding]) -> list[tuple[str, str]]:
    return sorted((f.code, f.field) for f in findings)


# ── schema and loading ──────────────────────────────────────────────────────────

def test_unknown_field_is_a_schema_error_with_file_line_and_field(mesh_dir):
    found = analyze(mesh_dir, REVIEWS_DR + "  trafic: {}\n")
    assert [(f.code, f.resource, f.file, f.line, f.field) for f in found] == [
        ("KW0106", ("DestinationRule", "default", "reviews"), "config/r0.yaml", 7, "spec.trafic")]
    assert "unknown field 'trafic'" in found[0].message


def test_yaml_syntax_error_names_the_line(mesh_dir):
    found = analyze(mesh_dir, "apiVersion: networking.istio.io/v1\nkind: [\n")
    assert [(f.code, f.file, f.field) for f in found] == [("KW0106", "config/r0.yaml", "(yaml)")]
    assert found[0].line == 3 and found[0].resource is None


def test_a_resource_both_in_config_and_applied_is_an_error(mesh_dir):
    state = mesh_dir / ".knotwork"
    Store(state / "applied").apply([Resource("networking.istio.io/v1", "DestinationRule", "reviews",
                                             spec=yaml.safe_load(REVIEWS_DR)["spec"], source=SourceRef("dr.yaml", 1))])
    found = analyze(mesh_dir, REVIEWS_DR)
    assert codes(found) == [("KW1003", "metadata.name")]
    assert "knotwork apply (dr.yaml:1)" in found[0].message


def test_extra_files_replace_applied_resources_and_must_not_clash_with_config(mesh_dir):
    Store(mesh_dir / ".knotwork" / "applied").apply([Resource(
        "networking.istio.io/v1", "DestinationRule", "reviews", spec={"host": "reviews", "subsets": []})])
    use_v2 = vs("reviews", "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n")
    # the applied rule has no subsets: v2 is missing ...
    assert codes(analyze(mesh_dir, use_v2)) == [("KW0101", "spec.http[0].route[0].destination.subset")]
    # ... unless -f brings the new version of the rule, as `apply` would
    assert analyze(mesh_dir, use_v2, extra=[("new-dr.yaml", REVIEWS_DR)]) == []
    clash = analyze(mesh_dir, use_v2, extra=[("again.yaml", use_v2)])
    assert [(f.code, f.file) for f in clash if f.code == "KW1003"] == [("KW1003", "again.yaml")]


# ── references ─────────────────────────────────────────────────────────────────

def test_missing_gateway_is_found_mesh_is_not(mesh_dir):
    found = analyze(mesh_dir, vs("web", """\
  hosts: [web.example.com]
  gateways: [mesh, web-gateway, other/gw]
  http:
  - match: [{gateways: [missing-in-match]}]
    route: [{destination: {host: web}}]
"""), """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: other}
spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
""")
    assert [(f.code, f.field, f.message) for f in sorted(found, key=Finding.sort_key)] == [
        ("KW0101", "spec.gateways[1]", 'Referenced gateway not found: "web-gateway"'),
        ("KW0101", "spec.http[0].match[0].gateways[0]", 'Referenced gateway not found: "missing-in-match"')]


def test_gateway_in_the_root_namespace_is_checked_only_with_the_registry(mesh_dir):
    text = vs("web", "  hosts: [web.example.com]\n  gateways: [knotwork-system/ingress]\n"
                     "  http: [{route: [{destination: {host: reviews, port: {number: 9080}}}]}]\n")
    assert analyze(mesh_dir, text) == []  # knotwork up declares it: unknown while the mesh is not running
    assert codes(analyze(mesh_dir, text, registry=BOOKINFO)) == [("KW0101", "spec.gateways[0]")]


def test_missing_subset_is_found_and_wildcard_rules_define_subsets(mesh_dir):
    text = vs("reviews", "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n"
                         "    mirror: {host: reviews.default.svc.cluster.local, subset: v1}\n")
    found = analyze(mesh_dir, text, REVIEWS_DR)
    assert [(f.field, f.message) for f in found] == [
        ("spec.http[0].route[0].destination.subset", 'Referenced host+subset in destinationrule not found: "reviews+v3"')]
    wildcard = REVIEWS_DR.replace("host: reviews", 'host: "*.default.svc.cluster.local"').replace("v2", "v3")
    assert analyze(mesh_dir, text, wildcard) == []


def test_missing_host_and_port_need_the_registry(mesh_dir):
    text = vs("reviews", """\
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}]
    route:
    - {destination: {host: reviewz}, weight: 50}
    - {destination: {host: reviews, port: {number: 9081}}, weight: 25}
    - {destination: {host: multi}, weight: 25}
  - route:
    - destination: {host: httpbin.org}
    - destination: {host: api.example.com}
""")
    entry = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [httpbin.org, "*.example.com"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
"""
    assert codes(analyze(mesh_dir, text, entry)) == [("KW1002", "spec.http[1].route")]  # offline: no host checks
    found = analyze(mesh_dir, text, entry, registry=BOOKINFO)
    assert [(f.code, f.field, f.message) for f in sorted(found, key=Finding.sort_key) if f.code != "KW1002"] == [
        ("KW0101", "spec.http[0].route[0].destination.host", 'Referenced host not found: "reviewz"'),
        ("KW0101", "spec.http[0].route[1].destination.port.number", 'Referenced host:port not found: "reviews:9081"'),
        ("KW0112", "spec.http[0].route[2].destination",
         'This VirtualService routes to a service "multi" that exposes multiple ports [80, 8080]. '
         'Specifying a port in the destination is required to disambiguate.')]


def test_destination_rule_for_an_unknown_host(mesh_dir):
    rule = REVIEWS_DR.replace("host: reviews", "host: reviewz")
    assert analyze(mesh_dir, rule) == []
    found = analyze(mesh_dir, rule, registry=BOOKINFO)
    assert [(f.code, f.field, f.level.name) for f in found] == [("KW1001", "spec.host", "Warning")]
    assert analyze(mesh_dir, REVIEWS_DR, registry=BOOKINFO) == []
    wildcard = REVIEWS_DR.replace("host: reviews", 'host: "*.default.svc.cluster.local"')
    assert analyze(mesh_dir, wildcard, registry=BOOKINFO) == []


def test_gateway_selector_matching_no_gateway_workload(mesh_dir):
    gateway = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: %s}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"""
    assert analyze(mesh_dir, gateway % "egressgateway") == []
    found = analyze(mesh_dir, gateway % "egressgateway", registry=BOOKINFO)
    assert [(f.code, f.field, f.message) for f in found] == [
        ("KW0101", "spec.selector", 'Referenced selector not found: "istio=egressgateway"')]
    assert analyze(mesh_dir, gateway % "ingressgateway", registry=BOOKINFO) == []


def test_virtual_service_host_not_exposed_by_its_gateway(mesh_dir):
    gateway = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*.example.com", "other/bookinfo.com"]}]
"""
    text = vs("web", "  hosts: [a.example.com, bookinfo.com, wrong.org]\n  gateways: [gw]\n"
                     "  http: [{route: [{destination: {host: reviews}}]}]\n")
    found = analyze(mesh_dir, gateway, text)
    assert [(f.code, f.field, f.message) for f in found] == [
        ("KW0132", "spec.hosts", "one or more host ['bookinfo.com', 'wrong.org'] defined in VirtualService "
                                 "default/web not found in Gateway default/gw.")]


# ── VirtualService semantics ─────────────────────────────────────────────────────

def test_weights_not_summing_to_100(mesh_dir):
    text = vs("reviews", """\
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}, weight: 80}, {destination: {host: ratings}, weight: 10}]
  - route: [{destination: {host: reviews}, weight: 80}, {destination: {host: ratings}, weight: 20}]
  - route: [{destination: {host: reviews}, weight: 30}]
  tcp:
  - route: [{destination: {host: reviews}}, {destination: {host: ratings}}]
""")
    found = analyze(mesh_dir, text)
    # http[0] has no match: the routes after it are never used (KW0130), their weights are not looked at twice
    assert codes(found) == [("KW0130", "spec.http[1]"), ("KW0130", "spec.http[2]"),
                            ("KW1002", "spec.http[0].route"), ("KW1002", "spec.tcp[0].route")]
    by_field = {f.field: f.message for f in found}
    assert "sum to 90, not 100 (traffic is split in proportion" in by_field["spec.http[0].route"]
    assert "sum to 0, not 100 (traffic is split evenly)" in by_field["spec.tcp[0].route"]


SHADOWED = """\
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}}]
    route: [{destination: {host: reviews}}]
  - name: same-again
    match: [{uri: {prefix: /api}, headers: {End-User: {exact: jason}}}]
    route: [{destination: {host: reviews}}]
  - name: narrower
    match: [{uri: {exact: /api/v1}, headers: {end-user: {exact: jason}}, method: {exact: GET}}]
    route: [{destination: {host: reviews}}]
  - name: partly
    match: [{uri: {prefix: /api/v2}, headers: {end-user: {exact: jason}}}, {uri: {prefix: /static}}]
    route: [{destination: {host: reviews}}]
  - name: other-user
    match: [{uri: {prefix: /api}, headers: {end-user: {exact: mary}}}]
    route: [{destination: {host: reviews}}]
  - name: header-absent
    match: [{uri: {prefix: /api}, withoutHeaders: {end-user: {}}}]
    route: [{destination: {host: reviews}}]
  - name: everything
    match: [{uri: {prefix: /}}]
    route: [{destination: {host: reviews}}]
  - name: never
    route: [{destination: {host: reviews}}]
"""


def test_shadowed_routes_and_ineffective_matches(mesh_dir):
    found = sorted(analyze(mesh_dir, vs("reviews", SHADOWED)), key=Finding.sort_key)
    assert [(f.code, f.level.name, f.field, f.message) for f in found] == [
        ("KW0130", "Warning", "spec.http[1]", "VirtualService rule same-again not used (all matches used by prior "
                                              "rules: jason)."),
        ("KW0130", "Warning", "spec.http[2]", "VirtualService rule narrower not used (all matches used by prior "
                                              "rules: jason)."),
        ("KW0131", "Info", "spec.http[3].match[0]", "VirtualService rule partly match #0 is not used "
                                                    "(duplicate/overlapping match in rule jason)."),
        ("KW0130", "Warning", "spec.http[7]", "VirtualService rule never not used (only the last rule can have no "
                                              "matches; rule everything matches every request)."),
    ]
    assert [f.line for f in found] == [10, 13, 17, 28]  # where each rule or match starts


def test_several_virtual_services_for_one_mesh_host(mesh_dir):
    route = "  http: [{route: [{destination: {host: reviews}}]}]\n"
    # d is seen only in its own namespace, a and b only in theirs: no conflict with d
    found = analyze(mesh_dir, vs("a", "  hosts: [reviews]\n  exportTo: [.]\n" + route),
                    vs("b", "  hosts: [reviews.default.svc.cluster.local]\n  exportTo: [default]\n" + route),
                    vs("c", "  hosts: [reviews]\n  gateways: [knotwork-system/ingress]\n" + route),
                    vs("d", "  hosts: [reviews.default.svc.cluster.local]\n  exportTo: [.]\n" + route, "other"))
    assert sorted((f.code, f.resource[2], f.field) for f in found) == [
        ("KW0109", "a", "spec.hosts[0]"), ("KW0109", "b", "spec.hosts[0]")]
    assert "The VirtualServices default/a,default/b associated with mesh gateway define the same host " \
           "reviews.default.svc.cluster.local" in found[0].message


def test_invalid_regex(mesh_dir):
    text = vs("web", "  hosts: [web]\n  http:\n  - match: [{headers: {x-id: {regex: '(['}}}]\n"
                     "    route: [{destination: {host: web}}]\n")
    found = analyze(mesh_dir, text)
    assert [(f.code, f.field, f.level.name) for f in found] == [
        ("KW0122", "spec.http[0].match[0].headers.x-id.regex", "Warning")]



def peer_auth(name: str, namespace: str, mode: str, selector: str = "") -> str:
    sel = f"  selector: {{matchLabels: {{{selector}}}}}\n" if selector else ""
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, "
            f"namespace: {namespace}}}\nspec:\n  mtls: {{mode: {mode}}}\n{sel}")


def test_destination_rule_tls_against_the_servers_peer_authentication(mesh_dir):
    plain = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n"
             "  host: reviews\n  trafficPolicy:\n    tls: {mode: DISABLE}\n"
             "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
             "    trafficPolicy: {portLevelSettings: [{port: {number: 9080}, tls: {mode: ISTIO_MUTUAL}}]}\n")
    mutual = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: prod}\n"
              "spec:\n  host: ratings\n  trafficPolicy: {tls: {sni: x}}\n")
    found = analyze(mesh_dir, plain, mutual, peer_auth("default", "istio-system", "STRICT"))
    assert [(f.code, f.resource[2], f.field, f.line) for f in found] == [
        ("KW0113", "reviews", "spec.trafficPolicy.tls.mode", 7), ("KW0113", "ratings", "spec.trafficPolicy.tls", 6)]
    assert found[0].level.name == "Error" and found[0].message == (
        'A DestinationRule and PeerAuthentication are in conflict with regards to mTLS for host '
        '"reviews.default.svc.cluster.local": tls mode DISABLE sends plaintext, but PeerAuthentication '
        'istio-system/default (mode STRICT) makes its servers accept only mTLS')
    # a namespace policy overrides the mesh's (UNSET inherits); ISTIO_MUTUAL to a DISABLE namespace conflicts
    found = analyze(mesh_dir, plain, mutual, peer_auth("default", "istio-system", "STRICT"),
                    peer_auth("default", "default", "DISABLE"), peer_auth("default", "prod", "UNSET"),
                    peer_auth("workload", "prod", "DISABLE", selector="app: ratings"))
    assert codes(found) == [("KW0113", "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.mode"),
                            ("KW0113", "spec.trafficPolicy.tls")]
    assert "sends mTLS, but PeerAuthentication default/default (mode DISABLE)" in found[0].message
    for old in (mesh_dir / "config").glob("*.yaml"):
        old.unlink()
    assert codes(analyze(mesh_dir, plain, peer_auth("default", "default", "PERMISSIVE"))) == []

def test_every_traffic_task_file_is_clean_offline(mesh_dir):
    """tests/e2e/traffic/*.yaml, each with the DestinationRules (the bad updates excepted)."""
    traffic = REPO / "tests" / "e2e" / "traffic"
    rules = (traffic / "destination-rule-all.yaml").read_text()
    for path in sorted(traffic.glob("*.yaml")):
        found = analyze(mesh_dir, extra=[("destination-rule-all.yaml", rules), (path.name, path.read_text())])
        if path.name == "virtual-service-reviews-bad-weight.yaml":
            assert codes(found) == [("KW0106", "spec.http[0].route[0].weight")], path.name
        elif "-bad-" not in path.name:  # other bad updates need the running mesh's compilers (KW1004)
            assert found == [], (path.name, render(found, "log"))


# ── output and the command ─────────────────────────────────────────────────────────

def test_readme_lists_every_code():
    readme = (REPO / "plugins" / "config" / "README.md").read_text()
    missing = [row for row in codes_table() if row not in readme]
    assert not missing, missing
    assert all(code.startswith("KW") and len(code) == 6 for code in MESSAGES)


def knotwork(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knotwork", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


BAD = vs("reviews", """\
  hosts: [reviews]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - {destination: {host: reviews, subset: v3}, weight: 50}
    - {destination: {host: reviews, subset: v1}, weight: 20}
""")


def test_cli_errors_exit_79_sorted_lines_info_once(mesh_dir):
    write(mesh_dir / "config" / "reviews.yaml", BAD)
    write(mesh_dir / "config" / "dr.yaml", REVIEWS_DR)
    done = knotwork("analyze", str(mesh_dir))
    assert done.returncode == ANALYZE_ISSUES, done.stderr
    assert done.stdout.splitlines() == [
        'Error [KW0101] (VirtualService default/reviews config/reviews.yaml:6) spec.gateways[0]: '
        'Referenced gateway not found: "bookinfo-gateway"',
        'Warning [KW1002] (VirtualService default/reviews config/reviews.yaml:8) spec.http[0].route: '
        'The weights of the 2 destinations sum to 70, not 100 (traffic is split in proportion to the weights).',
        'Error [KW0101] (VirtualService default/reviews config/reviews.yaml:9) '
        'spec.http[0].route[0].destination.subset: Referenced host+subset in destinationrule not found: "reviews+v3"',
    ]
    info = done.stderr.splitlines()
    assert len(info) == 1 and info[0].startswith("Info: the mesh is not running: checks of destination hosts")
    assert "Traceback" not in done.stderr


def test_cli_warnings_only_exit_0_unless_the_threshold_says_so(mesh_dir):
    write(mesh_dir / "config" / "reviews.yaml", BAD.replace("subset: v3", "subset: v2").replace(
        "  gateways: [bookinfo-gateway]\n", ""))
    write(mesh_dir / "config" / "dr.yaml", REVIEWS_DR)
    done = knotwork("analyze", "--use-mesh=false", cwd=mesh_dir)
    assert (done.returncode, [line.split(" ")[1] for line in done.stdout.splitlines()]) == (0, ["[KW1002]"])
    assert done.stderr.splitlines() == ["Info: --use-mesh=false: checks of destination hosts and ports, "
                                        "DestinationRule hosts, Gateway selectors, gateways the platform declares "
                                        "in the root namespace skipped; analyzing files only"]
    assert knotwork("analyze", "--failure-threshold", "Warning", cwd=mesh_dir).returncode == ANALYZE_ISSUES
    done = knotwork("analyze", "--output-threshold", "Error", "-o", "json", cwd=mesh_dir)
    assert (done.returncode, json.loads(done.stdout)) == (0, [])
    done = knotwork("analyze", "-o", "yaml", cwd=mesh_dir)
    [entry] = yaml.safe_load(done.stdout)
    assert entry == {"code": "KW1002", "level": "Warning", "type": "RouteWeightsNotHundred",
                     "resource": "VirtualService/default/reviews", "kind": "VirtualService", "namespace": "default",
                     "name": "reviews", "file": "config/reviews.yaml", "line": 7, "field": "spec.http[0].route",
                     "message": entry["message"]}


def test_cli_clean_says_so_and_f_files_are_analyzed(mesh_dir):
    done = knotwork("analyze", str(mesh_dir), "--use-mesh=false")
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr.splitlines()[-1] == f"No validation issues found when analyzing {mesh_dir}."
    good = write(mesh_dir / "config" / "dr.yaml", REVIEWS_DR)
    done = knotwork("analyze", str(mesh_dir), "-f", str(good), "--use-mesh=false")  # not "defined twice"
    assert (done.returncode, done.stdout) == (0, ""), done.stdout
    bad = write(mesh_dir / "bad.yaml", BAD)
    done = knotwork("analyze", str(mesh_dir), "-f", str(bad), "-n", "shop", "-o", "json")
    assert done.returncode == ANALYZE_ISSUES
    assert {(e["code"], e["namespace"], e["file"]) for e in json.loads(done.stdout)} == {
        ("KW0101", "shop", str(bad)), ("KW1002", "shop", str(bad))}  # the subsets of `default` are not `shop`'s


def test_cli_not_a_mesh_and_mesh_required(tmp_path, mesh_dir):
    done = knotwork("analyze", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"knotwork analyze: {tmp_path / 'nowhere'}: expected a mesh directory")
    done = knotwork("analyze", str(tmp_path))
    assert done.returncode == 2 and "a directory without knotwork.yaml" in done.stderr and "Traceback" not in done.stderr
    done = knotwork("analyze", str(mesh_dir), "--use-mesh=true")
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("knotwork analyze: the mesh is not running")
    done = knotwork("analyze", str(mesh_dir), "-f", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml: (file)" in done.stderr and "Traceback" not in done.stderr


# ── a live mesh ─────────────────────────────────────────────────────────────────────

@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.e2e.harness import RunningMesh

    running = RunningMesh(REPO / "examples" / "bookinfo", tmp_path_factory.mktemp("analyze"))
    try:
        running.wait_ready(timeout=180)
        yield running
        running.stop()
    finally:
        running.kill_everything()


def test_live_registry_finds_a_missing_host_and_traffic_files_are_clean(bookinfo):
    """Through the control plane: services, the ingress gateway's labels and its Gateway are known."""
    typo = write(bookinfo.dir.parent / "typo.yaml", vs("reviews", """\
  hosts: [reviews]
  http: [{route: [{destination: {host: reviewz}}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress}
spec: {selector: {istio: egressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
"""))
    done = bookinfo.knotwork("analyze", "--use-mesh=true", "-f", str(typo))
    assert done.returncode == ANALYZE_ISSUES, done.stderr
    assert done.stdout.splitlines() == [
        f'Error [KW0101] (VirtualService default/reviews {typo}:6) spec.http[0].route[0].destination.host: '
        f'Referenced host not found: "reviewz"',
        f'Error [KW0101] (Gateway default/egress {typo}:11) spec.selector: '
        f'Referenced selector not found: "istio=egressgateway"',
    ]
    assert done.stderr == ""
    traffic = REPO / "tests" / "e2e" / "traffic"
    for path in sorted(traffic.glob("*.yaml")):
        done = bookinfo.knotwork("analyze", "--use-mesh=true", "-f", str(traffic / "destination-rule-all.yaml"),
                                 "-f", str(path))
        if path.name == "virtual-service-reviews-bad-weight.yaml":
            assert done.returncode == ANALYZE_ISSUES and "[KW0106]" in done.stdout, done.stdout
        elif path.name == "destination-rule-reviews-bad-lb.yaml":  # only the mesh's compilers know this one
            assert done.returncode == ANALYZE_ISSUES, done.stdout
            assert done.stdout.splitlines() == [
                f"Error [KW1004] (DestinationRule default/reviews {path}:11) spec.trafficPolicy.loadBalancer.simple: "
                "expected one of ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, UNSPECIFIED, got 'PASSTHROUGH'"]
        else:
            assert (done.returncode, done.stdout) == (0, ""), (path.name, done.stdout, done.stderr)
