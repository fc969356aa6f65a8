"""One envoy sidecar or gateway: the agent process of `knotwork proxy --engine envoy`.

It runs Envoy (:class:`~knotwork_envoy.agent.EnvoyAgent`) and serves the
same admin endpoint as a native proxy on ``127.0.0.1:<admin-port>``:

- ``GET /ready`` → 200 ``LIVE`` once Envoy has accepted its first config, else 503;
- ``GET /status`` → JSON: ``ready``, ``clusters``, ``min_clusters_since_ready``,
  ``node``, ``control_connected``, listeners, in-flight requests, Envoy's pid…;
- ``GET /config_dump``, ``/stats``, ``/clusters``, ``/listeners`` → Envoy's
  own admin answers (query strings passed on; a bare ``/config_dump``
  includes the endpoints, as a native proxy's does);
- ``GET /stats/prometheus`` → the agent's Prometheus registry (the metrics
  the telemetry sinks keep, fed from Envoy's access log) followed by Envoy's
  own ``/stats/prometheus``;
- ``GET /identity`` → JSON: the workload identity's status (SPIFFE ID,
  serial, validity, chain, renewals, last error); 404 ``{"identity": null}``
  without one;
- ``POST /drain`` → starts draining (answers 202).

With a certificate service (``--ca``) the agent first gets the proxy's SVID
(its key stays in this process), then starts Envoy, which gets the SVID and
the trust bundle from the agent over SDS, renewed ones pushed on rotation.

On stop it drains (inbound and gateway listeners, in-flight requests up to
the drain timeout), then stops Envoy.
"""

from __future__ import annotations

import anyio
import anyio.abc
import structlog
from anyio.abc import TaskStatus
from knotwork.records import ProxyContext

from .agent import EnvoyAgent
from .httpio import AdminHttpServer, Reply, json_reply, text_reply
from .settings import EnvoySettings

__all__ = ["EnvoyProxy"]

log = structlog.get_logger("knotwork.envoy.proxy").bind(plugin="envoy")
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
PASSED_ON = frozenset({"/config_dump", "/stats", "/clusters", "/listeners", "/server_info", "/memory", "/certs"})


class EnvoyProxy:
    """The `knotwork proxy --engine envoy` component."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        settings = ctx.settings if isinstance(ctx.settings, EnvoySettings) else EnvoySettings()
        self.identity = ctx.workload_identity()
        self.agent = EnvoyAgent(ctx, settings, secrets=self.identity is not None)
        self.admin = AdminHttpServer(ctx.admin_port, self.handle)
        self._draining = False
        self._tg: anyio.abc.TaskGroup | None = None

    def status(self) -> dict:
        return {"node": self.ctx.node_id, "node_id": self.ctx.node_id, "engine": "envoy",
                "control_address": self.ctx.control_address,
                "identity": None if self.identity is None else self.identity.spiffe_id, **self.agent.status()}

    async def handle(self, method: str, target: str) -> Reply:
        path, _, query = target.partition("?")
        if path == "/drain":
            if method != "POST":
                return text_reply(405, "use POST\n")
            if not self._draining and self._tg is not None:
                self._draining = True
                self._tg.start_soon(self.agent.drain, self.ctx.drain_timeout)
            return text_reply(202, "draining\n")
        if method not in ("GET", "HEAD"):
            return text_reply(405, "use GET\n")
        if path == "/ready":
            return text_reply(200, "LIVE\n") if self.agent.ready else text_reply(503, "PRE_INITIALIZING\n")
        if path == "/identity":
            if self.identity is None:
                return json_reply(404, {"identity": None})
            return json_reply(200, self.identity.status())
        if path == "/status":
            if self.agent.admin_port is not None:
                await self.agent.sample()
            return json_reply(200, self.status())
        if path == "/stats/prometheus":
            return await self.prometheus(query)
        if path in PASSED_ON:
            if target == "/config_dump":
                target += "?include_eds"  # endpoints too, as a native proxy's dump has them
            try:
                status, body = await self.agent.admin("GET", target, timeout=5.0)
            except (OSError, TimeoutError) as exc:
                return text_reply(503, f"envoy's admin API is not answering: {exc!r}\n")
            ctype = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
            return status, body, ctype
        return text_reply(404, f"admin endpoints: /ready /status /identity /drain /stats/prometheus "
                               f"{' '.join(sorted(PASSED_ON))}\n")

    async def prometheus(self, query: str) -> Reply:
        """The agent's registry (the sinks' metrics), then Envoy's own stats, in Prometheus text."""
        from prometheus_client import REGISTRY, generate_latest

        ours = generate_latest(REGISTRY)
        try:
            status, envoy = await self.agent.admin("GET", "/stats/prometheus" + (f"?{query}" if query else ""), timeout=5.0)
        except (OSError, TimeoutError) as exc:
            log.debug("envoy's prometheus stats not available", error=repr(exc))
            status, envoy = 503, b""
        if status != 200:
            envoy = b""
        if ours and not ours.endswith(b"\n"):
            ours += b"\n"
        return 200, ours + envoy, PROMETHEUS

    async def _run_envoy(self) -> None:
        """Get the first SVID (with an identity), then run Envoy."""
        if self.identity is not None and self._tg is not None:
            secrets = self.agent.secrets
            assert secrets is not None
            await self._tg.start(self.identity.run)
            secrets.update(self.identity.svid)
            self.identity.on_change(secrets.update)
        await self.agent.run()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.agent.secret_service():  # outlives Envoy: it keeps its handshakes working while draining
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    await self.admin.start()
                    tg.start_soon(self._run_envoy)
                    log.info("proxy started", node=self.ctx.node_id, admin_port=self.admin.port,
                             control=self.ctx.control_address, identity=self.ctx.identity if self.identity else None)
                    task_status.started()
            finally:
                with anyio.CancelScope(shield=True):
                    log.info("draining", timeout=self.ctx.drain_timeout)
                    await self.agent.stop(self.ctx.drain_timeout)
                    await self.admin.aclose()
                    log.info("proxy stopped")
