"""The native proxy's workload identity: first SVID before the config stream, the config stream over
mTLS, node-id spoofing refused by the distribution server, and ``GET /identity`` on the admin port.

Everything real on 127.0.0.1: the kernel's certificate service with a test CA, the engine's
distribution server (grpclib, TLS) fed from a SnapshotCache, and whole NativeProxy processes' parts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from knotwork.distribution import SnapshotCache
from knotwork.model import MeshSettings
from knotwork.proxyconfig import ProxySnapshot
from knotwork.records import ComponentContext
from knotwork.testing import make_ca

from test_dataplane_support import Upstream, http_listener, make_ctx, one_route, resources, running, wait_for
from test_mtls_support import mesh_ca, sa
from knotwork_native.proxy import NativeProxy
from knotwork_native.server import NativeServer

pytestmark = pytest.mark.anyio
A, B = sa("a"), sa("b")
RUNS_AS = {"node-a": A, "node-b": B}


def authorize(node_id: str, peer_id: str | None) -> str | None:
    """As the control plane's: a node's config only for the identity it runs as."""
    if peer_id is None:
        return "no client certificate: the config stream needs the proxy's SVID"
    if RUNS_AS.get(node_id) != peer_id:
        return f"node {node_id!r} runs as {RUNS_AS.get(node_id)}, not {peer_id}"
    return None


def snapshot(app: Upstream) -> ProxySnapshot:
    res = resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})
    return ProxySnapshot.build([r for by_name in res.values() for r in by_name.values()])


def admin_get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_proxy_gets_its_svid_then_streams_its_config_over_mtls_and_spoofing_is_refused(tmp_path: Path):
    root = make_ca(tmp_path / "root")
    app = Upstream("app")
    async with running(app), mesh_ca(root, tmp_path / "state") as ca, anyio.create_task_group() as tg:
        cache = SnapshotCache()
        snap = snapshot(app)
        for node in RUNS_AS:
            cache.set(node, snap)
        cache.notify()
        options = {"listen": "127.0.0.1:0", "ssl": ca.server.server_tls(require_client=True), "authorize": authorize}
        server = NativeServer(ComponentContext(MeshSettings(), None, tmp_path, tmp_path, options=options), cache)
        await tg.start(server.run)
        control = "127.0.0.1:%d" % server.address[1]

        good = NativeProxy(ca.proxy_context("node-a", A, control))
        await tg.start(good.run)
        assert good.identity.svid is not None and good.identity.svid.spiffe_id == A
        with anyio.fail_after(10):
            while not good.dataplane.ready:
                await anyio.sleep(0.01)
        assert good.client.status()["control_mtls"] is True
        assert cache.connected["node-a"] == 1
        status, body = await anyio.to_thread.run_sync(admin_get, good.admin.port, "/identity")
        assert status == 200 and body["identity"] == A and body["serial"] == format(good.identity.svid.serial, "x")
        assert body["chain"][0]["spiffe_ids"] == [A]

        # node-b's config asked for with node-a's SVID (a credential for that pair): refused, and said why
        spoof = NativeProxy(ca.proxy_context("node-b", A, control))
        await tg.start(spoof.run)
        await wait_for(lambda: spoof.client.refusals >= 2, timeout=10, what="the stream to be refused (twice: retried)")
        assert spoof.client.last_error == f"PERMISSION_DENIED: node 'node-b' runs as {B}, not {A}"
        assert not spoof.dataplane.ready and server.refused >= 2
        assert cache.connected.get("node-b", 0) == 0
        tg.cancel_scope.cancel()


async def test_without_a_certificate_service_everything_is_plaintext(tmp_path: Path):
    app = Upstream("app")
    async with running(app), anyio.create_task_group() as tg:
        cache = SnapshotCache()
        cache.set("node-a", snapshot(app))
        cache.notify()
        server = NativeServer(ComponentContext(MeshSettings(), None, tmp_path, tmp_path), cache)
        await tg.start(server.run)
        proxy = NativeProxy(attrs.evolve(make_ctx(), node_id="node-a", control_address="127.0.0.1:%d" % server.address[1]))
        assert proxy.identity is None
        await tg.start(proxy.run)
        await wait_for(lambda: proxy.dataplane.ready, timeout=10, what="the config")
        status, body = await anyio.to_thread.run_sync(admin_get, proxy.admin.port, "/identity")
        assert status == 404 and body == {"identity": None}
        tg.cancel_scope.cancel()


class RecordingServer(NativeServer):
    """The distribution server, noting the serial of every stream's client certificate; `hang_up()`
    ends the streams open now with UNAVAILABLE, as a control plane going away does."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.serials: list[int] = []
        self.scopes: list[anyio.CancelScope] = []

    async def _stream(self, stream: Any) -> None:
        self.serials.append(int(stream.peer.cert()["serialNumber"], 16))
        with anyio.CancelScope() as scope:
            self.scopes.append(scope)
            await super()._stream(stream)
        raise GRPCError(Status.UNAVAILABLE, "the control plane is going away")

    def hang_up(self) -> None:
        for scope in self.scopes:
            scope.cancel()


async def test_a_reconnecting_proxy_presents_its_current_svid(tmp_path: Path):
    """2 s certificates renewed at half: when the stream ends, the proxy comes back with its newer SVID."""
    root = make_ca(tmp_path / "root")
    app = Upstream("app")
    async with running(app), mesh_ca(root, tmp_path / "state", ttl=2) as ca, anyio.create_task_group() as tg:
        cache = SnapshotCache()
        cache.set("node-a", snapshot(app))
        cache.notify()
        options = {"listen": "127.0.0.1:0", "ssl": ca.server.server_tls(require_client=True), "authorize": authorize}
        server = RecordingServer(ComponentContext(MeshSettings(), None, tmp_path, tmp_path, options=options), cache)
        await tg.start(server.run)
        proxy = NativeProxy(ca.proxy_context("node-a", A, "127.0.0.1:%d" % server.address[1]))
        await tg.start(proxy.run)
        await wait_for(lambda: proxy.dataplane.ready, timeout=10, what="the config")
        before = server.serials[0]
        with anyio.fail_after(10):
            while proxy.identity.svid.serial == before:
                await proxy.identity.wait_change()
        server.hang_up()
        await wait_for(lambda: len(server.serials) >= 2, timeout=10, what="the proxy to reconnect")
        assert server.serials[-1] != before
        await wait_for(lambda: proxy.client.connected, timeout=10, what="the stream to be back")
        assert proxy.client.status()["control_connects"] >= 2 and proxy.dataplane.ready
        tg.cancel_scope.cancel()
