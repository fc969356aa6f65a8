"""knotwork.wire: the JSON codec over real grpclib, and `serving` on TCP and on a private unix socket."""

from __future__ import annotations

import stat

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.server import Server

from knotwork.wire import JSONCodec, JsonService, serving, unary

METHOD = "/test.v1.Echo/Call"


async def call(channel: Channel, request: dict) -> dict:
    async with channel.request(METHOD, Cardinality.UNARY_UNARY, dict, dict) as stream:
        await stream.send_message(request, end=True)
        return await stream.recv_message()


async def echo(request: dict) -> dict:
    return {"echo": request}


def echo_server() -> Server:
    return Server([JsonService({METHOD: unary(echo)})], codec=JSONCodec())


@pytest.mark.anyio
async def test_serving_on_tcp_yields_the_bound_port_and_closes():
    async with serving(echo_server(), listen=("127.0.0.1", 0)) as (host, port):
        assert host == "127.0.0.1" and port > 0
        channel = Channel(host, port, codec=JSONCodec())
        with anyio.fail_after(5):
            assert await call(channel, {"a": 1}) == {"echo": {"a": 1}}
        channel.close()
    with pytest.raises(OSError):
        await anyio.connect_tcp(host, port)


@pytest.mark.anyio
async def test_serving_on_a_unix_socket_is_private_replaces_a_stale_file_and_removes_it(tmp_path):
    path = tmp_path / "state" / "admin.sock"
    path.parent.mkdir()
    path.write_text("stale")
    async with serving(echo_server(), path=path) as bound:
        assert bound == path
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        channel = Channel(path=str(path), codec=JSONCodec())
        with anyio.fail_after(5):
            assert await call(channel, {"b": 2}) == {"echo": {"b": 2}}
        channel.close()
    assert not path.exists()
