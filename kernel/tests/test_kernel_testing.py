"""The kernel's pytest plugin itself (knotwork.testing)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from knotwork import Component, Compiler, ProxyEngine, Strategy, hookimpl
from knotwork.config import MeshError
from knotwork.control import ControlPlane
from knotwork.model import Protocol, Resource
from knotwork.protocols import ConnectionView, RequestView, ResponseInfo, TcpInfo
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, SlotError
from knotwork.testing import (
    compile_node,
    make_connection,
    make_endpoint,
    make_node,
    make_request,
    make_response,
    make_service,
    make_snapshot,
    make_tcp,
    mesh_from_yaml,
)


def protocol_attributes(proto: type) -> set[str]:
    return {n for n in getattr(proto, "__annotations__", {})} | {
        n for n in vars(proto) if not n.startswith("_") and callable(vars(proto)[n])}


@pytest.mark.parametrize(("fake", "proto"), [
    (make_request(), RequestView), (make_connection(), ConnectionView), (make_response(), ResponseInfo),
    (make_tcp(), TcpInfo)])
def test_fakes_have_every_attribute_of_their_protocol(fake, proto):
    missing = {n for n in protocol_attributes(proto) if not hasattr(fake, n)}
    assert not missing


def test_make_request():
    req = make_request("POST", "/a?b=1", "Reviews:9080", {"X-Tenant": "acme"}, "spiffe://cluster.local/ns/a/sa/b",
                       {"app": "web"})
    assert (req.method, req.path, req.authority) == ("POST", "/a?b=1", "reviews:9080")
    assert req.header("x-tenant") == req.header("X-TENANT") == "acme"
    assert req.header("missing") is None
    assert req.connection.peer_identity == "spiffe://cluster.local/ns/a/sa/b" and req.connection.tls
    assert req.source_labels == {"app": "web"} and req.principal is None
    assert not make_request().connection.tls


def test_model_builders():
    svc = make_service("ratings", "prod", [9080, (9090, "grpc-x")])
    assert [(p.port, p.protocol) for p in svc.ports] == [(9080, Protocol.UNKNOWN), (9090, Protocol.GRPC)]
    ep = make_endpoint("ratings", 9080, "127.0.0.2", target_port=41000, namespace="prod", labels={"v": "1"})
    assert (ep.service, ep.service_port, ep.port, ep.labels) == ("ratings.prod.svc.cluster.local", 9080, 41000, {"v": "1"})
    assert make_node("ratings").id == "sidecar~ratings"
    assert make_node("ingress", kind="gateway", id="gw").id == "gw"
    snap = make_snapshot(services=[svc], endpoints=[ep])
    assert snap.services == (svc,) and snap.endpoints == (ep,) and snap.synced


def test_register_plugin_unregisters_at_teardown(pytester_run):
    result = pytester_run("""
        from knotwork import Strategy, hookimpl

        class P:
            @hookimpl
            def knotwork_routers(self):
                return [Strategy(name="host", factory=object)]

        def test_one(register_plugin, hooks, plugin_manager):
            register_plugin(P(), name="p")
            assert list(hooks.registry()["routers"]) == ["host"]

        def test_two(plugin_manager, hooks):
            assert plugin_manager.list_name_plugin() == []
            assert hooks.registry()["routers"] == {}
    """)
    assert result.returncode == 0, result.stdout


def test_hook_recorder(register_plugin, hooks, hook_recorder):
    class P:
        @hookimpl
        def knotwork_load_balancers(self):
            return [Strategy(name="rr", factory=object)]

        @hookimpl
        def knotwork_snapshot_published(self, version):
            raise RuntimeError("boom")

    register_plugin(P(), name="p")
    hooks.registry()
    (call,) = hook_recorder.calls("knotwork_load_balancers")
    assert (call.name, call.plugins, call.kwargs, call.exception) == ("knotwork_load_balancers", ("p",), {}, None)
    assert [s.name for s in call.results[0]] == ["rr"]
    with pytest.raises(RuntimeError):
        hooks.snapshot_published("1", [], {})
    (failed,) = hook_recorder.calls("knotwork_snapshot_published")
    assert isinstance(failed.exception, RuntimeError) and failed.kwargs["version"] == "1"
    hook_recorder.clear()
    assert hook_recorder.calls() == []


def test_capture_logs(capture_logs):
    import structlog

    structlog.get_logger("x").warning("hello", plugin="tenant")
    assert capture_logs == [{"event": "hello", "plugin": "tenant", "log_level": "warning"}]


# ── compile_node compiles exactly like the control plane ─────────────────────


def networking(builder, inp):
    for svc in inp.services:
        for port in svc.ports:
            name = f"outbound|{port.port}||{svc.fqdn(inp.mesh.domain)}"
            builder.add(Cluster(name, service=svc.fqdn(inp.mesh.domain), port=port.port))
            eps = inp.endpoints.get((svc.fqdn(inp.mesh.domain), port.port), ())
            builder.add(EndpointSet(name, tuple(LbEndpoint(e.address, e.port) for e in eps)))


def balancing(builder, inp):
    lb = inp.selection["load_balancer"]
    for c in builder.all("clusters"):
        if c.service.startswith("ratings") or inp.resources.get("DestinationRule"):
            builder.set("clusters", c.name, "lb", lb)


class Mini:
    @hookimpl
    def knotwork_platforms(self):
        return [Component(name="local", factory=object)]

    @hookimpl
    def knotwork_proxy_engines(self):
        return [ProxyEngine(name="native", control_server=object, proxy=object)]

    @hookimpl
    def knotwork_routers(self):
        return [Strategy(name="host", factory=object)]

    @hookimpl
    def knotwork_load_balancers(self):
        return [Strategy(name="round_robin", factory=object), Strategy(name="random", factory=object)]

    @hookimpl
    def knotwork_compilers(self):
        return [Compiler(name="net", area="networking", slots=frozenset({"clusters", "endpoints"}), compile=networking),
                Compiler(name="lb", area="load_balancing", slots=frozenset({"clusters.lb"}), compile=balancing)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_compile_node_matches_the_control_plane(register_plugin, hooks, tmp_path):
    register_plugin(Mini(), name="mini")
    node = make_node("productpage")
    services = [make_service("ratings"), make_service("reviews")]
    endpoints = [make_endpoint("ratings", address="127.0.0.2"), make_endpoint("reviews", address="127.0.0.3")]
    resources = [Resource("networking.istio.io/v1", "DestinationRule", "r")]
    platform = make_snapshot("local", services=services, endpoints=endpoints, proxies=[node], resources=resources)

    mesh = mesh_from_yaml(tmp_path, "plugins: {load_balancer: random}\n", hooks)
    control = ControlPlane(mesh, hooks)
    control.sources["local"] = platform
    control.publish()
    expected = control.cache.get(node.id)

    got = compile_node(hooks, node, services=services, endpoints=endpoints, resources=resources,
                       selection={"load_balancer": "random"})
    assert got == expected
    assert {c.lb for c in got.resources["clusters"].values()} == {"random"}
    assert got.resources["endpoints"]["outbound|9080||ratings.default.svc.cluster.local"].endpoints[0].address == "127.0.0.2"


def test_compile_node_raises_slot_errors(register_plugin, hooks):
    class Sloppy:
        @hookimpl
        def knotwork_compilers(self):
            return [Compiler(name="sloppy", area="routing", slots=frozenset({"routes"}), compile=networking)]

    register_plugin(Sloppy(), name="sloppy")
    with pytest.raises(SlotError, match="'sloppy' wrote slot 'clusters'"):
        compile_node(hooks, make_node(), services=[make_service()])


def test_mesh_from_yaml_reports_with_the_file(register_plugin, hooks, tmp_path):
    register_plugin(Mini(), name="mini")
    with pytest.raises(MeshError) as info:
        mesh_from_yaml(tmp_path, """
            plugins:
              router: regex
        """, hooks)
    assert info.value.problems == [f"{tmp_path / 'knotwork.yaml'}:2: plugins.router: expected an installed router (host), got 'regex'"]


# ── the pytest11 entry point ─────────────────────────────────────────────────


@pytest.fixture
def pytester_run(tmp_path):
    """Run a test file in a fresh pytest process: the fixtures must come from the entry point alone."""
    def run(source: str) -> subprocess.CompletedProcess:
        (tmp_path / "test_it.py").write_text(textwrap.dedent(source))
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return run


def test_fixtures_come_from_the_pytest11_entry_point(pytester_run):
    result = pytester_run("""
        def test_fixtures(plugin_manager, hooks, register_plugin, hook_recorder, capture_logs):
            assert hooks.pm is plugin_manager
    """)
    assert result.returncode == 0, result.stdout
    assert "1 passed" in result.stdout



def test_tls_material_is_a_working_ca_and_leaf(tmp_path):
    import socket
    import ssl
    import threading

    from knotwork.testing import make_ca, make_certificate

    ca = make_ca(tmp_path / "ca")
    cert, key = make_certificate(ca, tmp_path / "leaf", "svc.example.com", "*.svc.example.com")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    def handshake(trusted: object, name: str) -> bytes:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            def serve() -> None:
                conn, _ = listener.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass

            thread = threading.Thread(target=serve)
            thread.start()
            try:
                client_ctx = ssl.create_default_context(cafile=str(trusted))
                with socket.create_connection(listener.getsockname()) as raw, \
                        client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                    return tls.recv(2)
            finally:
                thread.join(5)

    assert handshake(ca, "a.svc.example.com") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(make_ca(tmp_path / "other"), "svc.example.com")  # another CA
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca, "elsewhere.example.com")  # a name the certificate does not carry
