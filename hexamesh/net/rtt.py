"""Round-trip-time probing: the smallest real protocol core (sans-IO).

Theory of operation
-------------------
A :class:`RttProbe` answers every ``Ping`` with a ``Pong`` carrying the same
message id, and measures RTT to the addresses it watches: one ping per
``interval`` each, a pong within ``timeout`` gives a sample, none gives a loss.
Samples are smoothed as TCP does (RFC 6298 §2: SRTT <- 7/8 SRTT + 1/8 R).

It is what a joining node uses to find its closest peer (DESIGN, "Honeycomb":
"a joiner measures RTT to a few peers"), what ``hexamesh agent --join`` uses to
show that a seed is reachable, and the reference shape for the bigger cores.

Each ping and pong also tells the other side the address it is reached at
(a ``Ping`` the address it was sent to, a ``Pong`` the address the ping came
from), as libp2p's identify does: these reports (``Observation``) go out as
events beside the samples (``RttSample``), and the agent decides what to
advertise (``net.address``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated

from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, MaxLen, Message, message

__all__ = ["Observation", "Ping", "Pong", "RttConfig", "RttProbe", "RttSample"]

Host = Annotated[str, MaxLen(64)]


@message(0x0001)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    host: Host  # where the pinger sent this: how it reaches us
    port: int


@message(0x0002)
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Message):
    host: Host  # where the ping came from: how the pinger is reached
    port: int


@dataclass(frozen=True, kw_only=True)
class RttConfig:
    interval: float = 1.0  # s between two probes of one watched address
    timeout: float = 2.0  # s; a pong later than this counts as a loss
    max_watched: int = 64  # addresses watched at once; more is refused
    max_outstanding: int = 256  # pings awaiting a pong; the oldest is forgotten


@dataclass(frozen=True, slots=True, kw_only=True)
class RttSample:
    addr: Addr
    rtt: float | None  # seconds; None when the probe was lost
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """A peer's report of the address it reaches us at."""

    # The reporter's IP address: a node id costs nothing to make, a source
    # address a little more (and a pong comes from one we chose to ping).
    reporter: str
    seen: Addr
    at: float


class RttProbe:
    def __init__(self, node_id: bytes, config: RttConfig, rng: random.Random) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self._watched: dict[Addr, float] = {}  # addr -> next probe time
        self._outstanding: dict[int, tuple[Addr, float]] = {}  # msg id -> (addr, sent at)
        self._srtt: dict[Addr, float] = {}
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._events: list[RttSample | Observation] = []
        self.lost = 0

    # -- commands ---------------------------------------------------------

    def watch(self, addr: Addr, now: float) -> None:
        """Probe ``addr`` now and then every ``interval``."""
        if addr not in self._watched and len(self._watched) >= self.config.max_watched:
            raise ValueError(f"already watching {self.config.max_watched} addresses")
        self._watched[addr] = now

    def ping(self, addr: Addr, now: float) -> int:
        """Send one probe; returns its message id."""
        msg_id = self._rng.getrandbits(64)
        if len(self._outstanding) >= self.config.max_outstanding:
            oldest = next(iter(self._outstanding))
            del self._outstanding[oldest]
        self._outstanding[msg_id] = (addr, now)
        ping = Ping(host=addr[0][:64], port=addr[1])
        self._outbox.append((addr, Envelope(sender=self.node_id, msg_id=msg_id, message=ping)))
        return msg_id

    def srtt(self, addr: Addr) -> float | None:
        """Smoothed RTT in seconds, or None before the first sample."""
        return self._srtt.get(addr)

    # -- the Core interface -----------------------------------------------

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        if isinstance(msg, Ping):
            pong = Pong(host=sender[0][:64], port=sender[1])
            reply = Envelope(sender=self.node_id, msg_id=env.msg_id, message=pong)
            self._outbox.append((sender, reply))
            self._observe(sender[0], (msg.host, msg.port), now)
        elif isinstance(msg, Pong):
            pending = self._outstanding.pop(env.msg_id, None)
            if pending is None:
                return  # late, duplicated or unsolicited
            self._observe(sender[0], (msg.host, msg.port), now)
            addr, sent = pending
            rtt = now - sent
            old = self._srtt.get(addr)
            self._srtt[addr] = rtt if old is None else old + (rtt - old) / 8
            self._emit(RttSample(addr=addr, rtt=rtt, at=now))

    def handle_timer(self, now: float) -> None:
        deadline = now - self.config.timeout
        for msg_id, (addr, sent) in list(self._outstanding.items()):
            if sent <= deadline:
                del self._outstanding[msg_id]
                self.lost += 1
                self._emit(RttSample(addr=addr, rtt=None, at=now))
        for addr, due in self._watched.items():
            if due <= now:
                self.ping(addr, now)
                self._watched[addr] = now + self.config.interval

    def next_timer(self) -> float | None:
        times = list(self._watched.values())
        times.extend(sent + self.config.timeout for _, sent in self._outstanding.values())
        return min(times) if times else None

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[RttSample | Observation]:
        """Samples, losses and peers' reports of our address since the last call."""
        out, self._events = self._events, []
        return out

    def _observe(self, reporter: str, seen: Addr, now: float) -> None:
        self._emit(Observation(reporter=reporter, seen=seen, at=now))

    def _emit(self, event: RttSample | Observation) -> None:
        if len(self._events) < self.config.max_outstanding:  # undrained: bounded
            self._events.append(event)
