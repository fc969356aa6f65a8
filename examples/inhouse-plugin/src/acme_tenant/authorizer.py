"""The per-request part: a plain object the proxy engine calls, never a hook."""

from __future__ import annotations

from typing import Any

from knotwork.protocols import Decision, RequestView

from .settings import TenantSettings


class TenantAuthorizer:
    """Allow a request only when its tenant header names an allowed tenant.

    Built once per listener by the engine (``factory(listener, settings)``);
    :meth:`authorize` runs per request, so it only does a dict lookup and a
    set membership test — no logging, no allocation.
    """

    __slots__ = ("_allowed", "_header")

    def __init__(self, listener: Any, settings: TenantSettings) -> None:
        self._header = settings.header
        self._allowed = frozenset(settings.allowed)

    def authorize(self, request: RequestView) -> Decision:
        """DENY when the header is missing or names a tenant not allowed, else ALLOW."""
        tenant = request.header(self._header)
        return Decision.ALLOW if tenant is not None and tenant in self._allowed else Decision.DENY
