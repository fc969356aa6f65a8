"""One native sidecar or gateway process: data plane, admin, config client, workload identity.

With a certificate service (``--ca``) the proxy first gets its SVID
(:class:`~knotwork.identity.WorkloadIdentity`, renewed for as long as it
runs), then subscribes to the control plane over mTLS with it; the data
plane uses it for mesh mTLS and the admin serves its status at
``/identity``. Ready (``/ready`` 200) once the first complete config is
applied. On stop the proxy drains: listeners stop accepting, in-flight
requests get up to the drain timeout, then everything closes.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskStatus
from knotwork.records import ProxyContext

from .admin import AdminServer
from .client import ControlClient
from .dataplane import DataPlane

log = structlog.get_logger("knotwork.native.proxy").bind(plugin="native")


class NativeProxy:
    """The `knotwork proxy --engine native` component."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.identity = ctx.workload_identity()  # None without a certificate service: plaintext everywhere
        self.dataplane = DataPlane(ctx, node_id=ctx.node_id, identity=self.identity)
        self.client = ControlClient(ctx.node_id, ctx.control_address, self.dataplane, identity=self.identity)
        self.admin = AdminServer(ctx.admin_port, self.dataplane, extra=self.status, identity=self.identity)

    def status(self) -> dict:
        return {"node": self.ctx.node_id, **self.client.status()}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await self.admin.start()
                if self.identity is not None:  # the first SVID before the config stream, which needs it
                    log.info("requesting a certificate", identity=self.ctx.identity, ca=self.ctx.ca_address)
                    await tg.start(self.identity.run)
                tg.start_soon(self.client.run)
                log.info("proxy started", node=self.ctx.node_id, admin_port=self.admin.port,
                         identity=self.identity.spiffe_id if self.identity is not None else None)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                log.info("draining", timeout=self.ctx.drain_timeout)
                await self.dataplane.drain(self.ctx.drain_timeout)
                await self.dataplane.aclose()
                await self.admin.aclose()
                log.info("proxy stopped")
