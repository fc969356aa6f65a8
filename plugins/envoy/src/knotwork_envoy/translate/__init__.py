"""Pure translation of compiled resources (:mod:`knotwork.proxyconfig`) to Envoy xDS v3.

Each translator returns the resource in Envoy's proto-JSON form (the shape
of Envoy's YAML docs, snake_case) and raises :class:`TranslationError`
naming the resource and field when it cannot be expressed;
:func:`to_message` turns that into the typed ``envoy_data_plane`` message
(validating it against the API) and :func:`pack` into a ``google.protobuf.Any``.
"""

from __future__ import annotations

from typing import Any

import attrs
import betterproto2

# The typed configs nested in resources must be importable for Any to (un)pack them.
import envoy_data_plane.envoy.config.trace.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.access_loggers.stream.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.clusters.dynamic_forward_proxy.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.http.cors.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.http.dynamic_forward_proxy.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.http.fault.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.http.header_mutation.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.http.router.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.listener.tls_inspector.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.transport_sockets.raw_buffer.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.upstreams.http.v3  # noqa: F401
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.config.trace.v3 import ZipkinConfig
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.message_pool import default_message_pool

from .clusters import cluster, cluster_load_assignment, secret
from .common import TranslationError
from .fastwire import encode_cluster_load_assignment
from .listeners import listener
from .routes import route_configuration

__all__ = [
    "MESSAGES",
    "TYPE_KEYS",
    "TYPE_URLS",
    "TranslateOptions",
    "TranslationError",
    "pack",
    "to_message",
    "translate",
]

#: The core's type keys → Envoy's message classes and type URLs.
MESSAGES: dict[str, type] = {
    "secrets": Secret,
    "clusters": Cluster,
    "endpoints": ClusterLoadAssignment,
    "listeners": Listener,
    "routes": RouteConfiguration,
}
TYPE_URLS: dict[str, str] = {
    "secrets": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
    "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "endpoints": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "listeners": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "routes": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
}
TYPE_KEYS: dict[str, str] = {url: key for key, url in TYPE_URLS.items()}


class _ZipkinConfig:
    """Stands for ``ZipkinConfig`` in the API types' message pool, so that an ``Any`` of one
    takes ``trace_id_128bit``: betterproto2 turns any spelling of that field into
    ``trace_id_128_bit`` and refuses it. Parsing and printing are ZipkinConfig's own."""

    to_dict = betterproto2.Message.to_dict  # (Any checks that the type prints as a plain message)

    @staticmethod
    def from_dict(value: Any, *, ignore_unknown_fields: bool = False) -> ZipkinConfig:
        value = dict(value)
        bits128 = bool(value.pop("trace_id_128bit", False))
        message = ZipkinConfig.from_dict(value, ignore_unknown_fields=ignore_unknown_fields)
        message.trace_id_128bit = bits128
        return message

    @staticmethod
    def parse(data: bytes) -> ZipkinConfig:
        return ZipkinConfig.parse(data)


# An Any of a ZipkinConfig (a connection manager's tracer) is built through the class above.
default_message_pool.url_to_type["type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"] = _ZipkinConfig


@attrs.frozen
class TranslateOptions:
    """Mesh-wide choices that shape translated resources."""

    server_name: str = "knotwork"
    #: CA bundle file for TLS origination without a ca_secret (None: the system's, found at translation).
    system_roots: str | None = None


def translate(type_key: str, resource: Any, options: TranslateOptions = TranslateOptions(), *,
              tunnels: bool = False, endpoints: Any = None) -> dict[str, Any]:
    """The Envoy form (proto-JSON) of one compiled resource of type `type_key`.

    `tunnels` (route tables only): the table serves an ``http_proxy`` listener.
    `endpoints` (clusters only): the cluster's endpoint set, inlined by ``dns`` clusters.
    """
    if type_key == "listeners":
        return listener(resource, options.server_name)
    if type_key == "routes":
        return route_configuration(resource, tunnels)
    if type_key == "clusters":
        return cluster(resource, endpoints, system_roots=options.system_roots)
    if type_key == "endpoints":
        return cluster_load_assignment(resource)
    if type_key == "secrets":
        return secret(resource)
    raise TranslationError(f"unknown resource type {type_key!r}")


def to_message(type_key: str, config: dict[str, Any]) -> Any:
    """The typed message of a translated resource; raises TranslationError if Envoy's API refuses it."""
    try:
        return MESSAGES[type_key].from_dict(config)
    except (KeyError, ValueError, TypeError) as exc:
        name = config.get("name") or config.get("cluster_name")
        raise TranslationError(f"{type_key} {name!r}: not valid Envoy config: {exc}") from exc


def pack(type_key: str, resource: Any, options: TranslateOptions = TranslateOptions(), *,
         tunnels: bool = False, endpoints: Any = None) -> AnyMessage:
    """Translate, validate and pack one resource for a DiscoveryResponse.

    Endpoints take a direct encoder (:mod:`.fastwire`): they change most often.
    """
    config = translate(type_key, resource, options, tunnels=tunnels, endpoints=endpoints)
    if type_key == "endpoints":
        try:
            return AnyMessage(type_url=TYPE_URLS[type_key], value=encode_cluster_load_assignment(config))
        except KeyError:
            pass
    return AnyMessage.pack(to_message(type_key, config))
