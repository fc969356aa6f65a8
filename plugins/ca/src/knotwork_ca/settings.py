"""Settings of the `ca` certificate authority: the `ca:` section of the mesh file.

Durations are numbers of seconds (the kernel's mesh file has no duration
strings). The kernel's ``load_mesh`` structures the section strictly and then
calls :meth:`CASettings.problems` for the cross-field checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

__all__ = ["CASettings", "DAY", "YEAR"]

DAY = 86400.0
YEAR = 365 * DAY


def _positive(_: Any, __: Any, value: float) -> None:
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected seconds > 0, got {value:g}")


def _fraction(_: Any, __: Any, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"expected a fraction between 0 and 1 (exclusive), got {value:g}")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen
class CASettings:
    """Lifetimes of the certificates the CA issues, and where its signing key comes from."""

    workload_cert_ttl: float = attrs.field(default=DAY, validator=_positive, metadata=_help(
        "seconds a workload certificate is valid when the workload asks for no lifetime (default 24 h)"))
    max_workload_cert_ttl: float = attrs.field(default=90 * DAY, validator=_positive, metadata=_help(
        "longest lifetime in seconds a workload may ask for; longer requests are cut (default 90 days)"))
    rotate_at: float = attrs.field(default=0.8, validator=_fraction, metadata=_help(
        "fraction of a certificate's lifetime after which workloads renew it"))
    root_cert_ttl: float = attrs.field(default=10 * YEAR, validator=_positive, metadata=_help(
        "seconds the self-signed root created on first start is valid (default 10 years)"))
    cacerts: Path | None = attrs.field(default=None, metadata=_help(
        "folder with a root or intermediate to sign with (Istio's plug-in CA layout: ca-cert.pem, ca-key.pem, "
        "root-cert.pem, cert-chain.pem), relative to the mesh directory; none: a self-signed root in .knotwork/ca"))

    def problems(self) -> list[tuple[tuple, str]]:
        """Cross-field problems: (path within the section, "expected X, got Y")."""
        if self.workload_cert_ttl > self.max_workload_cert_ttl:
            return [(("workload_cert_ttl",), f"expected seconds ≤ max_workload_cert_ttl ({self.max_workload_cert_ttl:g}), "
                                             f"got {self.workload_cert_ttl:g}")]
        return []
