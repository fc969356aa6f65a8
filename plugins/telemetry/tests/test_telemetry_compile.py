"""The `telemetry` compiler: chain and Observability per listener, mesh defaults, the Telemetry API
(scopes, inheritance, modes) and its errors."""

from __future__ import annotations

from typing import Any

import pytest
from knotwork import CompileInput, Compiler, MeshSettings, ProxyNode, Resource, Strategy
from knotwork.model import MeshTelemetry, MetricNaming
from knotwork.proxyconfig import (
    Cluster, Listener, Observability, PeerInfo, RouteAction, Route, RouteTable, SnapshotBuilder, TagOverride, Tracing,
    VirtualHost, WeightedCluster,
)
from telemetry_helpers import REVIEWS_FQDN, REVIEWS_ID

from knotwork_telemetry import _hooks
from knotwork_telemetry.compile import compile_telemetry
from knotwork_telemetry.errors import TelemetryError

SINKS = ("metrics", "access-log")
ENDPOINT = "http://127.0.0.1:4318/v1/traces"
REVIEWS_LABELS = {"app": "reviews", "version": "v2"}


def reviews_node(**kw: Any) -> ProxyNode:
    kw.setdefault("labels", REVIEWS_LABELS)
    return ProxyNode(id="reviews-v2-1.default", kind="sidecar", workload="reviews-v2", namespace="default",
                     identity=REVIEWS_ID, **kw)


def gateway_node() -> ProxyNode:
    return ProxyNode(id="ingressgateway", kind="gateway", workload="ingressgateway", namespace="knotwork-system",
                     labels={"istio": "ingressgateway"})


def telemetry(name: str, ns: str = "default", selector: dict | None = None, api: str = "telemetry.istio.io/v1",
              **spec: Any) -> Resource:
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return Resource(api, "Telemetry", name, ns, spec)


def compile_listeners(node: ProxyNode | None = None, *resources: Resource, mesh: MeshSettings | None = None,
                      sinks: tuple[str, ...] = SINKS) -> dict[str, Listener]:
    """Listeners as the networking compiler would leave them, then the telemetry compiler, as the kernel runs it."""
    node = node or reviews_node()
    builder = SnapshotBuilder().as_compiler("networking", frozenset({"listeners", "routes", "clusters"}))
    if node.kind == "sidecar":
        builder.add(Cluster("inbound|9080||", service=REVIEWS_FQDN, port=9080))
        builder.add(RouteTable("inbound|9080", (VirtualHost("inbound|9080", ("*",), (
            Route("default", action=RouteAction((WeightedCluster("inbound|9080||"),))),)),)))
        builder.add(Listener("inbound|9080", "127.0.0.1", 15006, "inbound", route_table="inbound|9080"))
        builder.add(Cluster("inbound|27017||", service="mongo.default.svc.cluster.local", port=27017, protocol="tcp"))
        builder.add(Listener("inbound|27017", "127.0.0.1", 15007, "inbound", protocol="tcp", cluster="inbound|27017||"))
        builder.add(Listener("http_proxy", "127.0.0.1", 15001, "http_proxy", route_table="outbound"))
    else:
        builder.add(Listener("gateway|80", "0.0.0.0", 8080, "gateway", route_table="gateway|80"))
    (record,) = _hooks.knotwork_compilers()
    inp = CompileInput(mesh or MeshSettings(), node, (), {}, {"Telemetry": tuple(resources)}, {"telemetry": sinks})
    record.compile(builder.as_compiler(record.name, record.slots), inp)
    return {listener.name: listener for listener in builder.all("listeners")}


def observability(name: str = "inbound|9080", *resources: Resource, **kw: Any) -> Observability:
    obs = compile_listeners(kw.pop("node", None), *resources, **kw)[name].observability
    assert obs is not None
    return obs


# ── records ─────────────────────────────────────────────────────────────────


