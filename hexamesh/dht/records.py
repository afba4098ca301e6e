"""Signed DHT records, the rules for each kind of key, and bounded storage.

Theory of operation
-------------------
A value in the DHT is a :class:`Record`: key, value bytes, sequence number and
an absolute expiry (Unix seconds), signed with the publisher's Ed25519 key.
The publisher's node id is derived from the public key in the record, so a
record cannot claim someone else's id. The signature covers a domain tag and
every field, so nothing can be changed, and the expiry is inside it, so an old
record replayed after it expired is refused like any expired one.

What a node stores depends on the key's kind (its prefix):

=============  ==========  ===================================================
prefix         kind        rule
=============  ==========  ===================================================
``cell:``      single      first publisher owns it until it expires; only the
``placement:`` single      owner replaces it (newer seq, or same seq + later
``job:``       single      expiry = a lease renewal); put-if-absent for others
``jobrun:``    set         one entry per publisher (who runs a job taken over)
``model:``     set         one entry per publisher (providers of a model)
``vote:``      set         one entry per publisher (one vote per scout)
=============  ==========  ===================================================

Other prefixes are refused. Within one publisher's entry, a newer sequence
wins; an equal sequence only extends the expiry; an older one is a replay and
is refused.

Each holder notes when it first saw each publisher's record under a key
(``first_seen``, its own clock; kept across the publisher's renewals) and
tells readers how long it has held it (``held_for``): a claim's age is judged
by that, not by the sequence number the claimant wrote
(``dht.claim.holder_of``). One publisher may hold at most ``max_cells``
``cell:`` keys and ``max_slots`` ``placement:`` keys at a holder.

Storage is bounded and says so: ``max_records`` entries in all,
``max_bytes_per_publisher``, ``max_entries_per_set`` per set key, values of at
most ``MAX_VALUE`` bytes and expiries at most ``max_ttl`` ahead.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Annotated

import msgpack

from hexamesh.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    node_id_for,
    short_id,
    verify,
)
from hexamesh.wire import Len, MaxLen, Struct, struct

__all__ = [
    "MAX_KEY",
    "MAX_VALUE",
    "KeyKind",
    "Record",
    "RecordStore",
    "StoreConfig",
    "StoreRefused",
    "key_kind",
    "renewed",
    "sign_record",
]

MAX_KEY = 256  # characters in a DHT key
MAX_VALUE = 8 * 1024  # bytes in a record's value
_DOMAIN = b"hexamesh-record-v1"


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Record(Struct):
    key: Annotated[str, MaxLen(MAX_KEY)]
    value: Annotated[bytes, MaxLen(MAX_VALUE)]
    seq: int
    expires: float  # Unix seconds
    publisher: Annotated[bytes, Len(PUBLIC_KEY_BYTES)]  # Ed25519 public key
    signature: Annotated[bytes, Len(SIGNATURE_BYTES)]

    @property
    def publisher_id(self) -> bytes:
        return node_id_for(self.publisher)

    def signed_bytes(self) -> bytes:
        return _signed_bytes(self.key, self.value, self.seq, self.expires, self.publisher)

    def verify(self) -> bool:
        return verify(self.publisher, self.signature, self.signed_bytes())

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value) + PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 16


def _signed_bytes(key: str, value: bytes, seq: int, expires: float, publisher: bytes) -> bytes:
    packed: bytes = msgpack.packb([_DOMAIN, key, value, seq, float(expires), publisher])
    return packed


def sign_record(identity: Identity, key: str, value: bytes, seq: int, expires: float) -> Record:
    sig = identity.sign(_signed_bytes(key, value, seq, expires, identity.public_key))
    return Record(
        key=key,
        value=value,
        seq=seq,
        expires=float(expires),
        publisher=identity.public_key,
        signature=sig,
    )


class KeyKind(enum.Enum):
    SINGLE = "single"  # one owner at a time
    SET = "set"  # one entry per publisher


_KINDS = {
    "cell:": KeyKind.SINGLE,
    "placement:": KeyKind.SINGLE,
    "job:": KeyKind.SINGLE,
    "jobrun:": KeyKind.SET,
    "file:": KeyKind.SINGLE,  # a Batch API file's description (serve.batches)
    "batch:": KeyKind.SINGLE,
    "batchrun:": KeyKind.SET,
    "model:": KeyKind.SET,
    "vote:": KeyKind.SET,
}


def key_kind(key: str) -> KeyKind | None:
    prefix, sep, _ = key.partition(":")
    return _KINDS.get(prefix + sep) if sep else None


FULL_SWEEP_INTERVAL = 1.0  # s; a full store looks for expired records at most this often


class StoreRefused(Exception):
    """A record this node will not store; the message is sent back to the publisher."""


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    max_records: int = 10_000  # entries held in all (set entries count one each)
    # bytes held in all: a publisher costs nothing to make, so the per-publisher
    # quota alone let 10,000 throwaway keys store 80 MiB here
    max_bytes: int = 8 * 1024 * 1024
    max_bytes_per_publisher: int = 256 * 1024  # bytes of records from one publisher
    max_entries_per_set: int = 64  # providers / votes held for one set key
    max_ttl: float = 24 * 3600.0  # s; refuse records that expire later than this
    clock_skew: float = 60.0  # s of expiry tolerated beyond max_ttl (unsynced clocks)
    # claims one publisher may hold here: a node owns one cell (more for a
    # moment while it moves or loses a race: a given-back claim lingers 1 s),
    # and one placement slot per model it serves
    max_cells: int = 4
    max_slots: int = 16


class RecordStore:
    """What this node holds for others (and for itself), bounded and expiring."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self._data: dict[str, dict[bytes, Record]] = {}  # key -> publisher id -> record
        self._bytes: dict[bytes, int] = {}  # publisher id -> bytes held
        self._count = 0
        self.total_bytes = 0
        self._swept_at = -math.inf  # the last sweep for room when full
        self._first_seen: dict[tuple[str, bytes], float] = {}  # (key, publisher id) -> when
        self._claims: dict[tuple[bytes, str], int] = {}  # (publisher id, prefix) -> keys held

    def __len__(self) -> int:
        return self._count

    def get(self, key: str, now: float) -> list[Record]:
        """Live records under ``key`` (several for a set key)."""
        entries = self._data.get(key)
        if not entries:
            return []
        live = [r for r in entries.values() if r.expires > now]
        if len(live) != len(entries):
            self._drop_expired(key, now)
        return live

    def held_for(self, key: str, publisher_id: bytes, now: float) -> float:
        """Seconds since we first saw ``publisher_id``'s record under ``key`` (0: none held)."""
        return max(0.0, now - self._first_seen.get((key, publisher_id), now))

    def _quota(self, prefix: str) -> int | None:
        return {"cell:": self.config.max_cells, "placement:": self.config.max_slots}.get(prefix)

    def put(self, record: Record, now: float) -> bool:
        """Store a record; True if it changed what we hold.

        Raises :class:`StoreRefused` with a reason for anything invalid,
        forged, replayed, not allowed for its key, or over a limit. An exact
        duplicate of what we hold returns False.
        """
        kind = key_kind(record.key)
        if kind is None:
            raise StoreRefused(f"unknown key type {record.key.partition(':')[0]!r}")
        if record.expires <= now:
            raise StoreRefused("record has expired")
        if record.expires > now + self.config.max_ttl + self.config.clock_skew:
            raise StoreRefused(f"expiry more than {self.config.max_ttl:.0f} s ahead")
        if not record.verify():
            raise StoreRefused("bad signature")
        publisher = record.publisher_id
        self._drop_expired(record.key, now)
        entries = self._data.get(record.key, {})
        mine = entries.get(publisher)
        if kind is KeyKind.SINGLE and mine is None and entries:
            (owner,) = entries
            raise StoreRefused(f"{record.key} is held by {short_id(owner)} until it expires")
        if mine is not None:
            if record == mine:
                return False
            if record.seq < mine.seq or (record.seq == mine.seq and record.expires <= mine.expires):
                raise StoreRefused(f"stale: we hold seq {mine.seq}")
            if record.seq == mine.seq and record.value != mine.value:
                raise StoreRefused("same seq with a different value")
        elif kind is KeyKind.SET and len(entries) >= self.config.max_entries_per_set:
            raise StoreRefused(
                f"{record.key} holds {self.config.max_entries_per_set} entries already"
            )
        prefix = record.key.partition(":")[0] + ":"
        quota = self._quota(prefix)
        if mine is None and quota is not None and self._claims.get((publisher, prefix), 0) >= quota:
            raise StoreRefused(f"publisher holds {quota} {prefix} keys here already")
        old_size = mine.size if mine is not None else 0
        used = self._bytes.get(publisher, 0) - old_size + record.size
        if used > self.config.max_bytes_per_publisher:
            raise StoreRefused("publisher is over its storage quota")
        total = self.total_bytes - old_size + record.size
        if (mine is None and self._count >= self.config.max_records) or (
            total > self.config.max_bytes and record.size > old_size
        ):
            if now - self._swept_at >= FULL_SWEEP_INTERVAL:  # a sweep is O(records)
                self._swept_at = now
                self.expire(now)
            total = self.total_bytes - old_size + record.size
            if self._count >= self.config.max_records and mine is None:
                raise StoreRefused("storage full")
            if total > self.config.max_bytes:
                raise StoreRefused("storage full (bytes)")
        self._data.setdefault(record.key, {})[publisher] = record
        self._bytes[publisher] = used
        self.total_bytes = total
        if mine is None:
            self._count += 1
            self._first_seen[(record.key, publisher)] = now
            if quota is not None:
                self._claims[(publisher, prefix)] = self._claims.get((publisher, prefix), 0) + 1
        return True

    def _drop_expired(self, key: str, now: float) -> None:
        entries = self._data.get(key)
        if not entries:
            return
        for pub, rec in list(entries.items()):
            if rec.expires <= now:
                self._forget(key, pub, rec)

    def _forget(self, key: str, publisher: bytes, record: Record) -> None:
        entries = self._data[key]
        del entries[publisher]
        if not entries:
            del self._data[key]
        left = self._bytes[publisher] - record.size
        if left:
            self._bytes[publisher] = left
        else:
            del self._bytes[publisher]
        self._count -= 1
        self.total_bytes -= record.size
        self._first_seen.pop((key, publisher), None)
        prefix = key.partition(":")[0] + ":"
        held = self._claims.get((publisher, prefix))
        if held is not None:
            if held > 1:
                self._claims[(publisher, prefix)] = held - 1
            else:
                del self._claims[(publisher, prefix)]

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many went."""
        before = self._count
        for key in list(self._data):
            self._drop_expired(key, now)
        return before - self._count

    def records(self) -> Iterator[Record]:
        for entries in self._data.values():
            yield from entries.values()

    def bytes_of(self, publisher_id: bytes) -> int:
        return self._bytes.get(publisher_id, 0)


def renewed(record: Record, identity: Identity, expires: float) -> Record:
    """The same record with a later expiry, re-signed (a lease renewal)."""
    fresh = replace(record, expires=float(expires))
    return replace(fresh, signature=identity.sign(fresh.signed_bytes()))
