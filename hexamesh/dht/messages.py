"""DHT messages (type ids 0x01xx): Kademlia's four RPCs and their replies (§2.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from hexamesh.dht.contact import Contact
from hexamesh.dht.records import MAX_KEY, Record
from hexamesh.identity import NODE_ID_BYTES
from hexamesh.wire import Len, MaxLen, Message, message

__all__ = [
    "DHT_MESSAGES",
    "MAX_CONTACTS",
    "MAX_RECORDS",
    "DhtPing",
    "DhtPong",
    "FindNode",
    "FindValue",
    "Nodes",
    "Store",
    "StoreResult",
    "Value",
]

MAX_CONTACTS = 32  # contacts in one reply (k = 20 by default)
MAX_RECORDS = 64  # records in one FIND_VALUE reply (= max entries of a set key)


@message(0x0101)
@dataclass(frozen=True, slots=True, kw_only=True)
class DhtPing(Message):
    pass


@message(0x0102)
@dataclass(frozen=True, slots=True, kw_only=True)
class DhtPong(Message):
    pass


@message(0x0103)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode(Message):
    target: Annotated[bytes, Len(NODE_ID_BYTES)]


@message(0x0104)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nodes(Message):
    contacts: Annotated[tuple[Contact, ...], MaxLen(MAX_CONTACTS)]


@message(0x0105)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindValue(Message):
    key: Annotated[str, MaxLen(MAX_KEY)]


@message(0x0106)
@dataclass(frozen=True, slots=True, kw_only=True)
class Value(Message):
    records: Annotated[tuple[Record, ...], MaxLen(MAX_RECORDS)]
    contacts: Annotated[tuple[Contact, ...], MaxLen(MAX_CONTACTS)]
    # s the answering holder has held each record (its first sight; one per record)
    held_for: Annotated[tuple[float, ...], MaxLen(MAX_RECORDS)] = ()


@message(0x0107)
@dataclass(frozen=True, slots=True, kw_only=True)
class Store(Message):
    record: Record


@message(0x0108)
@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult(Message):
    ok: bool
    reason: Annotated[str, MaxLen(200)]


DHT_MESSAGES: tuple[type[Message], ...] = (
    DhtPing,
    DhtPong,
    FindNode,
    Nodes,
    FindValue,
    Value,
    Store,
    StoreResult,
)