def test_records():
    (compiler,) = _hooks.knotwork_compilers()
    assert isinstance(compiler, Compiler)
    assert (compiler.name, compiler.area, compiler.slots) == \
        ("telemetry", "telemetry", frozenset({"listeners.telemetry", "listeners.observability"}))
    sinks = {s.name: s for s in _hooks.knotwork_telemetry_sinks()}
    assert set(sinks) == {"metrics", "access-log"}
    assert all(isinstance(s, Strategy) and s.engines == frozenset({"native", "envoy"}) for s in sinks.values())


def test_the_kernel_finds_the_plugin(hooks, register_plugin):
    register_plugin(_hooks, "telemetry")
    assert {"metrics", "access-log"} <= set(hooks.strategies()["telemetry"])
    assert "telemetry" in [c.name for c in hooks.compilers()]


# ── every listener ──────────────────────────────────────────────────────────


def test_every_listener_gets_the_chain_and_its_side():
    listeners = compile_listeners()
    me = PeerInfo("reviews-v2", "default", "reviews", "v2", REVIEWS_ID)
    assert {n: lis.telemetry for n, lis in listeners.items()} == dict.fromkeys(listeners, SINKS)
    assert listeners["inbound|9080"].observability == Observability("destination", me, service=REVIEWS_FQDN)
    assert listeners["inbound|27017"].observability.service == "mongo.default.svc.cluster.local"
    assert listeners["http_proxy"].observability == Observability("source", me)


def test_a_gateway_reports_as_the_client_side_and_a_workload_without_labels_is_unknown():
    obs = observability("gateway|80", node=gateway_node())
    assert obs.reporter == "source"
    assert obs.workload == PeerInfo("ingressgateway", "knotwork-system", "unknown", "unknown", "unknown")


def test_the_chain_is_the_mesh_selection():
    listeners = compile_listeners(None, sinks=())
    assert {lis.telemetry for lis in listeners.values()} == {()}
    listeners = compile_listeners(None, sinks=("recorder", "metrics"))
    assert {lis.telemetry for lis in listeners.values()} == {("recorder", "metrics")}


# ── mesh defaults ───────────────────────────────────────────────────────────


def test_mesh_telemetry_sets_naming_access_log_and_tracing():
    mesh = MeshSettings(telemetry=MeshTelemetry(metric_names=MetricNaming.ISTIO, access_log=False,
                                                tracing_sampling=25.0, tracing_endpoint=ENDPOINT))
    listeners = compile_listeners(None, mesh=mesh)
    inbound = listeners["inbound|9080"]
    assert inbound.telemetry == ("metrics",)
    obs = inbound.observability
    assert (obs.naming, obs.access_log) == ("istio", False) and type(obs.naming) is str
    assert obs.tracing == Tracing(sampling=25.0, endpoint=ENDPOINT, service="reviews.default")


def test_no_tracing_endpoint_no_tracing():
    assert observability().tracing is None
    zero = MeshSettings(telemetry=MeshTelemetry(tracing_sampling=0.0, tracing_endpoint=ENDPOINT))
    assert observability(mesh=zero).tracing.sampling == 0.0  # still propagates the callers' decisions


# ── Telemetry API: scopes and inheritance ───────────────────────────────────

TRACED = MeshSettings(telemetry=MeshTelemetry(tracing_endpoint=ENDPOINT))


def test_root_namespace_and_workload_levels_merge_field_by_field():
    root = telemetry("mesh-default", "knotwork-system",
                     tracing=[{"randomSamplingPercentage": 10, "customTags": {"env": {"literal": {"value": "prod"}}}}],
                     accessLogging=[{"disabled": True}])
    namespace = telemetry("ns", tracing=[{"customTags": {"team": {"literal": {"value": "books"}}}}])
    workload = telemetry("reviews", selector={"app": "reviews"}, tracing=[{"randomSamplingPercentage": 50}])
    obs = observability("inbound|9080", root, namespace, workload, mesh=TRACED)
    assert obs.tracing.sampling == 50.0
    assert dict(obs.tracing.custom_tags) == {"env": "prod", "team": "books"}
    assert obs.access_log is False
    assert compile_listeners(None, root, namespace, workload)["inbound|9080"].telemetry == ("metrics",)


