"""The mesh model: names, hosts, port protocols, identities (knotwork.model)."""

from __future__ import annotations

import attrs
import pytest

from knotwork.model import Identity, MeshSettings, Protocol, Service, ServicePort, port_protocol, resolve_host
from knotwork.testing import make_service


def test_service_fqdn_and_port():
    svc = Service("reviews", "prod", (ServicePort(9080, "http"),))
    assert svc.fqdn() == "reviews.prod.svc.cluster.local"
    assert svc.fqdn("example.org") == "reviews.prod.svc.example.org"
    assert svc.port(9080).name == "http"
    assert svc.port(1) is None


def test_model_records_are_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        make_service().name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("host", "namespace", "expected"), [
    ("reviews", "default", "reviews.default.svc.cluster.local"),
    ("reviews", "prod", "reviews.prod.svc.cluster.local"),
    ("reviews.prod", "default", "reviews.prod"),  # Istio: only a dotless name is short
    ("reviews.prod.svc.cluster.local", "default", "reviews.prod.svc.cluster.local"),
    ("Reviews.Prod.svc.cluster.local.", "default", "reviews.prod.svc.cluster.local"),
    ("api.example.com", "default", "api.example.com"),
    ("*", "default", "*"),
    ("*.example.com", "default", "*.example.com"),
    ("  ratings ", "default", "ratings.default.svc.cluster.local"),
])
def test_resolve_host(host, namespace, expected):
    assert resolve_host(host, namespace) == expected


def test_resolve_host_with_another_domain():
    assert resolve_host("reviews", "prod", "mesh.internal") == "reviews.prod.svc.mesh.internal"
    assert resolve_host("reviews.prod.svc.mesh.internal", "default", "mesh.internal") == "reviews.prod.svc.mesh.internal"


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"name": "http"}, Protocol.HTTP),
    ({"name": "http-web"}, Protocol.HTTP),
    ({"name": "http2-api"}, Protocol.HTTP2),
    ({"name": "grpc"}, Protocol.GRPC),
    ({"name": "grpc-ratings"}, Protocol.GRPC),
    ({"name": "grpc-web"}, Protocol.HTTP2),
    ({"name": "tcp-db"}, Protocol.TCP),
    ({"name": "tls-passthrough"}, Protocol.TLS),
    ({"name": "https"}, Protocol.TLS),
    ({"name": "mongo"}, Protocol.TCP),
    ({"name": "HTTP-upper"}, Protocol.HTTP),
    ({"name": "web"}, Protocol.UNKNOWN),
    ({"name": "httpx"}, Protocol.UNKNOWN),
    ({}, Protocol.UNKNOWN),
    ({"name": "tcp-x", "protocol": "HTTP"}, Protocol.HTTP),  # an explicit protocol beats the name
    ({"name": "http", "protocol": "TCP", "app_protocol": "grpc"}, Protocol.GRPC),  # appProtocol wins
    ({"name": "http", "app_protocol": "bogus"}, Protocol.HTTP),  # an unknown appProtocol falls through
])
def test_port_protocol(kwargs, expected):
    assert port_protocol(**kwargs) is expected


def test_protocol_is_http():
    assert [p for p in Protocol if p.is_http] == [Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC]


def test_identity_spiffe_round_trip():
    ident = Identity("cluster.local", "default", "bookinfo-reviews")
    assert ident.spiffe_id == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert str(ident) == ident.spiffe_id
    assert Identity.parse(ident.spiffe_id) == ident


@pytest.mark.parametrize(("text", "message"), [
    ("http://cluster.local/ns/default/sa/x", "not a SPIFFE ID"),
    ("cluster.local/ns/default/sa/x", "not a SPIFFE ID"),
    ("spiffe://cluster.local/ns/default", "not a Kubernetes-style SPIFFE ID"),
    ("spiffe://cluster.local/sa/x/ns/default", "not a Kubernetes-style SPIFFE ID"),
    ("spiffe:///ns/default/sa/x", "not a Kubernetes-style SPIFFE ID"),
    ("spiffe://cluster.local/ns/default/sa/x/extra", "not a Kubernetes-style SPIFFE ID"),
])
def test_identity_parse_errors(text, message):
    with pytest.raises(ValueError, match=message) as info:
        Identity.parse(text)
    assert repr(text) in str(info.value)


def test_mesh_settings_root_namespace():
    mesh = MeshSettings()
    assert mesh.is_root_namespace("knotwork-system")
    assert mesh.is_root_namespace("istio-system")  # the Istio alias
    assert not mesh.is_root_namespace("default")


def test_resource_errors_name_plugin_resource_file_and_field():
    from knotwork.model import Resource, ResourceError, SourceRef, WarnOnce, field_path

    class MyError(ResourceError):
        plugin = "tenant"

    res = Resource("x/v1", "Quota", "q", "team-a", source=SourceRef("config/q.yaml", 3))
    err = MyError(res, field_path("spec", "limits", 0, "rps"), "expected a number, got 'many'")
    assert isinstance(err, ValueError) and (err.resource, err.field) == (res, "spec.limits[0].rps")
    assert str(err) == "plugin/tenant: Quota/team-a/q (config/q.yaml:3): spec.limits[0].rps: expected a number, got 'many'"

    class Log:
        def __init__(self):
            self.events = []

        def warning(self, event, **fields):
            self.events.append((event, fields["field"]))

    log = Log()
    warn = WarnOnce(log, limit=2)
    for field in ("a", "a", "b", "a", "c", "a"):
        warn(res, field)
    # once per field; past the limit the memory starts again rather than growing
    assert [f for _, f in log.events] == ["a", "b", "c", "a"]
