"""Who may hold a connection open on a port: bounds per source and in total.

Every accepted TCP connection costs a descriptor and, while it is open, a
task. :class:`Admission` keeps both bounded on one port: at most
``per_source`` connections from one IP address (a single client or peer
cannot take the port), at most ``total`` in all. At the total a new
connection evicts the one idle longest, if any is idle (a keep-alive
connection waiting between requests: closing it loses nothing, the client
reconnects), else it is refused. So a flood of idle sockets from many
addresses cannot lock clients out, and one that sends a slow request meets
the request's own timeouts (``limits.HEAD_TIMEOUT``, ``READ_TIMEOUT``).

A connection holds a :class:`Ticket` from ``admit`` to ``release``; while it
waits for a request it says so with ``Ticket.idle`` (a cancel scope that
eviction cancels) and ``Ticket.busy``. Not thread-safe: one trio run.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

__all__ = ["Admission", "AdmissionStats", "Ticket"]


@dataclass
class AdmissionStats:
    admitted: int = 0
    refused_source: int = 0  # over ``per_source`` from one address
    refused_full: int = 0  # at ``total`` with nothing idle to evict
    evicted: int = 0  # idle connections closed to make room


class Ticket:
    """One admitted connection's place (see :class:`Admission`)."""

    __slots__ = ("_admission", "_scope", "released", "source")

    def __init__(self, admission: Admission, source: str) -> None:
        self._admission = admission
        self.source = source
        self._scope: trio.CancelScope | None = None
        self.released = False

    def idle(self, scope: trio.CancelScope) -> None:
        """The connection waits for a request under ``scope``: it may be evicted."""
        self._scope = scope
        self._admission._idle[self] = None

    def busy(self) -> None:
        """A request began (or the wait ended): no longer evictable."""
        self._scope = None
        self._admission._idle.pop(self, None)

    def evict(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self.busy()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)


class Admission:
    def __init__(self, *, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.stats = AdmissionStats()
        self.open = 0
        self._by_source: dict[str, int] = {}
        self._idle: dict[Ticket, None] = {}  # insertion order: idle longest first

    def admit(self, source: str) -> Ticket | None:
        """A place for a new connection from ``source`` (an IP address), or None."""
        held = self._by_source.get(source, 0)
        if held >= self.per_source:
            self.stats.refused_source += 1
            return None
        if self.open >= self.total:
            if not self._idle:
                self.stats.refused_full += 1
                return None
            next(iter(self._idle)).evict()
            self.stats.evicted += 1
        self._by_source[source] = held + 1
        self.open += 1
        self.stats.admitted += 1
        return Ticket(self, source)

    def _release(self, ticket: Ticket) -> None:
        self._idle.pop(ticket, None)
        self.open -= 1
        left = self._by_source[ticket.source] - 1
        if left:
            self._by_source[ticket.source] = left
        else:
            del self._by_source[ticket.source]

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)
