"""The control plane's metrics (knotwork.control_metrics.ControlMetrics): each counter moves on a real event,
and a running control plane serves them over HTTP at /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from knotwork import Component, Compiler, ProxyEngine, Strategy, hookimpl
from knotwork.control import ControlPlane
from knotwork.distribution import AdsSession, DiscoveryRequest, StreamStatus
from knotwork.identity import BUNDLE_FILE, make_csr, make_key
from knotwork.model import Resource
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint
from knotwork.testing import (
    OneTimeCredentials,
    RootAuthority,
    make_ca,
    make_endpoint,
    make_node,
    make_service,
    make_snapshot,
    mesh_from_yaml,
    sign_request,
)

ALICE = "spiffe://cluster.local/ns/default/sa/reviews"


def networking(builder, inp):
    """A cluster and an endpoint set per service port; a `Broken` resource cannot be compiled."""
    if any(r.spec.get("broken") for r in inp.resources.get("Broken", ())):
        raise ValueError("Broken/default/b: spec.broken: cannot be compiled")
    for svc in inp.services:
        for port in svc.ports:
            name = f"outbound|{port.port}||{svc.fqdn(inp.mesh.domain)}"
            builder.add(Cluster(name, service=svc.fqdn(inp.mesh.domain), port=port.port))
            eps = inp.endpoints.get((svc.fqdn(inp.mesh.domain), port.port), ())
            builder.add(EndpointSet(name, tuple(LbEndpoint(e.address, e.port) for e in eps)))


class IdleServer:
    """An engine's distribution server that serves nothing (the tests drive the cache as a server does)."""

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()