def test_a_workload_policy_selects_by_labels_and_namespace():
    other = telemetry("ratings-only", selector={"app": "ratings"}, accessLogging=[{"disabled": True}])
    elsewhere = telemetry("shop", "shop", accessLogging=[{"disabled": True}])
    assert observability("inbound|9080", other, elsewhere).access_log is True


def test_a_narrower_level_turns_access_logging_back_on():
    off = MeshSettings(telemetry=MeshTelemetry(access_log=False))
    on = telemetry("reviews", selector={"app": "reviews"}, accessLogging=[{"providers": [{"name": "envoy"}]}])
    assert observability("inbound|9080", on, mesh=off).access_log is True
    assert observability("inbound|9080", mesh=off).access_log is False


def test_a_selector_in_the_root_namespace_selects_its_gateways():
    gw = telemetry("gw", "istio-system", selector={"istio": "ingressgateway"}, accessLogging=[{"disabled": True}])
    assert observability("gateway|80", gw, node=gateway_node()).access_log is False


def test_the_first_policy_of_a_level_wins(capture_logs):
    first = telemetry("a", accessLogging=[{"disabled": True}])
    second = telemetry("b", accessLogging=[{"disabled": False}])
    assert observability("inbound|9080", first, second).access_log is False
    assert any(e.get("resource") == "Telemetry/default/b" and e["log_level"] == "warning" for e in capture_logs)


def test_modes_apply_to_their_side():
    server_off = telemetry("x", accessLogging=[{"disabled": True, "match": {"mode": "SERVER"}}],
                           tracing=[{"disableSpanReporting": True, "match": {"mode": "CLIENT"}}])
    listeners = compile_listeners(None, server_off, mesh=TRACED)
    assert listeners["inbound|9080"].observability.access_log is False
    assert listeners["http_proxy"].observability.access_log is True
    assert listeners["inbound|9080"].observability.tracing is not None
    assert listeners["http_proxy"].observability.tracing is None


def test_metric_overrides_become_tag_overrides_and_disabling():
    policy = telemetry("m", api="telemetry.istio.io/v1alpha1", metrics=[{"providers": [{"name": "prometheus"}], "overrides": [
        {"match": {"metric": "REQUEST_COUNT", "mode": "SERVER"},
         "tagOverrides": {"request_host": {"value": "request.host"}, "source_principal": {"operation": "REMOVE"}}},
        {"match": {"metric": "REQUEST_SIZE"}, "disabled": True},
    ]}])
    listeners = compile_listeners(None, policy)
    inbound, outbound = listeners["inbound|9080"].observability, listeners["http_proxy"].observability
    assert inbound.tag_overrides == (
        TagOverride("REQUEST_COUNT", "request_host", value="request.host", mode="SERVER"),
        TagOverride("REQUEST_COUNT", "source_principal", remove=True, mode="SERVER"),
    )
    assert outbound.tag_overrides == ()
    assert inbound.disabled_metrics == outbound.disabled_metrics == ("REQUEST_SIZE",)
    assert inbound.metrics and listeners["inbound|9080"].telemetry == SINKS


def test_all_metrics_disabled_drops_the_sink_and_a_narrower_level_restores_one():
    off = telemetry("off", "knotwork-system", metrics=[{"overrides": [{"disabled": True}]}])
    assert observability("inbound|9080", off).metrics is False
    assert compile_listeners(None, off)["inbound|9080"].telemetry == ("access-log",)
    back = telemetry("back", selector={"app": "reviews"},
                     metrics=[{"overrides": [{"match": {"metric": "REQUEST_COUNT"}, "disabled": False}]}])
    obs = observability("inbound|9080", off, back)
    assert obs.metrics is True
    assert set(obs.disabled_metrics) == {
        "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE", "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS",
        "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES"}


