"""Several cores behind one transport, dispatched by message type.

An agent runs many protocol cores (RTT probe, DHT, later membership and
gossip) over one socket. ``Mux`` is itself a core: it hands each envelope to
the core that registered its message type, fires the timers that are due,
and concatenates outboxes and events. Envelopes of a type nobody registered are counted
and dropped. A core whose timer raises does not keep the others' timers
from running: the error is kept for the driver (``take_errors``).
"""

from __future__ import annotations

from hexamesh.net.base import Addr, Core
from hexamesh.wire import Envelope, Message

__all__ = ["Mux"]


class Mux:
    def __init__(self) -> None:
        self._cores: list[Core] = []
        self._routes: dict[type[Message], Core] = {}
        self.unrouted = 0
        # (error, what failed, a message type of the core that failed), for the driver
        self._errors: list[tuple[Exception, str, type[Message] | None]] = []

    def add(self, core: Core, *types: type[Message]) -> None:
        """Route ``types`` to ``core``; a type may have one owner only."""
        for t in types:
            if t in self._routes:
                raise ValueError(f"{t.__name__} is routed to another core already")
            self._routes[t] = core
        if core not in self._cores:
            self._cores.append(core)

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        core = self._routes.get(type(env.message))
        if core is None:
            self.unrouted += 1
            return
        core.receive(env, sender, now)

    def handle_timer(self, now: float) -> None:
        for core in self._cores:
            when = core.next_timer()
            if when is not None and when <= now:
                try:
                    core.handle_timer(now)
                except Exception as e:
                    kind = next((t for t, c in self._routes.items() if c is core), None)
                    self._errors.append((e, f"a timer of {type(core).__name__}", kind))

    def take_errors(self) -> list[tuple[Exception, str, type[Message] | None]]:
        """Errors the cores' timers raised since the last call."""
        out, self._errors = self._errors, []
        return out

    def next_timer(self) -> float | None:
        times = [t for t in (c.next_timer() for c in self._cores) if t is not None]
        return min(times) if times else None

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out: list[tuple[Addr, Envelope]] = []
        for core in self._cores:
            out.extend(core.outbox())
        return out

    def events(self) -> list[object]:
        out: list[object] = []
        for core in self._cores:
            out.extend(core.events())
        return out
