"""Restart backoff, exit descriptions, probes and children dying with their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import anyio
import pytest

from knotwork_local.process import Backoff, describe_exit, http_status, tcp_open
from knotwork_local.state import pid_alive


def test_backoff_doubles_to_ten_seconds_and_resets_after_a_long_run():
    b = Backoff()
    assert [b.next_delay(0.1) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.next_delay(10.0) == 0.5
    assert b.next_delay(3.0) == 1.0


def test_describe_exit():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(None) == "running"


@pytest.mark.anyio
async def test_probes_against_a_tiny_http_server():
    async def handle(stream):
        async with stream:
            request = await stream.receive()
            code = b"200" if request.startswith(b"GET /ok ") else b"503"
            await stream.send(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        assert await http_status(port, "/ok") == 200
        assert await http_status(port, "/nope") == 503
        assert await tcp_open(port)
        tg.cancel_scope.cancel()
    assert await http_status(port, "/ok", timeout=0.5) is None
    assert not await tcp_open(port, timeout=0.5)


PARENT = textwrap.dedent("""
    import asyncio, pathlib, sys
    from knotwork_local.process import spawn

    async def main():
        proc = await spawn([sys.executable, "-c", "import time; time.sleep(60)"], env={}, cwd=pathlib.Path("."),
                           log_path=pathlib.Path(sys.argv[1]))
        print(proc.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_child_dies_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert os.getpgid(child) == child  # its own process group: Ctrl-C reaches only the parent
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not pid_alive(child):  # gone, or a zombie waiting for init to reap it
                break
            time.sleep(0.02)
        else:
            os.kill(child, 9)
            pytest.fail("the child outlived its SIGKILLed parent")
    finally:
        parent.kill()
