"""One native sidecar or gateway process: data plane, admin, config client.

Ready (``/ready`` 200) once the first complete config is applied. On stop the
proxy drains: listeners stop accepting, in-flight requests get up to the
drain timeout, then everything closes.
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
        self.dataplane = DataPlane(ctx, node_id=ctx.node_id)
        self.client = ControlClient(ctx.node_id, ctx.control_address, self.dataplane)
        self.admin = AdminServer(ctx.admin_port, self.dataplane, extra=self.status)

    def status(self) -> dict:
        return {"node": self.ctx.node_id, **self.client.status()}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await self.admin.start()
                tg.start_soon(self.client.run)
                log.info("proxy started", node=self.ctx.node_id, admin_port=self.admin.port)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                log.info("draining", timeout=self.ctx.drain_timeout)
                await self.dataplane.drain(self.ctx.drain_timeout)
                await self.dataplane.aclose()
                await self.admin.aclose()
                log.info("proxy stopped")
