"""The `files` component under anyio: config/ watching, apply/delete over the real socket, persistence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from knotwork_config.commands import NotRunning, call

from config_helpers import write

pytestmark = pytest.mark.anyio

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}], timeout: %s}]
"""


def vs(name: str = "web", timeout: str = "3s") -> str:
    return (VS % (name, timeout)).lstrip("\n")


async def test_first_snapshot_is_pushed_at_once_even_empty(run_source, mesh_dir):
    async with run_source() as running:
        snap = await running.until(lambda s: True)
        assert (snap.platform, snap.version, snap.resources, snap.synced) == ("files", 1, (), True)
        mode = stat.S_IMODE(os.stat(mesh_dir / ".knotwork" / "config.sock").st_mode)
        assert mode == 0o600


async def test_config_files_are_read_recursively_and_watched(run_source, mesh_dir):
    write(mesh_dir / "config" / "a.yaml", vs("a"))
    async with run_source() as running:
        snap = await running.until(lambda s: True)
        assert [str(r) for r in snap.resources] == ["VirtualService/default/a"]
        assert str(snap.resources[0].source) == "config/a.yaml:1"
        write(mesh_dir / "config" / "team" / "b.yml", vs("b"))
        await running.until(lambda s: len(s.resources) == 2)
        write(mesh_dir / "config" / "a.yaml", vs("a", "1m"))
        snap = await running.until(lambda s: s.resources[0].spec["http"][0]["timeout"] == "1m")
        assert running.names() == ["VirtualService/default/a", "VirtualService/default/b"]
        (mesh_dir / "config" / "team" / "b.yml").unlink()
        await running.until(lambda s: len(s.resources) == 1)


async def test_a_bad_edit_keeps_the_previous_content(run_source, mesh_dir, capture_logs):
    path = write(mesh_dir / "config" / "a.yaml", vs("a", "2s"))
    async with running_ctx(run_source) as running:
        await running.until(lambda s: len(s.resources) == 1)
        version = running.latest.version
        write(path, vs("a", "2s") + "---\n" + vs("c", "three seconds"))
        await wait_for_log(running, capture_logs, "config file rejected; its previous content stays in force")
        write(mesh_dir / "config" / "z.yaml", vs("z"))  # a later good change still goes through
        snap = await running.until(lambda s: len(s.resources) == 2)
        assert snap.version == version + 1
        assert [str(r) for r in snap.resources] == ["VirtualService/default/a", "VirtualService/default/z"]
        assert snap.resources[0].spec["http"][0]["timeout"] == "2s"
        assert [source for source, _ in running.rejections] == ["files"]  # counted once, by the control plane
    rejected = [e for e in capture_logs if e["event"].startswith("config file rejected")]
    assert rejected[0]["plugin"] == "config" and rejected[0]["log_level"] == "error"
    assert rejected[0]["problem"] == ("config/a.yaml: VirtualService/default/c: spec.http[0].timeout: expected a "
                                      "duration such as '0.5s', '3s' or '1m', got 'three seconds'")


def running_ctx(run_source):
    return run_source()


async def wait_for_log(running, logs, event, timeout=3.0):
    import anyio

    with anyio.fail_after(timeout):
        while not any(e["event"] == event for e in logs):
            await anyio.sleep(0.02)


async def test_two_config_files_defining_one_resource(run_source, mesh_dir, capture_logs):
    write(mesh_dir / "config" / "a.yaml", vs("web"))
    write(mesh_dir / "config" / "b.yaml", vs("web", "1s"))
    async with run_source() as running:
        snap = await running.until(lambda s: True)
        assert [str(r.source) for r in snap.resources] == ["config/a.yaml:1"]
    assert [e["problem"] for e in capture_logs if "problem" in e] == [
        "config/b.yaml: VirtualService/default/web: metadata.name: expected each resource in one place, got it "
        "defined both in config/b.yaml:1 and in config/a.yaml:1"]


