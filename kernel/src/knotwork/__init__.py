"""Knotwork: a service mesh kernel. Everything else is a plugin.

Plugins implement hooks from :mod:`knotwork.hookspecs` with :data:`hookimpl`
and return records from :mod:`knotwork.records`.
"""

import pluggy

from .model import Endpoint, Identity, MeshSettings, OutboundTrafficPolicy, PlatformSnapshot, Protocol, ProxyNode, Resource, Service, ServicePort, Workload
from .records import AttestationClaim, CliCommand, Compiler, CompileInput, Component, ComponentContext, ProxyContext, ProxyEngine, Strategy, lazy

hookimpl = pluggy.HookimplMarker("knotwork")

__all__ = [
    "AttestationClaim",
    "CliCommand",
    "CompileInput",
    "Compiler",
    "Component",
    "ComponentContext",
    "Endpoint",
    "Identity",
    "MeshSettings",
    "OutboundTrafficPolicy",
    "PlatformSnapshot",
    "Protocol",
    "ProxyContext",
    "ProxyEngine",
    "ProxyNode",
    "Resource",
    "Service",
    "ServicePort",
    "Strategy",
    "Workload",
    "hookimpl",
    "lazy",
]
