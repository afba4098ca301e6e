"""A discrete-event network simulator that drives sans-IO cores directly.

Theory of operation
-------------------
There is no trio task per node and no real time. A single heap holds timed
events ``(time, seq, kind, ...)``; ``seq`` is a global counter, so two events at
the same instant run in the order they were scheduled and a run is exactly
reproducible for a given seed. Three kinds of event exist:

* DELIVER: an envelope reaches a host; its core's ``receive`` runs;
* TIMER: a host's core asked to be woken (``next_timer``); ``handle_timer`` runs;
* CALL: a scenario callback (kill a node at t=30 s, start a lookup, ...).

After any event touches a core, the simulator drains the core's outbox into
the network and (re)schedules its timer, and, if the scenario set
``on_events``, hands it the core's events (as the driver hands them to an
agent's services); otherwise the scenario drains them when it likes.
Timers are invalidated lazily: each host remembers the one instant it is
scheduled for and a *generation* that a kill or restart bumps, so stale heap
entries are skipped when popped.

Envelopes are passed as objects (no encryption or encoding on the hot path);
their sealed size is computed with the real codec when ``measure_bytes`` is on
(the default), which also enforces the wire limits: a core that builds an
envelope too large for any transport fails loudly in simulation. The proof of
the sender (``peerauth``) is stood in for: an envelope's sender is its host's
(the simulator is no adversary), and its size is counted as on the wire, a MAC
to a host heard from in the last ``PAIRED_FOR``, else a signature. Envelopes
over one datagram travel as a stream would: reliably (no loss), after the
latency plus the transfer time at ``stream_bandwidth``.

The network is imperfect on purpose: per-message latency from a pluggable
model, random loss, duplication, directional link loss, partitions (hosts in
different groups cannot talk), and kill/restart of hosts (a killed host drops
everything sent to it; a restarted one gets a fresh core from its factory).
A *frozen* host (SIGSTOP) is stopped like a killed one, but its kernel keeps
what arrives in the socket buffer, up to ``SOCKET_BUFFER``, and a thaw hands
it to the core before anything else happens.
Each host counts messages and bytes sent, received and dropped.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hexamesh.net.base import Addr, Core
from hexamesh.peerauth import PAIRED_FOR, Proof, auth_overhead
from hexamesh.wire import MAX_DATAGRAM, MAX_STREAM_FRAME, Codec, EncodeError, Envelope

_SIGNED_EXTRA = auth_overhead(Proof.SIGNED) - auth_overhead(Proof.PAIRED)

__all__ = [
    "ConstantLatency",
    "GeoLatency",
    "LatencyModel",
    "LogNormalLatency",
    "SimHost",
    "SimNetwork",
    "UniformLatency",
]

_DELIVER = 0
_TIMER = 1
_CALL = 2

# What a stopped process's UDP socket holds: Linux's default receive buffer
# (net.core.rmem_default), each datagram charged its size plus the kernel's
# bookkeeping (skb truesize on x86-64), so ~190 datagrams of 350 bytes; when
# it is full the kernel drops what arrives.
SOCKET_BUFFER = 212_992  # bytes
SKB_OVERHEAD = 768  # bytes per datagram


class LatencyModel(Protocol):
    def __call__(self, src: SimHost, dst: SimHost, rng: random.Random) -> float:
        """One-way delay in seconds for one message from ``src`` to ``dst``."""
        ...


@dataclass(frozen=True, slots=True)
class ConstantLatency:
    delay: float = 0.001  # s; a LAN hop

    def __call__(self, src: SimHost, dst: SimHost, rng: random.Random) -> float:
        return self.delay


@dataclass(frozen=True, slots=True)
class UniformLatency:
    low: float = 0.0005  # s
    high: float = 0.002  # s

    def __call__(self, src: SimHost, dst: SimHost, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """Heavy right tail, as measured RTTs have; ``median`` in seconds."""

    median: float = 0.010
    sigma: float = 0.5

    def __call__(self, src: SimHost, dst: SimHost, rng: random.Random) -> float:
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))


@dataclass(frozen=True, slots=True)
class GeoLatency:
    """Delay grows with distance between host positions in the unit square.

    ``base + per_unit * euclidean distance``, times a jitter factor in
    ``[1, 1 + jitter]``. Gives the honeycomb a real "network distance" to track.
    """

    base: float = 0.0005  # s; switch and stack cost
    per_unit: float = 0.100  # s for crossing the whole square (~ a continent)
    jitter: float = 0.1  # fraction

    def __call__(self, src: SimHost, dst: SimHost, rng: random.Random) -> float:
        (x1, y1), (x2, y2) = src.position, dst.position
        d = math.hypot(x1 - x2, y1 - y2)
        return (self.base + self.per_unit * d) * (1.0 + self.jitter * rng.random())


CoreFactory = Callable[["SimHost"], Core]


class SimHost:
    """One simulated machine: an address, a core and its counters."""

    __slots__ = (
        "addr",
        "alive",
        "backlog",
        "backlog_room",
        "core",
        "dropped_msgs",
        "factory",
        "generation",
        "group",
        "heard_from",
        "index",
        "position",
        "recv_bytes",
        "recv_msgs",
        "rng",
        "sent_bytes",
        "sent_msgs",
        "timer_at",
    )

    def __init__(
        self,
        addr: Addr,
        index: int,
        factory: CoreFactory,
        position: tuple[float, float],
        rng: random.Random,
    ) -> None:
        self.addr = addr
        self.index = index
        self.factory = factory
        self.position = position
        self.rng = rng  # the host's own stream; hand it to its core
        self.alive = True
        self.backlog: list[tuple[Addr, Envelope, int]] | None = None  # frozen: what it holds
        self.backlog_room = 0  # bytes left in a frozen host's socket buffer
        self.group = 0  # partition group; only hosts in one group can talk
        self.generation = 0  # bumped by kill/restart to void pending timers
        self.timer_at: float | None = None
        self.sent_msgs = 0
        self.sent_bytes = 0
        self.recv_msgs = 0
        self.recv_bytes = 0
        self.dropped_msgs = 0  # sent by this host and lost on the way
        self.heard_from: dict[Addr, float] = {}  # host -> when it last reached us (sizes)
        self.core: Core = factory(self)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"<SimHost {self.addr[0]}:{self.addr[1]} {state}>"


class SimNetwork:
    """The event loop, the hosts and the imperfect network between them."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: LatencyModel | None = None,
        loss: float = 0.0,  # probability a datagram is lost
        duplicate: float = 0.0,  # probability a datagram arrives twice
        measure_bytes: bool = True,  # compute sealed sizes (and enforce limits)
        stream_bandwidth: float = 100e6,  # bytes/s for envelopes over one datagram
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency: LatencyModel = latency if latency is not None else ConstantLatency()
        self.loss = loss
        self.duplicate = duplicate
        self.measure_bytes = measure_bytes
        self.stream_bandwidth = stream_bandwidth
        # Called with a host and its core's events after every step that had any.
        self.on_events: Callable[[SimHost, Sequence[Any]], None] | None = None
        self.now = 0.0
        self.hosts: dict[Addr, SimHost] = {}
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._link_loss: dict[tuple[Addr, Addr], float] = {}
        self._sized_message: object = None  # last message sized, and its size
        self._sized_bytes = 0
        # Network-wide counters.
        self.events = 0
        self.delivered = 0
        self.lost = 0  # random loss, link loss
        self.partitioned = 0  # dropped because of a partition
        self.to_dead = 0  # sent to a dead or unknown host
        self.duplicated = 0
        self.streamed = 0  # envelopes that needed a stream
        self.held = 0  # kept in a frozen host's socket buffer for its thaw
        self.buffer_full = 0  # dropped by a frozen host's full socket buffer

    # -- hosts ------------------------------------------------------------

    def host_rng(self, index: int) -> random.Random:
        """A host's own random stream, derived from the seed (not from hash())."""
        return random.Random(self.seed * 1_000_003 + index)

    def add_host(
        self,
        addr: Addr,
        factory: CoreFactory,
        *,
        position: tuple[float, float] | None = None,
    ) -> SimHost:
        if addr in self.hosts:
            raise ValueError(f"address {addr} is taken")
        index = len(self.hosts)
        if position is None:
            position = (self.rng.random(), self.rng.random())
        host = SimHost(addr, index, factory, position, self.host_rng(index))
        self.hosts[addr] = host
        self._touch(host)
        return host

    def kill(self, addr: Addr) -> None:
        """Crash a host: it stops at once, its timers are void, messages to it vanish."""
        host = self.hosts[addr]
        host.alive = False
        host.generation += 1
        host.timer_at = None
        host.backlog = None

    def freeze(self, addr: Addr, *, buffer: int = SOCKET_BUFFER) -> None:
        """Stop a host as SIGSTOP does: its core runs nothing and its timers
        wait, but its kernel takes what arrives into the socket buffer
        (``buffer`` bytes, each message charged its size plus SKB_OVERHEAD;
        once full, what arrives is dropped). ``thaw`` hands it over."""
        self.kill(addr)
        host = self.hosts[addr]
        host.backlog = []
        host.backlog_room = buffer

    def restart(self, addr: Addr) -> SimHost:
        """Start a killed host again with a fresh core (state is lost, as in a crash)."""
        host = self.hosts[addr]
        host.rng = random.Random(self.rng.random())
        host.core = host.factory(host)
        host.backlog = None  # a new process, a new socket
        return self.thaw(addr)

    def thaw(self, addr: Addr) -> SimHost:
        """Resume a stopped host with the core it had (SIGCONT): its state is
        as it was. What its socket buffer held (``freeze``) reaches it first,
        in the order it arrived, then its overdue timers fire. A host stopped
        with ``kill`` holds nothing: what was sent to it is lost."""
        host = self.hosts[addr]
        host.alive = True
        host.generation += 1
        host.timer_at = None
        held, host.backlog = host.backlog or [], None
        for src_addr, env, size in held:
            heapq.heappush(
                self._heap, (self.now, next(self._seq), _DELIVER, host, src_addr, env, size)
            )
        self._touch(host)
        return host

    def partition(self, *groups: Iterable[Addr]) -> None:
        """Split the network: hosts in different groups cannot talk.

        Hosts not named in any group form one more group (group 0).
        """
        for host in self.hosts.values():
            host.group = 0
        for number, group in enumerate(groups, 1):
            for addr in group:
                self.hosts[addr].group = number

    def heal(self) -> None:
        for host in self.hosts.values():
            host.group = 0

    def set_link_loss(self, src: Addr, dst: Addr, probability: float) -> None:
        """Extra loss on one direction of one link (0 removes it)."""
        if probability:
            self._link_loss[(src, dst)] = probability
        else:
            self._link_loss.pop((src, dst), None)

    # -- scheduling -------------------------------------------------------

    def call_at(self, when: float, fn: Callable[[], object]) -> None:
        """Run a scenario callback at simulated time ``when``."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), _CALL, fn))

    def interact(self, addr: Addr, fn: Callable[[Any, float], object]) -> object:
        """Call ``fn(core, now)`` on a live host now, then flush what it sent."""
        host = self.hosts[addr]
        if not host.alive:
            raise RuntimeError(f"{addr} is dead")
        result = fn(host.core, self.now)
        self._touch(host)
        return result

    def _touch(self, host: SimHost) -> None:
        """After the core ran: send its outbox and reschedule its timer."""
        core = host.core
        for dst, env in core.outbox():
            self._send(host, dst, env)
        if self.on_events is not None:
            events = core.events()
            if events:
                self.on_events(host, events)
        when = core.next_timer()
        if when is not None and when != host.timer_at:
            host.timer_at = when
            heapq.heappush(
                self._heap,
                (max(when, self.now), next(self._seq), _TIMER, host, host.generation, when),
            )

    def _send(self, src: SimHost, dst_addr: Addr, env: Envelope) -> None:
        size = 0
        if self.measure_bytes:
            if env.message is self._sized_message:
                # Fan-out of one message to several links: same size (up to the
                # few bytes a msg_id's varint may differ), so encode it once.
                size = self._sized_bytes
            else:
                size = Codec.sealed_size(env, Proof.PAIRED)
                self._sized_message, self._sized_bytes = env.message, size
            if self.now - src.heard_from.get(dst_addr, -math.inf) > PAIRED_FOR:
                size += _SIGNED_EXTRA  # a first contact: signed, not MACed
            if size > MAX_STREAM_FRAME:
                raise EncodeError(f"{type(env.message).__name__} is {size} bytes sealed")
        src.sent_msgs += 1
        src.sent_bytes += size
        dst = self.hosts.get(dst_addr)
        if dst is None:
            self.to_dead += 1
            src.dropped_msgs += 1
            return
        if src.group != dst.group:
            self.partitioned += 1
            src.dropped_msgs += 1
            return
        rng = self.rng
        delay = self.latency(src, dst, rng)
        if size > MAX_DATAGRAM:
            # Over a stream: reliable, slower by the transfer time.
            self.streamed += 1
            delay += size / self.stream_bandwidth
        else:
            loss = self.loss
            if self._link_loss:
                loss = 1.0 - (1.0 - loss) * (1.0 - self._link_loss.get((src.addr, dst_addr), 0.0))
            if loss and rng.random() < loss:
                self.lost += 1
                src.dropped_msgs += 1
                return
            if self.duplicate and rng.random() < self.duplicate:
                self.duplicated += 1
                again = delay + self.latency(src, dst, rng)
                heapq.heappush(
                    self._heap,
                    (self.now + again, next(self._seq), _DELIVER, dst, src.addr, env, size),
                )
        heapq.heappush(
            self._heap, (self.now + delay, next(self._seq), _DELIVER, dst, src.addr, env, size)
        )

    # -- running ----------------------------------------------------------

    def run(self, until: float | None = None, *, max_events: int | None = None) -> int:
        """Process events up to simulated time ``until`` (inclusive); returns the count.

        With no ``until`` it runs until nothing is scheduled (a swarm with
        periodic timers never gets there: give ``until`` or ``max_events``).
        """
        heap = self._heap
        pop = heapq.heappop
        limit = math.inf if until is None else until
        budget = math.inf if max_events is None else max_events
        count = 0
        while heap and heap[0][0] <= limit and count < budget:
            event = pop(heap)
            self.now = event[0]
            kind = event[2]
            count += 1
            if kind == _DELIVER:
                dst = event[3]
                if not dst.alive:
                    if dst.backlog is None:
                        self.to_dead += 1
                    else:
                        self._hold(dst, event[4], event[5], event[6])
                    continue
                src_addr = event[4]
                src = self.hosts[src_addr]
                if src.group != dst.group:
                    # The partition started while it was in flight.
                    self.partitioned += 1
                    src.dropped_msgs += 1
                    continue
                dst.recv_msgs += 1
                dst.recv_bytes += event[6]
                if self.measure_bytes:
                    dst.heard_from[src_addr] = self.now
                self.delivered += 1
                dst.core.receive(event[5], src_addr, self.now)
                self._touch(dst)
            elif kind == _TIMER:
                host = event[3]
                if not host.alive or host.generation != event[4] or host.timer_at != event[5]:
                    continue  # stale: rescheduled, killed or restarted since
                host.timer_at = None
                host.core.handle_timer(self.now)
                self._touch(host)
            else:
                event[3]()
        if until is not None and until > self.now:
            self.now = until
        self.events += count
        return count

    def _hold(self, dst: SimHost, src_addr: Addr, env: Envelope, size: int) -> None:
        """A message reaching a frozen host: into its socket buffer if there is
        room, else dropped."""
        assert dst.backlog is not None
        src = self.hosts[src_addr]
        if src.group != dst.group:
            self.partitioned += 1
            src.dropped_msgs += 1
        elif size + SKB_OVERHEAD > dst.backlog_room:
            self.buffer_full += 1
            src.dropped_msgs += 1
        else:
            dst.backlog_room -= size + SKB_OVERHEAD
            dst.backlog.append((src_addr, env, size))
            self.held += 1

    def pending(self) -> int:
        """Events still scheduled (stale timers included)."""
        return len(self._heap)

    # -- observing --------------------------------------------------------

    def traffic(self) -> dict[str, float]:
        """Network-wide totals, for a simulation's JSON summary."""
        hosts = self.hosts.values()
        return {
            "delivered": self.delivered,
            "lost": self.lost,
            "partitioned": self.partitioned,
            "to_dead": self.to_dead,
            "duplicated": self.duplicated,
            "streamed": self.streamed,
            "held": self.held,
            "buffer_full": self.buffer_full,
            "sent_msgs": sum(h.sent_msgs for h in hosts),
            "sent_bytes": sum(h.sent_bytes for h in hosts),
        }
