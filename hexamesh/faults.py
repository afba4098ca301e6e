"""Containment: a unit of work that fails is counted and logged, never fatal.

Theory of operation
-------------------
The agent hands each unit of work to code that may meet bad input: a
datagram (open, decode, a core's ``receive``), a timer, a connection, a
relayed stream, a job. Where it does, it catches ``Exception`` and reports it
here with :meth:`Faults.caught`, naming the component. The unit ends; the
agent goes on. Nothing is swallowed silently: each report is counted by
component (``hexamesh_errors_total{component}``) and logged, with its
traceback, at most once per *kind* (component and exception type) per
``LOG_EVERY``, with the count of those not logged since. So one hostile peer
sending the same bad input a thousand times a second costs a thousand
increments and one log line a minute, and a bug shows up in the log and the
metrics instead of ending the process.

Only ``Exception`` is caught: cancellation (``trio.Cancelled``, a
``BaseException``) and ``KeyboardInterrupt`` pass, so structured shutdown
still works. A long-running service that fails as a whole is restarted by
``services.Services``, which reports here too.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LOG_EVERY", "Component", "Faults"]

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # s between two log lines of one kind (component, exception type)
MAX_KINDS = 256  # kinds remembered for the rate limit (a bound: exception types are few)


class Component(enum.Enum):
    """Where a unit of work failed (the ``component`` label of the counter)."""

    TRANSPORT = "transport"  # accepting and sniffing connections on the peer port
    DRIVER = "driver"  # sealing and sending what the cores hand out
    NET = "net"  # the RTT probe core
    DHT = "dht"
    COMB = "comb"
    PLACEMENT = "placement"
    FRONTDOOR = "frontdoor"  # one HTTP connection on either port
    RELAY = "relay"  # one relayed stream (the pump thread)
    JOBS = "jobs"  # one job, or one takeover
    ENGINE = "engine"  # the engine's upkeep (load, dance)
    STATUS = "status"  # agent.json, saved contacts
    SERVICE = "service"  # a whole service failed and is restarted


class Faults:
    """Counts of contained failures, and their rate-limited log. Thread-safe:
    the relay's pump thread reports here too."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: dict[Component, int] = {c: 0 for c in Component}
        self._logged: dict[tuple[Component, str], tuple[float, int]] = {}  # -> (at, unlogged)

    def caught(self, component: Component, error: BaseException, what: str = "") -> None:
        """``error`` ended one unit of work of ``component`` (``what``: which)."""
        kind = type(error).__name__
        now = self._clock()
        with self._lock:
            self.counts[component] += 1
            at, unlogged = self._logged.get((component, kind), (-LOG_EVERY, 0))
            if now - at < LOG_EVERY:
                self._logged[(component, kind)] = (at, unlogged + 1)
                return
            if len(self._logged) >= MAX_KINDS:
                self._logged.clear()
            self._logged[(component, kind)] = (now, 0)
        more = f" ({unlogged} more of this kind since the last report)" if unlogged else ""
        log.error(
            "%s: %s failed and was dropped: %s: %s%s",
            component.value,
            what or "a unit of work",
            kind,
            error,
            more,
            exc_info=error,
        )

    def total(self) -> int:
        return sum(self.counts.values())
