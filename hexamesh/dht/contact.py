"""Contacts and the XOR metric (Kademlia §2.1).

A :class:`Contact` is a node id with the address it answers on. It is a wire
struct (it travels in FIND_NODE replies) and also the item stored in routing
tables; it exposes ``id`` and ``long_id`` like ``kademlia.node.Node`` so that
``kademlia.routing.KBucket`` can hold it. In the simulator one Contact object
is shared by every table that learns it, which keeps 10,000 tables small.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated

from hexamesh.identity import NODE_ID_BYTES
from hexamesh.net.base import Addr
from hexamesh.wire import Len, MaxLen, Struct, struct

__all__ = ["ID_BITS", "Contact", "distance", "key_id"]

ID_BITS = NODE_ID_BYTES * 8  # 160


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Contact(Struct):
    id: Annotated[bytes, Len(NODE_ID_BYTES)]
    host: Annotated[str, MaxLen(64)]
    port: int
    long_id: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.id) != NODE_ID_BYTES:
            raise ValueError(f"a node id has {NODE_ID_BYTES} bytes, got {len(self.id)}")
        object.__setattr__(self, "long_id", int.from_bytes(self.id, "big"))

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)

    @classmethod
    def of(cls, node_id: bytes, addr: Addr) -> Contact:
        return cls(id=node_id, host=addr[0], port=addr[1])


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two 160-bit ids, as an int."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def key_id(key: str) -> bytes:
    """Where a DHT key lives: BLAKE2b-160 of its UTF-8 text (same space as node ids)."""
    return hashlib.blake2b(key.encode(), digest_size=NODE_ID_BYTES).digest()
