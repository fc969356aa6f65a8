"""The compile-time part: put `tenant` in every inbound listener's authorization chain."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the kernel's proxy config types are slow to import
    from knotwork.proxyconfig import SnapshotBuilder
    from knotwork.records import CompileInput

NAME = "tenant"


def mark_inbound_listeners(builder: SnapshotBuilder, inp: CompileInput) -> None:
    """Append ``tenant`` to the `authz` chain of the proxy's inbound listeners.

    Runs in the ``extensions`` area, after the networking compiler created the
    listeners. Writes only the slot it declared, ``listeners.authz``, and only
    when the mesh file selects the authorizer (``plugins: {authorizers: [tenant]}``).
    """
    if NAME not in inp.selection.get("authorizers", ()):
        return
    for listener in builder.all("listeners"):
        if listener.mode == "inbound" and NAME not in listener.authz:
            builder.set("listeners", listener.name, "authz", (*listener.authz, NAME))
