"""`knotwork apply` / `knotwork delete` as a user runs them: a subprocess."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from config_helpers import write

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: 3}}]}]
"""


def knotwork(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knotwork", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_bad_file_exits_2_with_the_problem_lines(mesh_dir):
    write(mesh_dir / "bad.yaml", VS)
    done = knotwork("apply", "-f", "bad.yaml", "--mesh", str(mesh_dir), cwd=mesh_dir)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "bad.yaml: VirtualService/default/reviews: spec.http[0].route[0].destination.host: expected a string, got 3"]


def test_not_running_exits_1_with_one_line(mesh_dir):
    write(mesh_dir / "good.yaml", VS.replace("host: 3", "host: reviews"))
    for command in ("apply", "delete"):
        done = knotwork(command, "-f", str(mesh_dir / "good.yaml"), "--mesh", str(mesh_dir))
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"knotwork {command}: the mesh is not running"), lines


@pytest.mark.anyio
async def test_apply_and_delete_against_a_running_source(run_source, mesh_dir):
    good = write(mesh_dir / "good.yaml", VS.replace("host: 3", "host: reviews"))
    write(mesh_dir / "config" / "taken.yaml", VS.replace("host: 3", "host: reviews").replace("name: reviews", "name: taken"))
    async with run_source() as running:
        await running.until(lambda s: True)
        cmd = [sys.executable, "-m", "knotwork"]
        done = await anyio.run_process([*cmd, "apply", "-f", str(good), "-n", "shop", "--mesh", str(mesh_dir)],
                                       check=False)
        assert (done.returncode, done.stdout.decode()) == (0, "VirtualService/shop/reviews created\n"), done.stderr
        await running.until(lambda s: running.names() == ["VirtualService/default/taken", "VirtualService/shop/reviews"])
        taken = mesh_dir / "config" / "taken.yaml"
        done = await anyio.run_process([*cmd, "apply", "-f", str(taken), "--mesh", str(mesh_dir)], check=False)
        assert done.returncode == 2 and b"defined both in config/taken.yaml:1 and by knotwork apply" in done.stderr
        done = await anyio.run_process([*cmd, "delete", "-f", str(good), "-n", "shop", "--mesh", str(mesh_dir)],
                                       check=False)
        assert (done.returncode, done.stdout.decode()) == (0, "VirtualService/shop/reviews deleted\n"), done.stderr
        await running.until(lambda s: running.names() == ["VirtualService/default/taken"])
