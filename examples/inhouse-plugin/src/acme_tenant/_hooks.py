"""Hook implementations of the `tenant` plugin (entry point ``tenant`` in group ``knotwork``)."""

from __future__ import annotations

from knotwork import Compiler, Strategy, hookimpl

from .authorizer import TenantAuthorizer
from .compiler import NAME, mark_inbound_listeners
from .settings import TenantSettings


@hookimpl
def knotwork_authorizers() -> list[Strategy]:
    """The `tenant` authorizer; only the native engine runs Python authorizers in-process."""
    return [
        Strategy(
            name=NAME,
            factory=TenantAuthorizer,
            settings=TenantSettings,
            description="allow requests whose tenant header names an allowed tenant",
            engines=frozenset({"native"}),
        )
    ]


@hookimpl
def knotwork_compilers() -> list[Compiler]:
    """Mark inbound listeners' authorization chain with `tenant`."""
    return [
        Compiler(
            name="tenant-authz",
            area="extensions",
            slots=frozenset({"listeners.authz"}),
            compile=mark_inbound_listeners,
            description="append `tenant` to inbound listeners' authz chain",
        )
    ]
