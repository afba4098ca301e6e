"""A retransmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Membership news (alive, suspect, dead) rides on messages a node sends anyway.
Each item is sent at most ``limit`` times; the items sent fewest times go
first (new news spreads fastest), ties to the newest. News about a node
replaces older news about the same node, so the queue holds at most one item
per node and stays bounded by the swarm size, and by ``max_items``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BroadcastQueue"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Item(Generic[T]):
    key: Hashable
    value: T
    size: int
    transmits: int
    serial: int  # higher = newer


class BroadcastQueue(Generic[T]):
    """Kept in send order, as memberlist keeps a btree: ``take`` reads the
    front instead of sorting every item for every message (in a mass failure
    the queue holds thousands and every probe and ack takes from it)."""

    def __init__(self, limit: Callable[[], int], *, max_items: int = 4096) -> None:
        self._limit = limit  # retransmits allowed now (grows with log N)
        self.max_items = max_items  # beyond this the most-sent, oldest item is dropped
        self._items: dict[Hashable, _Item[T]] = {}
        # (transmits, -serial, item), ascending: fewest sends first, ties newest first
        self._order: list[tuple[int, int, _Item[T]]] = []
        self._sizes: Counter[int] = Counter()  # item size -> items of that size
        self._serial = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: Hashable, value: T, size: int) -> None:
        """Add news about ``key``, replacing what we had about it."""
        old = self._items.get(key)
        if old is not None:
            self._forget(old)
        self._serial += 1
        item = _Item(key, value, size, 0, self._serial)
        self._items[key] = item
        self._sizes[size] += 1
        self._order.insert(0, (0, -self._serial, item))  # the newest unsent goes first
        if len(self._items) > self.max_items:
            self._forget(self._order[-1][2])

    def discard(self, key: Hashable, value: T) -> None:
        """Drop the news about ``key`` if it is still ``value`` (not replaced)."""
        item = self._items.get(key)
        if item is not None and item.value is value:
            self._forget(item)

    def take(self, budget: int, overhead: int = 0) -> list[T]:
        """Items that fit in ``budget`` bytes (each costing ``size + overhead``).

        Taking counts as one transmission; items that reach the limit leave.
        """
        if not self._items:
            return []
        limit = self._limit()
        cheapest = min(self._sizes) + overhead  # below this nothing more fits
        taken: list[int] = []
        out: list[T] = []
        for index, (_, _, item) in enumerate(self._order):
            if budget < cheapest:
                break
            cost = item.size + overhead
            if cost > budget:
                continue
            budget -= cost
            out.append(item.value)
            taken.append(index)
        moved = [self._order[i][2] for i in taken]
        for index in reversed(taken):
            del self._order[index]
        for item in moved:
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
                self._drop_size(item.size)
            else:
                bisect.insort(self._order, (item.transmits, -item.serial, item))
        return out

    def _forget(self, item: _Item[T]) -> None:
        del self._items[item.key]
        self._drop_size(item.size)
        # A 2-tuple sorts just before the 3-tuple it starts, so this finds the item.
        del self._order[bisect.bisect_left(self._order, (item.transmits, -item.serial))]

    def _drop_size(self, size: int) -> None:
        self._sizes[size] -= 1
        if not self._sizes[size]:
            del self._sizes[size]
