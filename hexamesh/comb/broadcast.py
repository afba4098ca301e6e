"""A retransmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Membership news (alive, suspect, dead) rides on messages a node sends anyway.
Each item is sent at most ``limit`` times; the items sent fewest times go
first (new news spreads fastest), ties to the newest. News about a node
replaces older news about the same node, so the queue holds at most one item
per node and stays bounded by the swarm size, and by ``max_items``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BroadcastQueue"]

T = TypeVar("T")


@dataclass(slots=True)
class _Item(Generic[T]):
    key: Hashable
    value: T
    size: int
    transmits: int
    serial: int  # higher = newer


class BroadcastQueue(Generic[T]):
    def __init__(self, limit: Callable[[], int], *, max_items: int = 4096) -> None:
        self._limit = limit  # retransmits allowed now (grows with log N)
        self.max_items = max_items  # beyond this the most-sent, oldest item is dropped
        self._items: dict[Hashable, _Item[T]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: Hashable, value: T, size: int) -> None:
        """Add news about ``key``, replacing what we had about it."""
        self._serial += 1
        self._items[key] = _Item(key, value, size, 0, self._serial)
        if len(self._items) > self.max_items:
            worst = max(self._items.values(), key=lambda i: (i.transmits, -i.serial))
            del self._items[worst.key]

    def take(self, budget: int, overhead: int = 0) -> list[T]:
        """Items that fit in ``budget`` bytes (each costing ``size + overhead``).

        Taking counts as one transmission; items that reach the limit leave.
        """
        limit = self._limit()
        out: list[T] = []
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -i.serial)):
            cost = item.size + overhead
            if cost > budget:
                continue
            budget -= cost
            out.append(item.value)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
        return out
