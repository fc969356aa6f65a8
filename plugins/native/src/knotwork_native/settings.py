"""Settings of the native proxy engine (the `native:` section of the mesh file)."""

from __future__ import annotations

import attrs


@attrs.frozen
class NativeSettings:
    """Tuning of native sidecars and gateways; the defaults suit a laptop."""

    idle_timeout: float = attrs.field(default=60.0, metadata={"help": "seconds an idle keep-alive connection is kept"})
    max_idle_per_endpoint: int = attrs.field(default=32, metadata={"help": "idle upstream connections kept per endpoint"})
    peek_timeout: float = attrs.field(default=5.0, metadata={
        "help": "seconds a PERMISSIVE mTLS inbound listener waits for a new connection's first bytes to tell TLS "
                "from plaintext before serving it as plaintext (server-first protocols)"})

    def problems(self) -> list[tuple[tuple, str]]:
        out = []
        for name in ("idle_timeout", "peek_timeout"):
            if getattr(self, name) <= 0:
                out.append(((name,), f"expected a number of seconds > 0, got {getattr(self, name)!r}"))
        if self.max_idle_per_endpoint < 0:
            out.append((("max_idle_per_endpoint",), f"expected an integer ≥ 0, got {self.max_idle_per_endpoint}"))
        return out
