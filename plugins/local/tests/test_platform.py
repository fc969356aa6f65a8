"""The control-plane side: state document → PlatformSnapshot (pure), and the
component following `up`'s socket."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from knotwork.model import MeshSettings, PlatformSnapshot, Protocol, ServicePort
from knotwork.records import ComponentContext
from knotwork_local.platform import LocalPlatform, build_snapshot
from knotwork_local.ports import plan_ports
from knotwork_local.settings import (
    IngressRoute,
    IngressSettings,
    LocalSettings,
    PortSettings,
    ReadinessSettings,
    UpstreamSettings,
    WorkloadSettings,
)
from knotwork_local.state import json_line
from knotwork_local.supervisor import Supervisor

MESH = MeshSettings(domain="example.org", trust_domain="td.example")
SETTINGS = LocalSettings(
    ingress=IngressSettings(routes=(IngressRoute("productpage", 9080, prefix="/productpage"),
                                    IngressRoute("productpage", 9080, exact="/login"))),
    workloads=(
        WorkloadSettings(name="productpage-v1", service="productpage", command=("x",), labels={"version": "v1"},
                         ports=(PortSettings(9080, "http"),), upstreams=(UpstreamSettings("mysql", 3306),)),
        WorkloadSettings(name="reviews-v1", service="reviews", namespace="books", command=("x",), replicas=2,
                         service_account="rev", labels={"version": "v1"}, ports=(PortSettings(9080, "http"),),
                         readiness=ReadinessSettings(http="/health")),
        WorkloadSettings(name="reviews-v2", service="reviews", namespace="books", command=("x",),
                         labels={"version": "v2"}, ports=(PortSettings(9080, "http"), PortSettings(9443, "tls-x"))),
    ),
)


def fake_up(tmp_path: Path) -> Supervisor:
    """A supervisor that is not running: its document is what `up` would stream."""
    plan = plan_ports(SETTINGS, domain=MESH.domain)
    return Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MESH, plan=plan, engine="native",
                      route_lines=[5, 6])


def test_snapshot_from_a_state_document(tmp_path):
    up = fake_up(tmp_path)
    r1 = up.instances["reviews-v1-1"]
    r1.app.running = r1.app.ready = r1.sidecar.ready = True
    r2 = up.instances["reviews-v1-2"]
    r2.app.running = r2.sidecar.ready = True  # not ready yet
    snap = build_snapshot(up.document(), MESH, 7)

    assert isinstance(snap, PlatformSnapshot) and snap.platform == "local" and snap.version == 7 and snap.synced
    services = {(s.name, s.namespace): s.ports for s in snap.services}
    assert services == {
        ("productpage", "default"): (ServicePort(9080, "http", Protocol.HTTP, 9080),),
        ("reviews", "books"): (ServicePort(9080, "http", Protocol.HTTP, 9080), ServicePort(9443, "tls-x", Protocol.TLS, 9443)),
    }
    eps = {(e.instance, e.service_port): e for e in snap.endpoints}
    assert len(eps) == 1 + 2 + 2
    e = eps[("reviews-v1-1", 9080)]
    assert e.service == "reviews.books.svc.example.org" and e.address == "127.0.0.1"
    assert e.port == r1.ports["inbound:9080"] and e.healthy and e.workload == "reviews-v1"
    assert e.labels == {"app": "reviews", "version": "v1"}
    assert e.identity == "spiffe://td.example/ns/books/sa/rev"
    assert not eps[("reviews-v1-2", 9080)].healthy and not eps[("productpage-v1-1", 9080)].healthy
    assert eps[("reviews-v2-1", 9443)].identity == "spiffe://td.example/ns/books/sa/reviews"

    nodes = {n.id: n for n in snap.proxies}
    assert set(nodes) == {"sidecar~productpage-v1-1", "sidecar~reviews-v1-1", "sidecar~reviews-v1-2",
                          "sidecar~reviews-v2-1", "gateway~ingress"}
    page = nodes["sidecar~productpage-v1-1"]
    plan = up.plan.instances["productpage-v1-1"]
    assert page.kind == "sidecar" and page.workload == "productpage-v1" and page.namespace == "default"
    assert page.ports == {"admin": plan["admin"], "http_proxy": plan["http_proxy"], "inbound:9080": plan["inbound:9080"],
                          "app:9080": plan["app:9080"], "tcp:mysql.default.svc.example.org:3306":
                          plan["tcp:mysql.default.svc.example.org:3306"]}
    assert page.metadata == {"service": "productpage", "instance": "productpage-v1-1"}
    gw = nodes["gateway~ingress"]
    assert gw.kind == "gateway" and gw.workload == "ingress" and gw.namespace == "knotwork-system"
    assert gw.labels == {"istio": "ingressgateway", "app": "knotwork-ingressgateway"}
    assert gw.ports == {"gateway:80": up.plan.ingress, "gateway:443": up.plan.gateway["gateway:443"],
                        "admin": up.plan.gateway["admin"]}

    assert [w.name for w in snap.workloads] == ["productpage-v1", "reviews-v1", "reviews-v2", "ingress"]
    assert snap.workloads[1].service_account == "rev"


def test_ingress_routes_become_a_gateway_and_a_virtual_service(tmp_path):
    snap = build_snapshot(fake_up(tmp_path).document(), MESH, 1)
    gateway, vs = snap.resources
    assert (gateway.api_version, gateway.kind, gateway.name, gateway.namespace) == (
        "networking.istio.io/v1", "Gateway", "ingress", "knotwork-system")
    assert gateway.spec == {"selector": {"istio": "ingressgateway"},
                            "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}
    assert (vs.kind, vs.name, vs.namespace) == ("VirtualService", "ingress", "knotwork-system")
    assert vs.spec == {"hosts": ["*"], "gateways": ["knotwork-system/ingress"], "http": [
        {"match": [{"uri": {"prefix": "/productpage"}}],
         "route": [{"destination": {"host": "productpage.default.svc.example.org", "port": {"number": 9080}}}]},
        {"match": [{"uri": {"exact": "/login"}}],
         "route": [{"destination": {"host": "productpage.default.svc.example.org", "port": {"number": 9080}}}]},
    ]}
    assert str(vs.source) == f"{tmp_path / 'knotwork.yaml'}:5"


def test_no_routes_no_virtual_service(tmp_path):
    plan = plan_ports(LocalSettings())
    up = Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=LocalSettings(), mesh=MESH, plan=plan, engine="native")
    assert [r.kind for r in build_snapshot(up.document(), MESH, 1).resources] == ["Gateway"]


@pytest.mark.anyio
async def test_component_waits_for_up_then_follows_and_reconnects(tmp_path):
    up = fake_up(tmp_path)
    doc = up.document()
    ctx = ComponentContext(mesh=MESH, settings=SETTINGS, mesh_dir=tmp_path, state_dir=tmp_path)
    send, receive = anyio.create_memory_object_stream[PlatformSnapshot](10)
    sock = tmp_path / "platform.sock"

    async def serve_docs(docs: list[dict]) -> None:
        listener = await anyio.create_unix_listener(sock)
        async with listener:
            client = await listener.accept()
            async with client:
                for d in docs:
                    await client.send(json_line(d))
        sock.unlink()

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(LocalPlatform(ctx).run, send)
            await anyio.sleep(0.15)  # it polls for a socket that is not there yet: nothing is pushed
            assert receive.statistics().current_buffer_used == 0
            ready = {**doc, "instances": [{**i, "running": True, "ready": True, "sidecar": {**i["sidecar"], "ready": True}}
                                          for i in doc["instances"]]}
            # versions follow the documents' generations, and always increase
            await serve_docs([{**doc, "generation": 5}, {**ready, "generation": 9}, {"garbage": True}, ready])
            first, second, third = await receive.receive(), await receive.receive(), await receive.receive()
            assert (first.version, second.version, third.version) == (5, 9, 10)  # the garbage was skipped
            assert not any(e.healthy for e in first.endpoints) and all(e.healthy for e in second.endpoints)
            await serve_docs([{**doc, "generation": 1}])  # `up` came back: the component reconnects
            fourth = await receive.receive()
            assert fourth.version == 11 and fourth.endpoints and not any(e.healthy for e in fourth.endpoints)
        tg.cancel_scope.cancel()
