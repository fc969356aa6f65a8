"""A direct protobuf encoder for the resource on the hot path: endpoints (EDS).

An endpoint change is the most frequent push, and building and serialising
the typed message costs ~4 ms (pydantic validation on every nested message);
writing the few fields :func:`~.clusters.cluster_load_assignment` emits
takes ~30 µs. Tests check that the bytes are exactly the typed message's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode_cluster_load_assignment"]

_HEALTH = {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2, "DRAINING": 3, "TIMEOUT": 4, "DEGRADED": 5}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _message(field, text.encode()) if text else b""


def _uint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _check(obj: dict[str, Any], keys: frozenset[str]) -> None:
    extra = set(obj) - keys
    if extra:
        raise KeyError(f"field(s) {sorted(extra)} not known to the fast encoder")


_CLA, _LOCALITY = frozenset({"cluster_name", "endpoints"}), frozenset({"lb_endpoints"})
_LB, _EP = frozenset({"endpoint", "health_status", "load_balancing_weight"}), frozenset({"address", "hostname"})
_SOCKET = frozenset({"address", "port_value"})


def _lb_endpoint(lb: dict[str, Any]) -> bytes:
    _check(lb, _LB)
    ep = lb["endpoint"]
    _check(ep, _EP)
    (kind, sock), = ep["address"].items()
    if kind != "socket_address":
        raise KeyError(f"address kind {kind!r} not known to the fast encoder")
    _check(sock, _SOCKET)
    address = _message(1, _string(2, sock.get("address", "")) + _uint(3, sock["port_value"]))
    out = _message(1, _message(1, address) + _string(3, ep.get("hostname", "")))
    health = _HEALTH[lb.get("health_status", "UNKNOWN")]
    if health:
        out += _uint(2, health)
    if "load_balancing_weight" in lb:
        weight = lb["load_balancing_weight"]
        out += _message(4, _uint(1, weight) if weight else b"")
    return out


def encode_cluster_load_assignment(config: dict[str, Any]) -> bytes:
    """The serialised ``ClusterLoadAssignment`` of a translated EndpointSet.

    Raises KeyError for any field it does not know (callers then take the slow path).
    """
    _check(config, _CLA)
    out = _string(1, config.get("cluster_name", ""))
    for locality in config.get("endpoints", ()):
        _check(locality, _LOCALITY)
        out += _message(2, b"".join(_message(2, _lb_endpoint(lb)) for lb in locality.get("lb_endpoints", ())))
    return out