def test_unsupported_fields_are_warned_once_and_ignored(capture_logs):
    policy = telemetry("t", targetRefs=[{"kind": "Gateway", "name": "gw"}],
                       tracing=[{"customTags": {"pod": {"environment": {"name": "POD_NAME"}}}}])
    obs = observability("inbound|9080", policy, mesh=TRACED)
    assert obs.tracing.custom_tags == ()
    fields = {e["field"] for e in capture_logs if e.get("resource") == "Telemetry/default/t"}
    assert fields == {"spec.targetRefs", "spec.tracing[0].customTags.pod.environment"}


# ── Telemetry API: errors ───────────────────────────────────────────────────


@pytest.mark.parametrize(("spec", "field", "problem"), [
    ({"tracing": [{"randomSamplingPercentage": 101}]}, "spec.tracing[0].randomSamplingPercentage", "percent"),
    ({"tracing": [{"randomSamplingPercentage": True}]}, "spec.tracing[0].randomSamplingPercentage", "percent"),
    ({"tracing": {"randomSamplingPercentage": 1}}, "spec.tracing", "expected a list"),
    ({"accessLogging": [{"disabled": "yes"}]}, "spec.accessLogging[0].disabled", "true or false"),
    ({"accessLogging": [{"match": {"mode": "BOTH"}}]}, "spec.accessLogging[0].match.mode", "CLIENT_AND_SERVER"),
    ({"metrics": [{"overrides": [{"match": {"metric": "REQUESTS"}}]}]}, "spec.metrics[0].overrides[0].match.metric",
     "REQUEST_COUNT"),
    ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "request.body"}}}]}]},
     "spec.metrics[0].overrides[0].tagOverrides.x.value", "unsupported expression"),
    ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "UPSERT"}}}]}]},
     "spec.metrics[0].overrides[0].tagOverrides.x.value", "UPSERT needs a value"),
    ({"metrics": [{"overrides": [{"tagOverrides": {"bad-name": {"value": "'a'"}}}]}]},
     "spec.metrics[0].overrides[0].tagOverrides.bad-name", "label name"),
    ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "DROP"}}}]}]},
     "spec.metrics[0].overrides[0].tagOverrides.x.operation", "UPSERT or REMOVE"),
    ({"tracing": [{"customTags": {"env": {"literal": {"value": 3}}}}]}, "spec.tracing[0].customTags.env", "literal"),
    ({"selector": {"matchLabels": {"app": "re*"}}}, "spec.selector.matchLabels.app", "wildcards"),
    ({"logging": []}, "spec.logging", "unknown field"),
    ({"accessLogging": [{"provider": [{"name": "envoy"}]}]}, "spec.accessLogging[0].provider", "unknown field"),
])
def test_a_bad_value_names_resource_and_field(spec, field, problem):
    res = Resource("telemetry.istio.io/v1", "Telemetry", "bad", "shop", spec)
    with pytest.raises(TelemetryError) as info:
        compile_listeners(None, res)  # validated although it does not apply to this proxy
    message = str(info.value)
    assert message.startswith(f"plugin/telemetry: Telemetry/shop/bad: {field}: "), message
    assert problem in message and isinstance(info.value, ValueError)


def test_errors_are_raised_even_for_a_proxy_without_listeners():
    res = telemetry("bad", tracing=[{"randomSamplingPercentage": -1}])
    builder = SnapshotBuilder().as_compiler("telemetry", _hooks.SLOTS)
    inp = CompileInput(MeshSettings(), reviews_node(), (), {}, {"Telemetry": (res,)}, {"telemetry": SINKS})
    with pytest.raises(TelemetryError, match="randomSamplingPercentage"):
        compile_telemetry(builder, inp)
