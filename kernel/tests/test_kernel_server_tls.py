"""Listener TLS in the compiled config: ServerTls chains name secrets that must exist,
and secrets are subscribed by name, as Envoy's SDS does (knotwork.proxyconfig, knotwork.distribution)."""

from __future__ import annotations

import pytest

from knotwork.distribution import AdsSession, DiscoveryRequest
from knotwork.proxyconfig import (
    Cluster, ConsistencyError, EndpointSet, Listener, ProxySnapshot, Redirect, RouteTable, Secret, ServerTls, wire,
)


def gateway(*chains: ServerTls) -> Listener:
    return Listener("gateway|443", "127.0.0.1", 8443, "gateway", route_table="gateway|443", server_tls=chains)


def test_a_listener_naming_a_missing_secret_is_inconsistent():
    chains = (ServerTls("cert-a", ("a.example.com",)), ServerTls("cert-b", ("b.example.com",), client_ca="ca-b"))
    with pytest.raises(ConsistencyError) as err:
        ProxySnapshot.build([gateway(*chains), RouteTable("gateway|443"), Secret("cert-a", "C", "K")]).check()
    assert "listener 'gateway|443' references missing secret 'ca-b'" in str(err.value)
    assert "'cert-b'" in str(err.value)
    snap = ProxySnapshot.build([gateway(*chains), RouteTable("gateway|443"), Secret("cert-a", "C", "K"),
                                Secret("cert-b", "C", "K"), Secret("ca-b", trust_bundle="CA")])
    snap.check()


def test_server_tls_and_redirect_round_trip_on_the_wire():
    lis = gateway(ServerTls("c", ("*.example.com",), "ca", "1.2", "1.3"))
    assert wire.structure(wire.unstructure(lis), Listener) == lis
    redirect = Redirect(host="a", scheme="https", port=0)
    assert wire.structure(wire.unstructure(redirect), Redirect) == redirect


def test_secrets_are_requested_by_name():
    snap = ProxySnapshot.build([Secret("a", "C", "K"), Secret("b", "C", "K"), Cluster("x"), EndpointSet("x")])
    session = AdsSession("n")
    assert session.on_request(DiscoveryRequest("secrets", resource_names=("a",))) == "subscribe"
    (push,) = session.plan(snap)
    assert set(push.resources) == {"a"}
    # a listener now names "b" too: Envoy asks again with both names and is owed a reply
    assert session.on_request(DiscoveryRequest("secrets", push.version, push.nonce, ("a", "b"))) == "subscribe"
    (reply,) = session.plan(snap)
    assert (set(reply.resources), reply.changed) == ({"a", "b"}, ("b",))


def test_a_proxy_asking_for_no_names_gets_every_secret():
    snap = ProxySnapshot.build([Secret("a", "C", "K"), Secret("b", "C", "K")])
    session = AdsSession("n")
    session.on_request(DiscoveryRequest("secrets"))
    (push,) = session.plan(snap)
    assert set(push.resources) == {"a", "b"}
