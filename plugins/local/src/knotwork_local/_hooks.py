"""Hook implementations of the `local` plugin.

The platform component is imported when the control plane builds it, each
command's implementation when it runs, and the credential book when a proxy
asks for its first certificate: every `knotwork` command loads this module.
"""

from __future__ import annotations

from knotwork import Component, hookimpl, lazy

from .commands import COMMANDS
from .settings import LocalSettings


@hookimpl
def knotwork_platforms():
    return [Component(
        name="local", factory=lazy("knotwork_local.platform:LocalPlatform"), settings=LocalSettings,
        description="workloads as processes on this machine (`knotwork up`), discovered from up's state socket",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS


@hookimpl
def knotwork_attest_workload(claim):
    """Redeem a `local` proxy's one-time bootstrap credential (see `knotwork_local.credentials`).

    Runs in the control plane, whose LocalPlatform component keeps the book of
    the credentials `up` announced; other platforms' claims are not ours (None).
    """
    if claim.platform != "local":
        return None
    from .credentials import attest

    return attest(claim)