async def test_apply_delete_round_trip_survives_a_restart(run_source, mesh_dir, tmp_path):
    state = mesh_dir / ".knotwork"
    async with run_source() as running:
        await running.until(lambda s: True)
        reply = await call(state, {"method": "apply", "text": vs("web") + "---\n" + vs("api"), "file": "vs.yaml"})
        assert reply == {"outcome": {"VirtualService/default/web": "created", "VirtualService/default/api": "created"},
                         "version": 2}
        snap = await running.until(lambda s: s.version == 2)
        assert [str(r) for r in snap.resources] == ["VirtualService/default/web", "VirtualService/default/api"]
        assert str(snap.resources[1].source) == "vs.yaml:8"
        reply = await call(state, {"method": "apply", "text": vs("web", "1s"), "file": "vs.yaml", "namespace": "default"})
        assert reply["outcome"] == {"VirtualService/default/web": "configured"}
        reply = await call(state, {"method": "apply", "text": vs("web", "1s"), "file": "vs.yaml"})
        assert reply == {"outcome": {"VirtualService/default/web": "unchanged"}, "version": 3}
    assert (state / "applied" / "resources.json").exists()

    async with run_source() as running:  # a new component: the applied resources are back
        snap = await running.until(lambda s: True)
        assert [str(r) for r in snap.resources] == ["VirtualService/default/web", "VirtualService/default/api"]
        assert snap.resources[0].spec["http"][0]["timeout"] == "1s"
        reply = await call(state, {"method": "delete", "text": vs("api"), "file": "vs.yaml"})
        assert reply["outcome"] == {"VirtualService/default/api": "deleted"}
        await running.until(lambda s: running.names() == ["VirtualService/default/web"])
        reply = await call(state, {"method": "delete", "text": vs("api"), "file": "vs.yaml"})
        assert reply == {"problems": ["vs.yaml: VirtualService/default/api: metadata.name: expected an applied "
                                      "resource, got one that is not applied (not found)"]}

    async with run_source() as running:
        await running.until(lambda s: True)
        assert running.names() == ["VirtualService/default/web"]


async def test_a_bad_apply_is_refused_whole(run_source, mesh_dir):
    async with run_source() as running:
        await running.until(lambda s: True)
        reply = await call(mesh_dir / ".knotwork", {"method": "apply", "file": "x.yaml",
                                                    "text": vs("good") + "---\n" + vs("bad", "3")})
        assert reply == {"problems": ["x.yaml: VirtualService/default/bad: spec.http[0].timeout: expected a duration "
                                      "such as '0.5s', '3s' or '1m', got 3"]}
        assert running.latest.version == 1 and running.source.store.resources() == ()
        assert running.rejections == [("files", reply["problems"])]


async def test_conflict_between_config_and_apply_names_both(run_source, mesh_dir):
    write(mesh_dir / "config" / "web.yaml", vs("web"))
    async with run_source() as running:
        await running.until(lambda s: len(s.resources) == 1)
        reply = await call(mesh_dir / ".knotwork", {"method": "apply", "text": vs("web", "1s"), "file": "mine.yaml"})
        assert reply == {"problems": ["mine.yaml: VirtualService/default/web: metadata.name: expected each resource "
                                      "in one place, got it defined both in config/web.yaml:1 and by knotwork apply "
                                      "(mine.yaml:1)"]}
        reply = await call(mesh_dir / ".knotwork", {"method": "delete", "text": vs("web"), "file": "mine.yaml"})
        assert reply["problems"] == ["mine.yaml: VirtualService/default/web: metadata.name: expected an applied "
                                     "resource, got one defined in config/web.yaml:1 (edit or remove that file "
                                     "instead)"]
        # the other way round: a config/ file redefining an applied resource is refused, the apply stays
        await call(mesh_dir / ".knotwork", {"method": "apply", "text": vs("api"), "file": "mine.yaml"})
        await running.until(lambda s: len(s.resources) == 2)
        write(mesh_dir / "config" / "api.yaml", vs("api", "9s"))
        write(mesh_dir / "config" / "zz.yaml", vs("zz"))
        snap = await running.until(lambda s: len(s.resources) == 3)
        assert [str(r.source) for r in snap.resources] == ["config/web.yaml:1", "config/zz.yaml:1", "mine.yaml:1"]


async def test_call_without_a_running_source(tmp_path: Path):
    with pytest.raises(NotRunning, match="no config socket"):
        await call(tmp_path, {"method": "list"})
    (tmp_path / "config.sock").write_text("")  # a stale file, nobody listening
    with pytest.raises(NotRunning):
        await call(tmp_path, {"method": "list"})
