"""PeerAuthentication → the mTLS of a sidecar's inbound listeners: scopes, UNSET, port levels, validation."""

from __future__ import annotations

import pytest
import structlog
from knotwork import MeshSettings, Protocol, Resource, Service, ServicePort
from knotwork.proxyconfig import PeerTls
from routing_helpers import MESH, SELECTION, compile_snapshot, gateway_node, http_service, sidecar

from knotwork_routing.errors import ResourceError

CA = {**SELECTION, "certificate_authority": "ca"}
REVIEWS_LABELS = {"app": "reviews", "version": "v1"}


def peer_auth(name: str, ns: str = "default", mode: str | None = None, selector: dict | None = None,
              ports: dict | None = None, api: str = "security.istio.io/v1", **spec) -> Resource:
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = {port: {"mode": m} if m else {} for port, m in ports.items()}
    return Resource(api, "PeerAuthentication", name, ns, spec)


def inbound_tls(*policies, services=None, node=None, selection=CA, mesh=MESH) -> dict[str, PeerTls | None]:
    node = node or sidecar("reviews", labels=REVIEWS_LABELS)
    snap = compile_snapshot(node, services or [http_service("reviews")], (), policies, selection=selection, mesh=mesh)
    return {name: listener.tls for name, listener in snap.resources["listeners"].items() if listener.mode == "inbound"}


def mode_of(*policies, **kw) -> str:
    (tls,) = inbound_tls(*policies, **kw).values()
    assert tls is not None
    return tls.mode


# ── no certificate authority ────────────────────────────────────────────────


def test_without_a_certificate_authority_inbound_is_plaintext_and_policies_are_warned():
    policy = peer_auth("strict-no-ca", "knotwork-system", "STRICT")
    with structlog.testing.capture_logs() as logs:
        assert inbound_tls(policy, selection=SELECTION) == {"inbound|9080": None}
        assert inbound_tls(policy, selection={**SELECTION, "certificate_authority": None}) == {"inbound|9080": None}
    (warning,) = [e for e in logs if e.get("resource") == "PeerAuthentication/knotwork-system/strict-no-ca"]
    assert warning["log_level"] == "warning" and "no certificate_authority" in warning["event"]


# ── scopes ──────────────────────────────────────────────────────────────────


def test_mesh_default_is_permissive_in_the_mesh_trust_domain():
    assert inbound_tls() == {"inbound|9080": PeerTls("PERMISSIVE", "cluster.local")}
    mesh = MeshSettings(trust_domain="example.org", outbound_traffic_policy=MESH.outbound_traffic_policy)
    assert inbound_tls(mesh=mesh) == {"inbound|9080": PeerTls("PERMISSIVE", "example.org")}


