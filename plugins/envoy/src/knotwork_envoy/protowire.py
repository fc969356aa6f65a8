"""The protobuf wire format by hand, for the few messages on hot or light paths.

Envoy's API types (``envoy_data_plane``) cost ~1 s of import and ~20 MB per
process, and pydantic-validate every nested message they build. Two places
cannot afford that: the control plane's endpoint pushes (:mod:`.translate.fastwire`)
and the sidecar agent, which must stay light yet serves Envoy its secrets
(:mod:`.sds`). They write (and read) the handful of fields they use with
these helpers; their tests check the bytes against the typed messages.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["fields", "message", "string", "uint", "varint"]


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message(field: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, string or bytes), written even when empty."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def string(field: int, text: str | bytes) -> bytes:
    """A string or bytes field; empty ones are left out, as proto3 does."""
    data = text.encode() if isinstance(text, str) else text
    return message(field, data) if data else b""


def uint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a serialised message: ints for varints and
    fixed-width fields, bytes for length-delimited ones. Raises ValueError when malformed."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(data, i)
            yield field, value
        elif kind == 2:
            size, i = _read_varint(data, i)
            if i + size > len(data):
                raise ValueError("truncated length-delimited field")
            yield field, data[i:i + size]
            i += size
        elif kind in (1, 5):
            width = 8 if kind == 1 else 4
            if i + width > len(data):
                raise ValueError("truncated fixed-width field")
            yield field, int.from_bytes(data[i:i + width], "little")
            i += width
        else:
            raise ValueError(f"unsupported wire type {kind}")
