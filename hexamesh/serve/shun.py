"""Servers that failed a request lately go to the back of the line for a while.

A server that refused a connection, timed out, answered 5xx or broke off
mid-stream is *shunned* for ``SHUN_PERIOD``: the router still tries it, but
after everyone else (it becomes a ``doubtful`` candidate). Without this, every
request at a node tried the same unreachable server again until something
else ruled it out: a provider known from the DHT only, across a partition,
is never declared dead by anyone on this side (its watchers are on the other
side), so each request paid the 3 s connect timeout for as long as the
partition lasted (``hexamesh simulate``, 400 nodes cut in two for 30 s: p99
latency 13x the baseline). A success clears the mark at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from hexamesh.serve.router import Candidate

__all__ = ["MAX_SHUNNED", "SHUN_PERIOD", "Shunned"]

SHUN_PERIOD = 30.0  # s a failed server is tried last; about what a SWIM verdict takes, times 5
MAX_SHUNNED = 1024  # marks kept; the oldest go first (a swarm rarely has this many servers)


class Shunned:
    def __init__(self, period: float = SHUN_PERIOD, max_entries: int = MAX_SHUNNED) -> None:
        self.period = period
        self.max_entries = max_entries
        self._until: dict[bytes, float] = {}  # node -> shunned until (insertion = age order)

    def failed(self, node: bytes, now: float) -> None:
        self._until.pop(node, None)  # re-insert: newest last
        self._until[node] = now + self.period
        while len(self._until) > self.max_entries:
            del self._until[next(iter(self._until))]

    def served(self, node: bytes) -> None:
        self._until.pop(node, None)

    def is_shunned(self, node: bytes, now: float) -> bool:
        until = self._until.get(node)
        if until is None:
            return False
        if until <= now:
            del self._until[node]
            return False
        return True

    def apply(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        """The candidates, those shunned marked doubtful (tried last)."""
        return [
            dataclasses.replace(c, doubtful=True)
            if not c.doubtful and self.is_shunned(c.node, now)
            else c
            for c in candidates
        ]
