"""Loopback port allocation for everything `up` runs.

Ports are chosen once per `up` and kept for its whole life, so a restarted
process listens where the rest of the mesh expects it. They come from just
below the kernel's ephemeral range (``ip_local_port_range``): outgoing
connections (and the mesh makes many) never take them between restarts. A
random start keeps two meshes on one machine apart; every port is checked
by binding it.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Mapping
from pathlib import Path

import attrs

from knotwork.model import resolve_host

from .settings import LocalSettings

__all__ = ["PortAllocator", "PortPlan", "ephemeral_range", "plan_ports", "port_is_free"]

HOST = "127.0.0.1"
#: Width of the range below the ephemeral range that ports are taken from.
SPAN = 12000


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux), else the IANA one."""
    try:
        low, high = (int(x) for x in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when a listener could bind `host:port` now (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out distinct free ports from `[low, high)`, starting at a random place.

    Falls back to ports the kernel picks (bind to 0) when the range is unusable.
    """

    def __init__(self, low: int | None = None, high: int | None = None, *, host: str = HOST,
                 rng: random.Random | None = None) -> None:
        eph_low, _ = ephemeral_range()
        self.high = high if high is not None else eph_low
        self.low = low if low is not None else max(1024, self.high - SPAN)
        self.host = host
        self.taken: set[int] = set()
        size = max(self.high - self.low, 0)
        self._next = self.low + (rng or random.SystemRandom()).randrange(size) if size else 0

    def claim(self, port: int) -> int:
        """Take a port the user asked for; ValueError when it is busy or already taken."""
        if port in self.taken or not port_is_free(port, self.host):
            raise ValueError(f"expected a free port on {self.host}, got {port} (in use)")
        self.taken.add(port)
        return port

    def take(self) -> int:
        """The next free port of the range."""
        size = self.high - self.low
        for _ in range(max(size, 0)):
            port = self._next
            self._next = self.low + (self._next - self.low + 1) % size
            if port not in self.taken and port_is_free(port, self.host):
                self.taken.add(port)
                return port
        return self._kernel_port()

    def _kernel_port(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((self.host, 0))
                port = s.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise OSError(errno.EADDRINUSE, "no free loopback port")


@attrs.frozen
class PortPlan:
    """Every port of a mesh run, by role.

    `control` is the config distribution, `ca` the control plane's
    certificate service (listened on only when the mesh selects a
    certificate authority), `metrics` its ``/metrics`` (HTTP). `instances[<instance>]` has ``admin``,
    ``http_proxy``, ``inbound:<p>`` and ``app:<p>`` per service port,
    ``tcp:<fqdn>:<port>`` per TCP upstream;
    `gateway` has ``gateway:80`` (the ingress), ``gateway:443`` (where a
    Gateway server on port 443, usually HTTPS, listens) and ``admin``.
    """

    control: int
    ca: int
    gateway: Mapping[str, int]
    instances: Mapping[str, Mapping[str, int]]
    metrics: int = 0

    @property
    def ingress(self) -> int:
        return self.gateway["gateway:80"]


def upstream_key(service: str, port: int, namespace: str, domain: str) -> str:
    """The ProxyNode port role of a TCP upstream listener: ``tcp:<fqdn>:<port>``."""
    return f"tcp:{resolve_host(service, namespace, domain)}:{port}"


def plan_ports(settings: LocalSettings, *, domain: str = "cluster.local", ingress_port: int | None = None,
               allocator: PortAllocator | None = None) -> PortPlan:
    """Allocate every port of the mesh; the ingress port from the CLI or settings when not 0.

    Raises ValueError when an explicitly requested ingress port is busy.
    """
    alloc = allocator or PortAllocator()
    wanted = ingress_port if ingress_port is not None else settings.ingress.port
    ingress = alloc.claim(wanted) if wanted else alloc.take()
    control, ca = alloc.take(), alloc.take()
    gateway = {"gateway:80": ingress, "gateway:443": alloc.take(), "admin": alloc.take()}
    instances: dict[str, dict[str, int]] = {}
    for w in settings.workloads:
        for name in w.instance_names():
            ports = {"admin": alloc.take(), "http_proxy": alloc.take()}
            for p in w.ports:
                ports[f"inbound:{p.port}"] = alloc.take()
                ports[f"app:{p.port}"] = alloc.take()
            for u in w.upstreams:
                ports[upstream_key(u.service, u.port, w.namespace, domain)] = alloc.take()
            instances[name] = ports
    return PortPlan(control=control, ca=ca, gateway=gateway, instances=instances, metrics=alloc.take())
