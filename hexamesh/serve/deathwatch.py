"""Requests in flight, by the server they wait on: a death verdict cuts them at once.

A server that stops without closing its connections leaves the front door
waiting for bytes that never come: a frozen or hung agent (its kernel still
acknowledges everything, TCP keepalive included) for up to
``FIRST_BYTE_TIMEOUT`` (120 s) before the first byte and ``STALL_TIMEOUT``
(60 s) mid-stream; a machine that lost power or its network until TCP
keepalive gives up (about 11 s). The comb declares such a node dead within a
few seconds (``docs/reports/comb.md``: p99 ~4 s at 1,000 nodes), and every
agent hears the verdict. The front door registers each wait on a peer here,
the agent passes on every death verdict (``dead``), and each wait on that
peer is cut: the request fails over, or the stream continues on another
server, as after any other upstream failure.

Only verdicts cut, never suspicions: a suspect may refute (Lifeguard), and a
request cut by a false suspicion would pay a failover for nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["DeathWatch"]


class DeathWatch:
    def __init__(self) -> None:
        # node -> wait id -> how to cut that wait. Ids, not a set of callbacks:
        # two waits may register equal callables.
        self._waits: dict[bytes, dict[int, Callable[[], None]]] = {}
        self._next_id = 0
        self.cut = 0  # waits cut by a verdict, all time (a metric)

    @contextlib.contextmanager
    def waiting_on(self, node: bytes, cut: Callable[[], None]) -> Iterator[None]:
        """While the body runs, a verdict that ``node`` is dead calls ``cut``
        (once, synchronously, from whoever reports the death)."""
        wait_id = self._next_id
        self._next_id += 1
        self._waits.setdefault(node, {})[wait_id] = cut
        try:
            yield
        finally:
            waits = self._waits.get(node)
            if waits is not None:
                waits.pop(wait_id, None)
                if not waits:
                    del self._waits[node]

    def waiting(self, node: bytes) -> int:
        """How many waits on ``node`` are registered now."""
        return len(self._waits.get(node, ()))

    def dead(self, node: bytes) -> int:
        """``node`` was declared dead: cut every wait on it; returns how many."""
        waits = self._waits.pop(node, None)
        if not waits:
            return 0
        for cut in waits.values():
            cut()
        self.cut += len(waits)
        return len(waits)
