"""The `tenant:` section of the mesh file."""

from __future__ import annotations

from collections.abc import Iterator

import attrs


@attrs.frozen(kw_only=True)
class TenantSettings:
    """Settings of the `tenant` authorizer; the kernel validates them before anything starts."""

    header: str = attrs.field(
        default="x-tenant", converter=str.lower,
        metadata={"help": "request header that names the tenant (case-insensitive)"},
    )
    allowed: tuple[str, ...] = attrs.field(metadata={"help": "tenants whose requests are allowed"})

    def problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """Cross-field checks, reported by the kernel with the other mesh-file problems."""
        if not self.allowed:
            yield ("allowed",), "expected at least one tenant, got an empty list"
        if not self.header:
            yield ("header",), "expected a header name, got ''"