@pytest.mark.parametrize("root", ["knotwork-system", "istio-system"])
@pytest.mark.parametrize("api", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_mesh_policy_in_the_root_namespace(root, api):
    assert mode_of(peer_auth("default", root, "STRICT", api=api)) == "STRICT"


def test_namespace_policy_overrides_mesh_and_workload_overrides_namespace():
    mesh = peer_auth("default", "istio-system", "STRICT")
    namespace = peer_auth("default", "default", "PERMISSIVE")
    workload = peer_auth("reviews", "default", "DISABLE", selector={"app": "reviews"})
    assert mode_of(mesh, namespace) == "PERMISSIVE"
    assert mode_of(mesh, namespace, workload) == "DISABLE"
    assert mode_of(workload, namespace, mesh) == "DISABLE"  # scope decides, not order


def test_policies_of_other_namespaces_and_workloads_do_not_apply():
    other_ns = peer_auth("default", "prod", "DISABLE")
    other_workload = peer_auth("ratings", "default", "DISABLE", selector={"app": "ratings"})
    other_ns_workload = peer_auth("reviews", "prod", "DISABLE", selector={"app": "reviews"})
    assert mode_of(other_ns, other_workload, other_ns_workload) == "PERMISSIVE"


def test_selector_needs_every_label():
    assert mode_of(peer_auth("v2", selector={"app": "reviews", "version": "v2"}, mode="STRICT")) == "PERMISSIVE"
    assert mode_of(peer_auth("v1", selector={"app": "reviews", "version": "v1"}, mode="STRICT")) == "STRICT"


def test_empty_match_labels_is_a_namespace_policy():
    assert mode_of(peer_auth("default", mode="STRICT", selector={})) == "STRICT"
    assert mode_of(Resource("security.istio.io/v1", "PeerAuthentication", "ns", "default",
                            {"selector": {}, "mtls": {"mode": "DISABLE"}})) == "DISABLE"


def test_workload_selector_in_the_root_namespace_selects_nothing():
    policy = peer_auth("root-workload", "knotwork-system", "STRICT", selector={"app": "reviews"})
    with structlog.testing.capture_logs() as logs:
        assert mode_of(policy) == "PERMISSIVE"
    assert any(e.get("resource") == "PeerAuthentication/knotwork-system/root-workload" for e in logs)


def test_first_policy_wins_a_level():
    """Istio: the oldest policy wins; Knotwork: the first in the sources' order."""
    first = peer_auth("a-first", mode="STRICT", selector={"app": "reviews"})
    second = peer_auth("b-second", mode="DISABLE", selector={"version": "v1"})
    assert mode_of(first, second) == "STRICT"
    assert mode_of(second, first) == "DISABLE"
    ns_first, ns_second = peer_auth("z", mode="DISABLE"), peer_auth("a", mode="STRICT")
    assert mode_of(ns_first, ns_second) == "DISABLE"


# ── UNSET inherits ──────────────────────────────────────────────────────────


def test_unset_inherits_from_the_level_above():
    mesh = peer_auth("default", "knotwork-system", "STRICT")
    assert mode_of(mesh, peer_auth("ns", mode="UNSET")) == "STRICT"
    assert mode_of(mesh, peer_auth("ns")) == "STRICT"  # no mtls at all is UNSET
    assert mode_of(mesh, peer_auth("ns", mode="UNSET"), peer_auth("w", mode="UNSET", selector={"app": "reviews"})) \
        == "STRICT"
    assert mode_of(peer_auth("ns", mode="DISABLE"), peer_auth("w", selector={"app": "reviews"})) == "DISABLE"
    assert mode_of(peer_auth("default", "knotwork-system", "UNSET")) == "PERMISSIVE"


# ── port levels ─────────────────────────────────────────────────────────────


TWO_PORTS = Service("reviews", "default", (ServicePort(9080, "http", Protocol.HTTP),
                                           ServicePort(80, "http-web", Protocol.HTTP, target_port=8000)))
TWO_PORT_NODE = sidecar("reviews", labels=REVIEWS_LABELS,
                        ports={"inbound:9080": 15006, "inbound:80": 15007, "app:9080": 20001, "app:80": 20002})


def test_port_level_overrides_by_workload_port():
    """Istio keys portLevelMtls by the workload's (container) port: the service's targetPort."""
    policy = peer_auth("w", mode="STRICT", selector={"app": "reviews"}, ports={8000: "DISABLE"})
    assert inbound_tls(policy, services=[TWO_PORTS], node=TWO_PORT_NODE) == {
        "inbound|9080": PeerTls("STRICT"), "inbound|80": PeerTls("DISABLE"),
    }
    by_service_port = peer_auth("w", mode="STRICT", selector={"app": "reviews"}, ports={80: "DISABLE"})
    assert inbound_tls(by_service_port, services=[TWO_PORTS], node=TWO_PORT_NODE)["inbound|80"] == PeerTls("STRICT")


def test_port_level_unset_takes_the_workloads_resolved_mode_and_string_keys_work():
    mesh = peer_auth("default", "knotwork-system", "STRICT")
    policy = peer_auth("w", selector={"app": "reviews"}, ports={"9080": "UNSET", 8000: "PERMISSIVE"})
    assert inbound_tls(mesh, policy, services=[TWO_PORTS], node=TWO_PORT_NODE) == {
        "inbound|9080": PeerTls("STRICT"), "inbound|80": PeerTls("PERMISSIVE"),
    }
    no_mode = peer_auth("w", mode="DISABLE", selector={"app": "reviews"}, ports={9080: None})
    assert inbound_tls(no_mode, services=[TWO_PORTS], node=TWO_PORT_NODE)["inbound|9080"] == PeerTls("DISABLE")


def test_tcp_inbound_listener_gets_tls_too():
    db = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP),))
    node = sidecar("mongodb", ports={"inbound:27017": 15007, "app:27017": 20010})
    assert inbound_tls(peer_auth("default", mode="STRICT"), services=[db], node=node) == {
        "inbound|27017": PeerTls("STRICT")}


def test_gateway_listeners_and_inbound_clusters_never_get_tls():
    snap = compile_snapshot(gateway_node(), [http_service("reviews")], (),
                            [peer_auth("default", "knotwork-system", "STRICT")], selection=CA)
    assert all(listener.tls is None for listener in snap.resources["listeners"].values())
    snap = compile_snapshot(sidecar("reviews"), [http_service("reviews")], (),
                            [peer_auth("default", "knotwork-system", "STRICT")], selection=CA)
    assert snap.resources["clusters"]["inbound|9080||"].tls is None
    assert snap.resources["listeners"]["http_proxy"].tls is None


# ── validation ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("spec", "field", "problem"), [
    ({"portLevelMtls": {9080: {"mode": "STRICT"}}}, "spec.portLevelMtls", "only a workload policy"),
    ({"selector": {"matchLabels": {}}, "portLevelMtls": {9080: {"mode": "STRICT"}}}, "spec.portLevelMtls",
     "only a workload policy"),
    ({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {}}, "spec.portLevelMtls", "at least one element"),
    ({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {0: {"mode": "STRICT"}}}, "spec.portLevelMtls.0",
     "1 to 65535"),
    ({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}},
     "spec.portLevelMtls.http", "1 to 65535"),
    ({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {9080: {"mode": "STRIKT"}}},
     "spec.portLevelMtls.9080.mode", "expected one of UNSET, DISABLE, PERMISSIVE, STRICT"),
    ({"mtls": {"mode": "ON"}}, "spec.mtls.mode", "got 'ON'"),
    ({"mtls": "STRICT"}, "spec.mtls", "expected a mapping"),
    ({"selector": ["app"]}, "spec.selector", "expected a mapping"),
    ({"selector": {"matchLabels": {"app": "re*"}}}, "spec.selector.matchLabels.app", "wildcards"),
])
def test_invalid_policies_are_resource_errors_naming_the_field(spec, field, problem):
    bad = Resource("security.istio.io/v1beta1", "PeerAuthentication", "bad", "prod", spec)
    with pytest.raises(ResourceError) as err:
        inbound_tls(bad)  # validated even though it does not apply to this proxy
    assert err.value.field == field and problem in err.value.problem
    assert str(err.value).startswith("plugin/routing: PeerAuthentication/prod/bad")
