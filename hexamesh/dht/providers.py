"""A provider record: a server of a model, where to reach it, what it loaded.

Each server of a model stores one under ``model:<name>`` (a set key: every
server's record is kept), renewed while it serves. The value is msgpack
``[host, port, source]``: the address, as an address record (``claim``), and
the directory or hub id it loaded, so that a placement can refuse to serve a
name from a second source.
"""

from __future__ import annotations

import msgpack

from hexamesh.net.base import Addr

__all__ = ["provider_source", "provider_value"]


def provider_value(addr: Addr, source: str) -> bytes:
    return bytes(msgpack.packb([addr[0], addr[1], source]))


def provider_source(value: bytes) -> str | None:
    """The source a provider record names; None if it names none (or is not one)."""
    try:
        got = msgpack.unpackb(value)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if isinstance(got, list) and len(got) >= 3 and isinstance(got[2], str):
        return got[2]
    return None
