"""What each child of `up` is started with: its argv and its environment. Pure."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import attrs

from knotwork.model import MeshSettings

from .ports import upstream_key
from .settings import WorkloadSettings

__all__ = ["Launch", "app_argv", "app_env"]


@attrs.frozen
class Launch:
    """How the control plane and the proxies are started; tests swap in fakes."""

    control: tuple[str, ...] = (sys.executable, "-m", "knotwork", "control")
    proxy: tuple[str, ...] = (sys.executable, "-m", "knotwork", "proxy")
    engine: str = "native"

    def control_argv(self, mesh_path: Path, listen: str, ca_listen: str | None = None) -> list[str]:
        """`ca_listen`: where the certificate service listens (None: the mesh selects no certificate authority)."""
        argv = [*self.control, "--mesh", str(mesh_path), "--engine", self.engine, "--listen", listen]
        return [*argv, "--ca-listen", ca_listen] if ca_listen else argv

    def proxy_argv(self, mesh_path: Path, node: str, control: str, admin: int, drain_timeout: float, *,
                   ca: str | None = None, identity: str | None = None) -> list[str]:
        """With `ca` (the certificate service) the proxy claims `identity`; its one-time
        credential goes in its environment (``KNOTWORK_CREDENTIAL``), never in argv."""
        argv = [*self.proxy, "--mesh", str(mesh_path), "--engine", self.engine, "--node", node, "--control", control,
                "--admin-port", str(admin), "--drain-timeout", str(drain_timeout)]
        if ca:
            if not identity:
                raise ValueError(f"proxy {node}: a certificate service needs the identity the proxy claims")
            argv += ["--ca", ca, "--identity", identity]
        return argv


def app_argv(w: WorkloadSettings) -> list[str]:
    """The workload's command; a first element `python` is this interpreter."""
    command = list(w.command)
    return [sys.executable, *command[1:]] if command and command[0] == "python" else command


def env_name(service: str) -> str:
    """`mysql` -> `MYSQL`, `cache.infra.svc.x` -> `CACHE_INFRA_SVC_X`."""
    return "".join(c if c.isalnum() else "_" for c in service).upper()


def app_env(w: WorkloadSettings, instance: str, ports: Mapping[str, int], mesh: MeshSettings,
            base: Mapping[str, str]) -> dict[str, str]:
    """The environment of one instance: `base`, the platform's variables, then the workload's `env`."""
    proxy = f"http://127.0.0.1:{ports['http_proxy']}"
    env = {**base, "PYTHONUNBUFFERED": "1", "INSTANCE": instance, "SERVICE_NAME": w.service,
           "SERVICE_VERSION": w.resolved_labels.get("version", ""), "POD_NAMESPACE": w.namespace,
           "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    for i, p in enumerate(w.ports):
        env[f"PORT_{p.port}"] = str(ports[f"app:{p.port}"])
        if i == 0:
            env["PORT"] = env[f"PORT_{p.port}"]
    for u in w.upstreams:
        address = f"127.0.0.1:{ports[upstream_key(u.service, u.port, w.namespace, mesh.domain)]}"
        env.setdefault(f"{env_name(u.service)}_ADDR", address)  # the first port of that service
        env[f"{env_name(u.service)}_{u.port}_ADDR"] = address
    return {**env, **w.env}
