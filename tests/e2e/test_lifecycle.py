"""Lifecycle of a local mesh: readiness gates traffic; stopping leaves nothing behind."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import httpx
import pytest

from .harness import RunningMesh, alive, wait_for

ECHO = Path(__file__).parent / "meshes" / "echo"


@pytest.fixture
def echo(engine: str, tmp_path: Path):
    mesh = RunningMesh(ECHO, tmp_path, "--engine", engine)
    try:
        yield mesh
    finally:
        mesh.kill_everything()


def _spread(mesh: RunningMesh, n: int) -> collections.Counter:
    with httpx.Client(timeout=10) as client:
        return collections.Counter(client.get(f"{mesh.url}/").text for _ in range(n))


def test_unready_workload_gets_no_traffic_until_ready(echo: RunningMesh) -> None:
    wait_for(lambda: echo.instance("web-a-1")["ready"] and echo.state()["gateway"]["ready"], 60, "web-a ready")
    wait_for(lambda: echo.instance("web-b-1")["running"], 30, "web-b started")
    assert not echo.instance("web-b-1")["ready"]
    assert _spread(echo, 20) == {"web-a-1": 20}

    (echo.dir / "web-b.ready").touch()
    wait_for(lambda: echo.instance("web-b-1")["ready"], 20, "web-b ready once its probe passes")
    wait_for(lambda: _spread(echo, 10).get("web-b-1", 0) >= 4, 10, "web-b to get its share of traffic")


def test_ctrl_c_leaves_no_process_within_5s(echo: RunningMesh) -> None:
    (echo.dir / "web-b.ready").touch()
    echo.wait_ready()
    pids = echo.pids()
    assert len(pids) == 7 and all(alive(p) for p in pids)  # up, control, gateway, 2 apps, 2 sidecars
    took = echo.stop(signal.SIGINT)
    assert took < 5, took
    wait_for(lambda: not any(alive(p) for p in pids), 1, "every child gone")


def test_sigkill_of_up_takes_the_children_down(echo: RunningMesh) -> None:
    (echo.dir / "web-b.ready").touch()
    echo.wait_ready()
    pids = echo.pids()
    echo.proc.kill()
    echo.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in pids), 5, "children to notice their parent died")