class Platform:
    """A platform component: pushes its first snapshot, then whatever the test sends through `Fake.send`."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake

    async def run(self, send, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with send:
            self.fake.send = send
            await send.send(self.fake.first)
            task_status.started()
            await anyio.sleep_forever()


@attrs.define(eq=False)  # pluggy keeps plugins in sets
class Fake:
    root: Path
    first: Any = None
    send: Any = None
    tokens: OneTimeCredentials = attrs.Factory(lambda: OneTimeCredentials(t1=("sidecar~reviews", ALICE)))

    @hookimpl
    def knotwork_proxy_engines(self):
        return [ProxyEngine(name="native", control_server=lambda ctx, cache: IdleServer(), proxy=object)]

    @hookimpl
    def knotwork_routers(self):
        return [Strategy(name="host", factory=object)]

    @hookimpl
    def knotwork_load_balancers(self):
        return [Strategy(name="round_robin", factory=object)]

    @hookimpl
    def knotwork_platforms(self):
        return [Component(name="test", factory=lambda ctx: Platform(self))]

    @hookimpl
    def knotwork_certificate_authorities(self):
        return [Component(name="testca", factory=lambda ctx: RootAuthority(self.root))]

    @hookimpl
    def knotwork_attest_workload(self, claim):
        return self.tokens(claim)

    @hookimpl
    def knotwork_compilers(self):
        return [Compiler(name="net", area="networking", slots=frozenset({"clusters", "endpoints"}), compile=networking)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def fake(tmp_path, register_plugin) -> Fake:
    fake = Fake(make_ca(tmp_path / "root"))
    register_plugin(fake, name="fake")
    return fake


@pytest.fixture
def control(fake, hooks, tmp_path) -> ControlPlane:
    mesh = mesh_from_yaml(tmp_path, "plugins: {platform: test, certificate_authority: null, config_sources: []}\n", hooks)
    return ControlPlane(mesh, hooks)


def value(control: ControlPlane, name: str, **labels: str) -> float:
    got = control.metrics.get_sample_value(name, labels)
    return 0.0 if got is None else got


def platform(version: int = 1, *, endpoints: int = 1, resources: tuple = ()) -> Any:
    return make_snapshot("test", version, services=[make_service("reviews")],
                         endpoints=[make_endpoint("reviews", address=f"127.0.0.{i + 1}") for i in range(endpoints)],
                         proxies=[make_node("reviews"), make_node("ingress", kind="gateway", id="gateway~ingress")],
                         resources=resources)


def test_discovery_events_count_snapshots_and_what_changed(control):
    control._received(platform(1))
    assert value(control, "knotwork_control_platform_snapshots_total", source="test") == 1
    assert value(control, "knotwork_control_registry_events_total", type="services", event="add") == 1
    assert value(control, "knotwork_control_registry_events_total", type="endpoints", event="add") == 1
    assert value(control, "knotwork_control_services") == value(control, "knotwork_control_endpoints") == 1

    control._received(platform(2, endpoints=3))  # two endpoints more, the service unchanged
    assert value(control, "knotwork_control_platform_snapshots_total", source="test") == 2
    assert value(control, "knotwork_control_registry_events_total", type="endpoints", event="add") == 3
    assert value(control, "knotwork_control_registry_events_total", type="services", event="add") == 1
    assert value(control, "knotwork_control_endpoints") == 3

    unhealthy = attrs.evolve(platform(3), endpoints=(attrs.evolve(platform(3).endpoints[0], healthy=False),))
    control._received(unhealthy)  # the first endpoint changed, the other two are gone
    assert value(control, "knotwork_control_registry_events_total", type="endpoints", event="update") == 1
    assert value(control, "knotwork_control_registry_events_total", type="endpoints", event="delete") == 2
    control._received(platform(4, resources=(Resource("x/v1", "Broken", "b"),)))
    assert value(control, "knotwork_control_registry_events_total", type="configs", event="add") == 1


def test_pushes_acks_nacks_and_connections_move_their_counters(control):
    control._received(platform())
    control.publish()
    assert value(control, "knotwork_control_config_publishes_total") == 1
    assert value(control, "knotwork_control_connected_proxies", engine="native", type="sidecar") == 0

    # what an engine's server does with the cache for one stream
    node = "sidecar~reviews"
    session = AdsSession(node, control.cache.status.setdefault(node, StreamStatus()))
    control.cache.connected[node] = control.cache.connected.get(node, 0) + 1
    assert value(control, "knotwork_control_connected_proxies", engine="native", type="sidecar") == 1
    assert value(control, "knotwork_control_connected_proxies", engine="native", type="gateway") == 0
    assert session.on_request(DiscoveryRequest("clusters")) == "subscribe"
    assert session.on_request(DiscoveryRequest("endpoints")) == "subscribe"
    pushes = session.plan(control.cache.get(node))
    assert [p.type for p in pushes] == ["clusters", "endpoints"]
    assert value(control, "knotwork_control_pushes_total", type="clusters") == 1
    assert value(control, "knotwork_control_pushes_total", type="endpoints") == 1
    assert value(control, "knotwork_control_push_latency_seconds_count") == 0
    for push in pushes:
        assert session.on_request(DiscoveryRequest(push.type, push.version, push.nonce)) == "ack"
    assert value(control, "knotwork_control_push_latency_seconds_count") == 2
    assert 0 <= value(control, "knotwork_control_push_latency_seconds_sum") < 5
    assert value(control, "knotwork_control_push_latency_seconds_bucket", le="+Inf") == 2

    control._received(platform(2, endpoints=2))  # a config change: compiled, pushed, refused by the proxy
    control.publish()
    (push,) = session.plan(control.cache.get(node))
    assert push.type == "endpoints"
    assert value(control, "knotwork_control_pushes_total", type="endpoints") == 2
    assert session.on_request(DiscoveryRequest("endpoints", "", push.nonce, error_detail="bad")) == "nack"
    assert value(control, "knotwork_control_nacks_total", type="endpoints") == 1
    assert value(control, "knotwork_control_nacks_total", type="clusters") == 0
    assert value(control, "knotwork_control_push_latency_seconds_count") == 2  # a NACK is no convergence

    control.cache.connected[node] -= 1
    assert value(control, "knotwork_control_connected_proxies", engine="native", type="sidecar") == 0


def test_a_config_change_a_source_refuses_is_a_rejection(control):
    control._received(platform())
    control.publish()
    ctx = control.context("files")  # what a config source gets
    assert ctx.validate("files", (Resource("x/v1", "Broken", "b", spec={"broken": False}),)) == []
    problems = ctx.validate("files", (Resource("x/v1", "Broken", "b", spec={"broken": True}),))
    assert problems and "cannot be compiled" in problems[0]
    assert value(control, "knotwork_control_config_rejections_total", source="files") == 0  # validating is no refusal
    ctx.rejected("files", problems)
    assert value(control, "knotwork_control_config_rejections_total", source="files") == 1
    # a source that has not pushed its first snapshot yet (the files source checks its folder before)
    assert ctx.validate("later", (Resource("x/v1", "Broken", "b", spec={"broken": True}),)) == problems
    ctx.rejected("later", ["x: (file): expected a readable UTF-8 file, got EISDIR"])
    assert value(control, "knotwork_control_config_rejections_total", source="later") == 1


def test_a_failed_compile_counts_as_a_compile_error(control):
    control._received(platform(resources=(Resource("x/v1", "Broken", "b", spec={"broken": True}),)))
    control.publish()
    assert value(control, "knotwork_control_compile_errors_total") == 2  # the sidecar and the gateway
    assert value(control, "knotwork_control_config_publishes_total") == 0


async def http_get(address: str, path: str) -> tuple[str, dict[str, str], str]:
    host, _, port = address.rpartition(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: */*\r\n\r\n".encode())
        buffered = BufferedByteReceiveStream(stream)
        head = (await buffered.receive_until(b"\r\n\r\n", 65536)).decode()
        status, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await buffered.receive_exactly(int(headers["content-length"]))
        return status, headers, body.decode()


@pytest.mark.anyio
async def test_a_running_control_plane_serves_metrics_and_counts_certificates(fake, hooks, tmp_path):
    fake.first = platform()
    mesh = mesh_from_yaml(tmp_path, "plugins: {platform: test, certificate_authority: testca, config_sources: []}\n",
                          hooks)
    control = ControlPlane(mesh, hooks)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(control.run)
            address = "%s:%d" % control.metrics_address
            while control.cache.get("sidecar~reviews") is None:  # the first snapshot is merged and published
                await anyio.sleep(0.01)
            assert (await control._admin({"method": "status"}))["metrics"] == address

            ca = "127.0.0.1:%d" % control.certificates.address[1]
            bundle = (tmp_path / ".knotwork" / BUNDLE_FILE).read_text()
            key = make_key()
            request = {"csr": make_csr(key, ALICE), "node": "sidecar~reviews", "platform": "test", "credential": "t1"}
            assert (await sign_request(ca, bundle, request))["certificate_chain"]
            with pytest.raises(GRPCError):
                await sign_request(ca, bundle, request)  # the credential is spent
            with pytest.raises(GRPCError):
                await sign_request(ca, bundle, {**request, "csr": "not a csr"})

            status, headers, text = await http_get(address, "/metrics")
            assert status == "HTTP/1.1 200 OK" and headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
            assert samples[("knotwork_control_certificates_issued_total", (("kind", "bootstrap"),))] == 1
            assert samples[("knotwork_control_certificates_issued_total", (("kind", "renewal"),))] == 0
            assert samples[("knotwork_control_certificate_refusals_total", (("reason", "PERMISSION_DENIED"),))] == 1
            assert samples[("knotwork_control_certificate_refusals_total", (("reason", "INVALID_ARGUMENT"),))] == 1
            assert samples[("knotwork_control_platform_snapshots_total", (("source", "test"),))] == 1
            assert samples[("knotwork_control_config_publishes_total", ())] == 1
            assert samples[("knotwork_control_services", ())] == 1
            assert {name for name, _ in samples} >= {
                "knotwork_control_connected_proxies", "knotwork_control_pushes_total", "knotwork_control_nacks_total",
                "knotwork_control_push_latency_seconds_bucket", "knotwork_control_registry_events_total"}

            assert (await http_get(address, "/other"))[0] == "HTTP/1.1 404 Not Found"
            status, headers, text = await http_get(address, "/metrics?x=1")
            assert status == "HTTP/1.1 200 OK" and "knotwork_control_pushes_total" in text
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_metrics_address_comes_from_the_environment(fake, hooks, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KNOTWORK_METRICS_LISTEN", f"127.0.0.1:{port}")
    fake.first = platform()
    mesh = mesh_from_yaml(tmp_path, "plugins: {platform: test, certificate_authority: null, config_sources: []}\n", hooks)
    control = ControlPlane(mesh, hooks)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(control.run)
            assert control.metrics_address == ("127.0.0.1", port)
            assert (await http_get(f"127.0.0.1:{port}", "/metrics"))[0] == "HTTP/1.1 200 OK"
            tg.cancel_scope.cancel()
