"""The agent's HTTP/1.1 request reader, shared by its admin server and its span collector."""

from __future__ import annotations

import asyncio

import pytest
from knotwork_envoy.httpio import read_request

pytestmark = pytest.mark.anyio


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_request_with_a_content_length_body() -> None:
    reader = _reader(b"POST /api/v2/spans?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n")
    assert await read_request(reader) == ("POST", "/api/v2/spans?x=1", "HTTP/1.1", {"host": "a", "content-length": "5"}, b"hello")
    method, target, _, headers, body = await read_request(reader)  # the next request on the connection
    assert (method, target, headers, body) == ("GET", "/", {}, b"")


async def test_a_chunked_body_is_joined() -> None:
    reader = _reader(b"POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (await read_request(reader))[4] == b"abcde"


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"POST /s HTTP/1.1\r\ncontent-length: 11\r\n\r\nhello world",
    b"POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
])
async def test_a_bad_request_line_or_a_body_over_the_limit_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        await read_request(_reader(data), max_body=10)


async def test_a_peer_that_closes_mid_body() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read_request(_reader(b"POST /s HTTP/1.1\r\ncontent-length: 9\r\n\r\nabc"))
