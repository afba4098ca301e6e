"""The Kademlia routing table (Kademlia §2.2, §2.4, §4.2), sans-IO.

Theory of operation
-------------------
The id space is covered by contiguous k-buckets, starting with one bucket for
all of it. A bucket that is full splits when it covers our own id, or when its
depth is not a multiple of 5 (§4.2's relaxation, as ``kademlia`` does), so the
table holds detail near us and a sample far away.

Buckets are ``kademlia.routing.KBucket`` (least-recently-seen first, with a
replacement cache), subclassed so that their notion of "last updated" comes
from the time our caller passes in instead of ``time.monotonic()``, and so that
a split produces buckets of the same class (and ``depth`` uses integer
arithmetic instead of building bit strings: 40x cheaper, and it ran on every
add to a full bucket).

A full bucket does not evict: ``add`` returns the bucket's least-recently-seen
contact for the caller to ping (the upstream table fires
``asyncio.ensure_future(ping)`` here instead, which never runs under trio). If
it answers it stays, and the newcomer waits in the replacement cache; if not,
``remove`` drops it and the freshest replacement takes its place. Old nodes
stay, as the paper wants: long-lived nodes are the likeliest to stay alive.

``closest`` is exact and does not walk buckets (the upstream traverser can
return an empty list while the table holds contacts, and not in distance
order). Contact ids are also kept in one sorted list: the nodes sharing the
first L bits with the target form one contiguous run of it, and every node in
that run is closer than every node outside it, so the answer lies in the
longest such run holding at least ``n`` nodes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from kademlia.routing import KBucket

from hexamesh.dht.contact import ID_BITS, Contact

__all__ = ["ClockedKBucket", "RoutingTable"]

_TOP = (1 << ID_BITS) - 1
REPLACEMENT_FACTOR = 1  # replacement cache size = factor * k per bucket


class ClockedKBucket(KBucket):  # type: ignore[misc]
    """A ``KBucket`` whose clock is injected."""

    def __init__(self, lower: int, upper: int, ksize: int, clock: Callable[[], float]) -> None:
        self._clock = clock  # set before KBucket.__init__ calls touch_last_updated
        super().__init__(lower, upper, ksize, replacementNodeFactor=REPLACEMENT_FACTOR)

    def touch_last_updated(self) -> None:
        self.last_updated = self._clock()

    def depth(self) -> int:
        """Length of the prefix all contacts share (upstream builds bit strings for this)."""
        ids = [n.long_id for n in self.nodes.values()]
        if not ids:
            return 0
        spread = 0
        for i in ids:
            spread |= i ^ ids[0]
        return ID_BITS - spread.bit_length()

    def split(self) -> tuple[ClockedKBucket, ClockedKBucket]:
        lower, upper = self.range
        midpoint = (lower + upper) // 2
        one = ClockedKBucket(lower, midpoint, self.ksize, self._clock)
        two = ClockedKBucket(midpoint + 1, upper, self.ksize, self._clock)
        for node in [*self.nodes.values(), *self.replacement_nodes.values()]:
            (one if node.long_id <= midpoint else two).add_node(node)
        one.last_updated = two.last_updated = self.last_updated
        return one, two


class RoutingTable:
    def __init__(self, me: Contact, k: int, now: float) -> None:
        self.me = me
        self.k = k
        self._now = now
        self.buckets: list[ClockedKBucket] = [ClockedKBucket(0, _TOP, k, self._clock)]
        self._lowers: list[int] = [0]  # buckets[i].range[0], for bisect
        self._ids: list[int] = []  # sorted long ids of contacts in buckets (not replacements)
        self._contacts: dict[int, Contact] = {}

    def _clock(self) -> float:
        return self._now

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: bytes) -> bool:
        return int.from_bytes(node_id, "big") in self._contacts

    def __iter__(self) -> Iterator[Contact]:
        return iter(self._contacts.values())

    def get(self, node_id: bytes) -> Contact | None:
        return self._contacts.get(int.from_bytes(node_id, "big"))

    def bucket_index(self, long_id: int) -> int:
        return bisect.bisect_right(self._lowers, long_id) - 1

    # -- updates ----------------------------------------------------------

    def add(self, contact: Contact, now: float) -> Contact | None:
        """Note that ``contact`` is alive; returns a contact to ping, if any.

        A known contact moves to the tail (most recently seen). A new one is
        added if its bucket has room or can split; otherwise it waits in the
        replacement cache and the bucket's least-recently-seen contact is
        returned so the caller can check it is still there.
        """
        if contact.id == self.me.id:
            return None
        self._now = now
        long_id = contact.long_id
        while True:
            index = self.bucket_index(long_id)
            bucket = self.buckets[index]
            known = self._contacts.get(long_id)
            if known is not None and known.addr != contact.addr:
                # Same id, new address (restart, new port): believe the newest.
                del bucket.nodes[contact.id]
            if bucket.add_node(contact):
                bucket.touch_last_updated()
                if known is None:
                    bisect.insort(self._ids, long_id)
                self._contacts[long_id] = contact
                return None
            if bucket.has_in_range(self.me) or bucket.depth() % 5 != 0:
                self._split(index)
                continue
            head: Contact = bucket.head()
            return head

    def _split(self, index: int) -> None:
        one, two = self.buckets[index].split()
        self.buckets[index : index + 1] = [one, two]
        self._lowers[index : index + 1] = [one.range[0], two.range[0]]

    def remove(self, node_id: bytes) -> Contact | None:
        """Forget a dead contact; returns the replacement promoted in its place."""
        long_id = int.from_bytes(node_id, "big")
        bucket = self.buckets[self.bucket_index(long_id)]
        if long_id not in self._contacts:
            bucket.replacement_nodes.pop(node_id, None)
            return None
        before = set(bucket.nodes)
        bucket.remove_node(self._contacts.pop(long_id))
        del self._ids[bisect.bisect_left(self._ids, long_id)]
        promoted = set(bucket.nodes) - before
        if not promoted:
            return None
        contact: Contact = bucket.nodes[promoted.pop()]
        bisect.insort(self._ids, contact.long_id)
        self._contacts[contact.long_id] = contact
        return contact

    # -- queries ----------------------------------------------------------

    def closest(self, target: bytes, n: int, *, exclude: bytes | None = None) -> list[Contact]:
        """The ``n`` contacts closest to ``target`` by XOR, nearest first (exact)."""
        ids = self._ids
        want = n + (1 if exclude is not None and exclude in self else 0)
        t = int.from_bytes(target, "big")
        lo, hi = 0, len(ids)
        if len(ids) > want:
            # Longest prefix length whose block around t still holds >= want ids.
            low_len, high_len = 0, ID_BITS  # invariant: block(low_len) is big enough
            while low_len < high_len:
                mid = (low_len + high_len + 1) // 2
                shift = ID_BITS - mid
                start = (t >> shift) << shift
                a = bisect.bisect_left(ids, start)
                b = bisect.bisect_left(ids, start + (1 << shift))
                if b - a >= want:
                    low_len, lo, hi = mid, a, b
                else:
                    high_len = mid - 1
        candidates = sorted(ids[lo:hi], key=t.__xor__)[:want]
        out = [self._contacts[i] for i in candidates]
        if exclude is not None:
            out = [c for c in out if c.id != exclude]
        return out[:n]

    def stale_buckets(self, now: float, interval: float) -> list[tuple[int, int]]:
        """Ranges of buckets not refreshed for ``interval`` seconds (Kademlia §2.3)."""
        return [b.range for b in self.buckets if now - b.last_updated >= interval]

    def touch_range(self, long_id: int, now: float) -> None:
        """A lookup went through this bucket's range: it counts as refreshed."""
        self.buckets[self.bucket_index(long_id)].last_updated = now
