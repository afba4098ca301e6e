"""The iterative parallel lookup (Kademlia §2.3), as a pure state machine.

Theory of operation
-------------------
A lookup keeps a *shortlist* of contacts ordered by XOR distance to the
target. It keeps up to ``alpha`` queries in flight to the closest contacts it
has not asked yet ("loose parallelism": a slow or dead node does not stall
the others). Replies add contacts; a contact that fails is struck off and never
re-added. The lookup is finished when nothing is in flight and each of the
``k`` closest live contacts it knows has answered; those are the result.

Each contact carries a *hop*: 1 for contacts from our own table, and one more
than the hop of the query whose reply introduced it. The lookup's ``hops`` is
the number of sequential rounds the answer needed: the largest hop among the
``k`` closest that answered (or, for a value, the hop of the query that found
it).

The owner (``DhtCore``) sends the queries and feeds back replies and
failures; this class decides only whom to ask next and when to stop.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from hexamesh.dht.contact import Contact

__all__ = ["Lookup", "LookupStats"]

SHORTLIST_FACTOR = 2  # keep at most factor * k candidates; farther ones are dropped


class _State(enum.Enum):
    NEW = 0
    INFLIGHT = 1
    DONE = 2
    FAILED = 3


@dataclass(slots=True)
class _Entry:
    contact: Contact
    distance: int
    hop: int
    state: _State = _State.NEW


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupStats:
    hops: int  # sequential rounds (see module docstring)
    queries: int  # RPCs sent
    failures: int  # of which failed (timeout, refused, queue full)
    started: float
    finished: float

    @property
    def duration(self) -> float:
        return self.finished - self.started


class Lookup:
    def __init__(
        self,
        target: bytes,
        *,
        k: int,
        alpha: int,
        me: bytes,
        seeds: list[Contact],
        max_queries: int | None = None,
    ) -> None:
        self.target = target
        self.max_queries = max_queries  # a budget: stop after this many queries
        self.k = k
        self.alpha = alpha
        self._t = int.from_bytes(target, "big")
        self._me = me
        self._entries: dict[bytes, _Entry] = {}
        self._order: list[_Entry] = []  # every entry, nearest first
        self._struck: set[bytes] = set()  # failed ids, never re-added
        self.in_flight = 0
        self.queries = 0
        self.failures = 0
        self.value_hop: int | None = None
        self.add(seeds, hop=1)

    def add(self, contacts: list[Contact] | tuple[Contact, ...], hop: int) -> None:
        t = self._t
        order = self._order
        limit = SHORTLIST_FACTOR * self.k
        entries = self._entries
        for c in contacts:
            if c.id == self._me or c.id in self._struck or c.id in entries:
                continue
            distance = c.long_id ^ t
            if len(order) >= limit and distance >= order[-1].distance:
                continue  # farther than everything we keep: it would never be asked
            entry = _Entry(c, distance, hop)
            entries[c.id] = entry
            bisect.insort(order, entry, key=_distance)
        if len(order) > limit:
            keep = order[:limit]
            for e in order[limit:]:
                if e.state is _State.NEW:
                    del entries[e.contact.id]
                else:
                    keep.append(e)
            self._order = keep

    def _live_closest(self) -> list[_Entry]:
        out = []
        for e in self._order:
            if e.state is not _State.FAILED:
                out.append(e)
                if len(out) == self.k:
                    break
        return out

    def next_queries(self) -> list[Contact]:
        """Contacts to query now (marked in flight); empty when none should start."""
        out: list[Contact] = []
        if self.max_queries is not None and self.queries >= self.max_queries:
            return out
        if self.in_flight >= self.alpha:
            return out
        live = 0
        for e in self._order:
            if e.state is _State.FAILED:
                continue
            live += 1
            if live > self.k or self.in_flight >= self.alpha or self.queries == self.max_queries:
                break
            if e.state is _State.NEW:
                e.state = _State.INFLIGHT
                self.in_flight += 1
                self.queries += 1
                out.append(e.contact)
        return out

    def hop_of(self, node_id: bytes) -> int:
        return self._entries[node_id].hop

    def on_reply(self, node_id: bytes, contacts: list[Contact] | tuple[Contact, ...]) -> None:
        entry = self._entries.get(node_id)
        if entry is None or entry.state is not _State.INFLIGHT:
            return
        entry.state = _State.DONE
        self.in_flight -= 1
        self.add(contacts, hop=entry.hop + 1)

    def on_failure(self, node_id: bytes) -> None:
        entry = self._entries.get(node_id)
        if entry is None or entry.state is not _State.INFLIGHT:
            return
        entry.state = _State.FAILED
        self.in_flight -= 1
        self.failures += 1
        self._struck.add(node_id)

    def finished(self) -> bool:
        if self.in_flight:
            return False
        if self.max_queries is not None and self.queries >= self.max_queries:
            return True
        return all(e.state is _State.DONE for e in self._live_closest())

    def result(self) -> list[Contact]:
        """The k closest contacts that answered, nearest first."""
        return [e.contact for e in self._live_closest() if e.state is _State.DONE]

    def hops(self) -> int:
        if self.value_hop is not None:
            return self.value_hop
        done = [e.hop for e in self._live_closest() if e.state is _State.DONE]
        return max(done, default=0)

    def answered(self) -> list[Contact]:
        """Every contact that answered, nearest first (for caching a value)."""
        return [e.contact for e in self._order if e.state is _State.DONE]


def _distance(entry: _Entry) -> int:
    return entry.distance
