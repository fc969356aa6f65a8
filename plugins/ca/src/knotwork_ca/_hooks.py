"""Hook implementations of the `ca` plugin: the certificate authority and `knotwork certs`.

The authority (and cryptography) is imported when the control plane builds
it, and the command's implementation when it runs: every `knotwork` command
loads this module.
"""

from __future__ import annotations

from knotwork import Component, hookimpl, lazy

from .commands import COMMANDS
from .settings import CASettings


@hookimpl
def knotwork_certificate_authorities():
    return [Component(
        name="ca", factory=lazy("knotwork_ca.authority:build"), settings=CASettings, check=lazy("knotwork_ca.authority:check"),
        description="signs workload SVIDs with a self-signed root kept in .knotwork/ca, or a cacerts folder's CA",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
