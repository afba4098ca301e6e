"""Owning a single-owner DHT key by claim (a comb cell, a placement slot).

A claim record's value is the claimant's address (msgpack ``[host, port]``)
and its sequence number the claim time in milliseconds. The k closest nodes
store put-if-absent, but two claims can still race onto different replicas;
every reader then applies the same rule, the older claim keeps the key, ties
to the lower node id, so claimants agree without talking. A claim's age is
what its holders say, not what its claimant wrote: each holder notes when it
first saw the record (``records.RecordStore.held_for``), a reader takes the
median over the holders it asked, and a claim counts as made at the later of
that and its own sequence number, so a back-dated claim (``seq = 0``) is as
young as the holders saw it. Claims first seen within ``SIGHT_TOLERANCE`` of
each other are a race, settled by (sequence number, node id): readers who
asked at different moments estimate sights a few milliseconds apart, and
must still agree. Giving a key back
re-stores the record with a one-second lease and stops renewing it, so it
blocks no replica for the rest of its lease.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack

from hexamesh.dht.records import Record
from hexamesh.dht.service import Dht, DhtError
from hexamesh.net.base import Addr, peer_addr

__all__ = [
    "RELEASE_TTL",
    "Holder",
    "addr_value",
    "claim",
    "decode_addr",
    "holder_of",
    "release",
]

log = logging.getLogger(__name__)

RELEASE_TTL = 1.0  # s; a key given back is re-stored with this lease, so it frees at once
# s; first sights closer than this are a race (settled by seq, node id): well
# above the spread of readers' estimates (a round trip), well below a lease
SIGHT_TOLERANCE = 2.0


@dataclass(frozen=True, slots=True)
class Holder:
    node: bytes  # the claimant (the record's publisher)
    addr: Addr  # where to reach it (the record's value)
    since: int  # the claim's sequence number: its time in ms


NOBODY = Holder(node=b"", addr=("", 0), since=0)  # no record seen: nobody holds it


def addr_value(addr: Addr) -> bytes:
    """A claim record's value: our address."""
    return bytes(msgpack.packb([addr[0], addr[1]]))


def decode_addr(value: bytes) -> Addr | None:
    """An address record's value (``addr_value``; a peer's: checked), or None."""
    try:
        got = msgpack.unpackb(value)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(got, list | tuple) or len(got) < 2:
        return None
    return peer_addr(got[0], got[1])


def _made(record: Record, seen: Mapping[bytes, float]) -> float:
    """When a claim counts as made: the later of its own word and its holders' first sight."""
    claimed = record.seq / 1000
    first = seen.get(record.publisher_id)
    return claimed if first is None else max(claimed, first)


def holder_of(
    records: Iterable[Record], seen: Mapping[bytes, float] | None = None
) -> Holder | None:
    """Who holds the key by the rule above; None if nobody (malformed values
    are skipped). ``seen``: publisher id -> the holders' first sight of its
    claim (``Dht.claims``); without it, claims are as old as they say."""
    seen = seen or {}
    best: tuple[Record, Addr] | None = None
    for r in records:
        addr = decode_addr(r.value)
        if addr is None:
            continue
        if best is None:
            best = (r, addr)
            continue
        mine, theirs = _made(r, seen), _made(best[0], seen)
        if abs(mine - theirs) > SIGHT_TOLERANCE:
            older = mine < theirs
        else:
            older = (r.seq, r.publisher_id) < (best[0].seq, best[0].publisher_id)
        if older:
            best = (r, addr)
    if best is None:
        return None
    return Holder(node=best[0].publisher_id, addr=best[1], since=best[0].seq)


async def claim(
    dht: Dht,
    key: str,
    value: bytes,
    ttl: float,
    *,
    me: bytes,
    now: float,
    seen: bool = False,
) -> Holder | None:
    """Try to take ``key``: read it, store our claim (its sequence number is
    ``now`` in ms: a newer claim of ours replaces an older one), read it back
    from every replica and settle by the rule above. None if the key is ours;
    else who holds it, ``NOBODY`` if no record could be read back (our
    claim, stored, is given back either way).
    ``seen``: the read-back must show our record (a placement slot, where two
    holders would place one replica too many); by default a read-back that
    finds nothing leaves the key ours (a cell, where a later contest settles
    it). Raises DhtError."""
    holder = holder_of(*await dht.claims(key))
    if holder is not None and holder.node != me:
        return holder
    await dht.put(key, value, ttl, seq=math.floor(now * 1000))
    holder = holder_of(*await dht.claims(key))
    if (holder is not None and holder.node == me) or (holder is None and not seen):
        return None
    await release(dht, key, value)
    return holder if holder is not None else NOBODY


async def release(dht: Dht, key: str, value: bytes) -> None:
    """Give ``key`` back (see the module docstring); a DHT failure is logged, not raised."""
    try:
        await dht.put(key, value, RELEASE_TTL)
    except DhtError as e:
        log.info("releasing %s: %s", key, e)
    dht.withdraw(key)
