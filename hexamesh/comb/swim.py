"""SWIM failure detection over a node's links, with Lifeguard's refinements (sans-IO).

Theory of operation
-------------------
The honeycomb gives each node a few *links* (its six neighbours, plus
shortcuts); this core watches them and spreads what it learns to everyone.

*Probing* (SWIM §3.1). Each protocol period the next link in a shuffled round
robin is probed with ``Probe``; an ``Ack`` within ``probe_timeout`` proves it
alive. Otherwise up to ``indirect_checks`` other links are asked to probe it
for us (``ProbeReq``; SWIM §3.1 "indirect probing"), and if no ack has come
back by the end of the period the target becomes *suspect*. Any message from a
link is proof of life as good as an ack, so a link heard from within the last
period is skipped: busy neighbours cost no probes.

*Suspicion* (SWIM §4.2, Lifeguard §3.2). A suspect is declared *dead* when its
suspicion times out; the timeout starts at ``suspicion_max_mult`` times the
minimum ``suspicion_mult * log10(N) * interval`` and shrinks towards that
minimum as other nodes independently suspect it too. A suspect that hears it
is suspected refutes with a higher *incarnation*; ``alive`` news with a higher
incarnation overrides suspicion and death. A node told it is dead rejoins the
same way.

*Dissemination* (SWIM §4.1). Membership news (alive, suspect, dead) goes into
a broadcast queue, rides on every probe and ack (piggybacking), and, while
there is news, is pushed to ``gossip_nodes`` random links every
``gossip_interval``. Each item is sent ``retransmit_mult * log10(N)`` times, so
news crosses the swarm in O(log N) rounds when links include shortcuts.

*Local health* (Lifeguard §3.1). A probe that fails raises our awareness
score, one that succeeds lowers it; the probe interval and timeout stretch by
``score + 1``, so a node that is itself slow probes less and accuses later.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Annotated

from hexamesh.comb.broadcast import BroadcastQueue
from hexamesh.comb.suspicion import (
    Awareness,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)
from hexamesh.identity import NODE_ID_BYTES
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, Len, MaxLen, Message, Struct, message, struct

__all__ = [
    "Ack",
    "Gossip",
    "MemberState",
    "MemberUpdate",
    "MembershipEvent",
    "Probe",
    "ProbeReq",
    "Swim",
    "SwimConfig",
    "Sync",
]

NodeId = Annotated[bytes, Len(NODE_ID_BYTES)]
MAX_UPDATES = 32  # updates in one message


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate(Struct):
    node: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int
    incarnation: int
    state: MemberState
    by: NodeId  # who says so (confirmations must be independent)


Updates = Annotated[tuple[MemberUpdate, ...], MaxLen(MAX_UPDATES)]


@message(0x0201)
@dataclass(frozen=True, slots=True, kw_only=True)
class Probe(Message):
    target: NodeId  # a probe that reaches the wrong node (a reused address) is ignored
    updates: Updates


@message(0x0202)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    updates: Updates


@message(0x0203)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReq(Message):
    target: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int
    updates: Updates


@message(0x0204)
@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    updates: Updates


MAX_SYNC = 1024  # entries in one push-pull exchange (over a stream)


@message(0x0206)
@dataclass(frozen=True, slots=True, kw_only=True)
class Sync(Message):
    """Push-pull anti-entropy: everything not plainly alive at incarnation 0."""

    updates: Annotated[tuple[MemberUpdate, ...], MaxLen(MAX_SYNC)]
    reply: bool  # False: please answer with yours


SWIM_MESSAGES: tuple[type[Message], ...] = (Probe, Ack, ProbeReq, Gossip, Sync)


@dataclass(frozen=True, kw_only=True)
class SwimConfig:
    probe_interval: float = 1.0  # s; one quiet link probed per period (memberlist LAN)
    probe_timeout: float = 0.5  # s; well above LAN RTT, leaves half the period for indirect probes
    indirect_checks: int = 3  # links asked to probe on our behalf
    suspicion_mult: float = 4.0  # minimum suspicion = mult * log10(N) * interval (memberlist LAN)
    suspicion_max_mult: float = 6.0  # suspicion starts at max_mult times the minimum (Lifeguard)
    suspicion_confirmations: int = 2  # independent accusers that bring it down to the minimum
    # (memberlist uses SuspicionMult - 2; in a honeycomb two other neighbours share each link)
    retransmit_mult: int = 4  # each update sent mult * ceil(log10(N + 1)) times
    gossip_interval: float = 0.2  # s between pushes of news (only while there is news)
    gossip_nodes: int = 3  # links each push goes to
    piggyback_bytes: int = 900  # bytes of updates per message, well inside a datagram
    awareness_max: int = 8  # local health scales timings by at most this factor
    sync_interval: float = (
        30.0  # s between push-pull exchanges with one random link (memberlist: 30 s)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipEvent:
    node: bytes
    addr: Addr
    state: MemberState
    incarnation: int
    at: float


@dataclass(slots=True)
class _Member:
    node: bytes
    addr: Addr
    incarnation: int
    state: MemberState
    since: float
    suspicion_start: float = 0.0
    confirmers: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _Probe:
    target: bytes
    sent: float
    indirect_at: float
    give_up_at: float
    indirect_sent: bool = False


_UPDATE_SIZE = 70  # bytes of one MemberUpdate on the wire, a safe upper estimate for IPv4


class Swim:
    def __init__(
        self, node_id: bytes, addr: Addr, config: SwimConfig, rng: random.Random, now: float
    ) -> None:
        self.me = node_id
        self.addr = addr
        self.config = config
        self._rng = rng
        self.incarnation = 0
        self.members: dict[bytes, _Member] = {}
        # Members in SUSPECT state (timers to watch). A dict, not a set: sets of
        # bytes iterate in hash order, which PYTHONHASHSEED changes per process,
        # and the order of deaths must replay exactly for a given seed.
        self._suspects: dict[bytes, None] = {}
        self.links: list[bytes] = []
        self._order: list[bytes] = []  # probe round robin, reshuffled each round
        self._last_heard: dict[bytes, float] = {}
        self._probes: dict[int, _Probe] = {}  # our seq -> probe
        self._relays: dict[
            int, tuple[Addr, int, float]
        ] = {}  # our seq -> (requester, its seq, expiry)
        self._queue: BroadcastQueue[MemberUpdate] = BroadcastQueue(self._retransmits)
        self.awareness = Awareness(config.awareness_max)
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._events: list[MembershipEvent] = []
        self._next_probe = now + rng.uniform(0, config.probe_interval)  # spread the swarm's probes
        self._next_gossip = now + config.gossip_interval
        self._next_sync = now + rng.uniform(0.5, 1.5) * config.sync_interval
        self.probes_sent = 0
        self.false_suspicions_refuted = 0
        self._announce(now)

    # ------------------------------------------------------------- commands

    def add_member(self, node: bytes, addr: Addr, incarnation: int, now: float) -> None:
        """Learn a member from outside (the honeycomb, the DHT)."""
        self._apply(self._update(node, addr, incarnation, MemberState.ALIVE, node), now)

    def set_links(self, links: list[bytes]) -> None:
        """The nodes to watch: known members only, never ourselves."""
        self.links = [n for n in dict.fromkeys(links) if n != self.me and n in self.members]
        self._order = [n for n in self._order if n in self.links]

    def heard(self, node: bytes, now: float) -> None:
        """Another core got a message from ``node``: proof of life, no probe needed."""
        self._last_heard[node] = now

    def state_of(self, node: bytes) -> MemberState | None:
        member = self.members.get(node)
        return member.state if member else None

    def live_members(self) -> list[bytes]:
        return [n for n, m in self.members.items() if m.state is not MemberState.DEAD]

    def events(self) -> list[MembershipEvent]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------- core interface

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        self._last_heard[env.sender] = now
        updates = getattr(msg, "updates", ())
        for update in updates:
            self._apply(update, now)
        if isinstance(msg, Probe):
            if msg.target == self.me:
                self._send(sender, env.msg_id, Ack(updates=self._piggyback()))
        elif isinstance(msg, Ack):
            probe = self._probes.pop(env.msg_id, None)
            if probe is not None:
                self._last_heard[probe.target] = now
                self.awareness.apply(-1)
            relay = self._relays.pop(env.msg_id, None)
            if relay is not None:
                requester, their_seq, _ = relay
                self._send(requester, their_seq, Ack(updates=self._piggyback()))
        elif isinstance(msg, Sync):
            if not msg.reply:
                self._send(sender, env.msg_id, Sync(updates=self._digest(), reply=True))
        elif isinstance(msg, ProbeReq):
            seq = self._rng.getrandbits(64)
            self._relays[seq] = (sender, env.msg_id, now + self.config.probe_interval)
            self._send(
                (msg.host, msg.port), seq, Probe(target=msg.target, updates=self._piggyback())
            )

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        for seq, probe in list(self._probes.items()):
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                self._ask_indirect(seq, probe)
            if now >= probe.give_up_at:
                del self._probes[seq]
                if self._last_heard.get(probe.target, -1.0) >= probe.sent:
                    continue  # heard from it meanwhile: as good as an ack
                self.awareness.apply(1)
                self._suspect(probe.target, self.me, now)
        for seq, (_, _, expiry) in list(self._relays.items()):
            if now >= expiry:
                del self._relays[seq]
        self._expire_suspicions(now)
        if now >= self._next_probe:
            self._probe_next(now)
            self._next_probe = now + self.awareness.scale(cfg.probe_interval)
        if now >= self._next_gossip:
            self._gossip()
            self._next_gossip = now + cfg.gossip_interval
        if now >= self._next_sync:
            self._sync()
            self._next_sync = now + self._rng.uniform(0.5, 1.5) * cfg.sync_interval

    def next_timer(self) -> float | None:
        times = [self._next_probe, self._next_sync]
        if len(self._queue):
            times.append(self._next_gossip)
        for probe in self._probes.values():
            times.append(probe.give_up_at if probe.indirect_sent else probe.indirect_at)
        for node in self._suspects:
            member = self.members[node]
            times.append(member.suspicion_start + self._suspicion_total(member))
        if self._relays:
            times.append(min(e for _, _, e in self._relays.values()))
        return min(times)

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    # ---------------------------------------------------------------- probing

    def _probe_next(self, now: float) -> None:
        if not self._order:
            self._order = list(self.links)
            self._rng.shuffle(self._order)
        while self._order:
            target = self._order.pop()
            member = self.members.get(target)
            if member is None or member.state is MemberState.DEAD:
                continue
            heard = self._last_heard.get(target, -1.0)
            if member.state is MemberState.ALIVE and now - heard < self.config.probe_interval:
                continue  # it spoke to us within the period: proof enough
            seq = self._rng.getrandbits(64)
            timeout = self.awareness.scale(self.config.probe_timeout)
            self._probes[seq] = _Probe(
                target=target,
                sent=now,
                indirect_at=now + timeout,
                give_up_at=now + self.awareness.scale(self.config.probe_interval),
            )
            self._send(member.addr, seq, Probe(target=target, updates=self._piggyback()))
            self.probes_sent += 1
            return

    def _ask_indirect(self, seq: int, probe: _Probe) -> None:
        member = self.members.get(probe.target)
        if member is None:
            return
        helpers = [
            n
            for n in self.links
            if n != probe.target and self.members[n].state is MemberState.ALIVE
        ]
        self._rng.shuffle(helpers)
        for helper in helpers[: self.config.indirect_checks]:
            req = ProbeReq(
                target=probe.target,
                host=member.addr[0],
                port=member.addr[1],
                updates=self._piggyback(),
            )
            self._send(self.members[helper].addr, seq, req)

    # ------------------------------------------------------------ membership

    def _update(
        self, node: bytes, addr: Addr, incarnation: int, state: MemberState, by: bytes
    ) -> MemberUpdate:
        return MemberUpdate(
            node=node, host=addr[0], port=addr[1], incarnation=incarnation, state=state, by=by
        )

    def _announce(self, now: float) -> None:
        self._broadcast(
            self._update(self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me)
        )

    def _broadcast(self, update: MemberUpdate) -> None:
        self._queue.queue(update.node, update, _UPDATE_SIZE)

    def _retransmits(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self.members) + 1)

    def _emit(self, member: _Member, now: float) -> None:
        self._events.append(
            MembershipEvent(
                node=member.node,
                addr=member.addr,
                state=member.state,
                incarnation=member.incarnation,
                at=now,
            )
        )

    def _apply(self, u: MemberUpdate, now: float) -> None:
        if u.node == self.me:
            if u.state is not MemberState.ALIVE and u.incarnation >= self.incarnation:
                # Suspected or declared dead: refute with a higher incarnation (SWIM §4.2).
                self.incarnation = u.incarnation + 1
                self.false_suspicions_refuted += 1
                self._announce(now)
            return
        member = self.members.get(u.node)
        addr = (u.host, u.port)
        if member is None:
            # A stranger (alive, suspect, or dead: a tombstone, so that a rejoin
            # with an old incarnation is not believed, and the news keeps spreading).
            member = _Member(u.node, addr, u.incarnation, u.state, now)
            self.members[u.node] = member
            if u.state is MemberState.SUSPECT:
                member.suspicion_start = now
                member.confirmers = {u.by}
                self._suspects[u.node] = None
            self._emit(member, now)
            if u.state is not MemberState.ALIVE or u.incarnation > 0:
                # Join news (alive at incarnation 0) is not re-gossiped by strangers:
                # the joiner's own broadcast and its dances reach its neighbourhood,
                # and nobody needs the full member list (the DHT finds anyone).
                self._broadcast(u)
            return
        if u.state is MemberState.ALIVE:
            if u.incarnation > member.incarnation:
                changed = member.state is not MemberState.ALIVE
                member.incarnation, member.state, member.addr, member.since = (
                    u.incarnation,
                    MemberState.ALIVE,
                    addr,
                    now,
                )
                member.confirmers = set()
                if changed:
                    self._emit(member, now)
                self._broadcast(u)
        elif u.state is MemberState.SUSPECT:
            if u.incarnation < member.incarnation or member.state is MemberState.DEAD:
                return
            if member.state is MemberState.SUSPECT and u.incarnation == member.incarnation:
                if u.by not in member.confirmers:
                    member.confirmers.add(u.by)  # an independent confirmation (Lifeguard)
                    self._broadcast(u)
                return
            self._suspect(u.node, u.by, now, incarnation=u.incarnation)
        elif member.state is not MemberState.DEAD and u.incarnation >= member.incarnation:
            member.incarnation, member.state, member.since = u.incarnation, MemberState.DEAD, now
            self._emit(member, now)
            self._broadcast(u)

    def _suspect(self, node: bytes, by: bytes, now: float, incarnation: int | None = None) -> None:
        member = self.members.get(node)
        if member is None or member.state is MemberState.DEAD:
            return
        if member.state is MemberState.SUSPECT:
            # Our own failed probe of a node others suspect: an independent confirmation.
            if by not in member.confirmers:
                member.confirmers.add(by)
                self._broadcast(
                    self._update(node, member.addr, member.incarnation, MemberState.SUSPECT, by)
                )
            return
        if incarnation is not None:
            member.incarnation = incarnation
        member.state = MemberState.SUSPECT
        self._suspects[node] = None
        member.since = member.suspicion_start = now
        member.confirmers = {by}
        self._emit(member, now)
        self._broadcast(
            self._update(node, member.addr, member.incarnation, MemberState.SUSPECT, by)
        )

    def _suspicion_bounds(self) -> tuple[float, float, int]:
        cfg = self.config
        minimum = suspicion_timeout(cfg.suspicion_mult, len(self.members) + 1, cfg.probe_interval)
        expected = cfg.suspicion_confirmations
        return minimum, cfg.suspicion_max_mult * minimum, expected

    def _suspicion_total(self, member: _Member) -> float:
        minimum, maximum, expected = self._suspicion_bounds()
        confirmations = max(
            0, len(member.confirmers) - 1
        )  # the first accuser is not a confirmation
        return remaining_suspicion_time(confirmations, expected, 0.0, minimum, maximum)

    def _expire_suspicions(self, now: float) -> None:
        for node in list(self._suspects):
            member = self.members[node]
            if member.state is not MemberState.SUSPECT:
                self._suspects.pop(node, None)
                continue
            if now >= member.suspicion_start + self._suspicion_total(member):
                self._suspects.pop(node, None)
                member.state, member.since = MemberState.DEAD, now
                self._emit(member, now)
                self._broadcast(
                    self._update(
                        member.node, member.addr, member.incarnation, MemberState.DEAD, self.me
                    )
                )

    # ---------------------------------------------------------- dissemination

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        taken = self._queue.take(self.config.piggyback_bytes)
        return tuple(taken[:MAX_UPDATES])

    def _gossip(self) -> None:
        if not len(self._queue) or not self.links:
            return
        live = [n for n in self.links if self.members[n].state is not MemberState.DEAD]
        self._rng.shuffle(live)
        for node in live[: self.config.gossip_nodes]:
            updates = self._piggyback()
            if not updates:
                return
            self._send(self.members[node].addr, self._rng.getrandbits(64), Gossip(updates=updates))

    def _digest(self) -> tuple[MemberUpdate, ...]:
        """What anti-entropy exchanges: news that gossip may have lost (deaths,
        suspicions, refutations), newest first, at most MAX_SYNC entries."""
        notable = [
            m
            for m in self.members.values()
            if m.state is not MemberState.ALIVE or m.incarnation > 0
        ]
        notable.sort(key=lambda m: -m.since)
        out = [self._update(m.node, m.addr, m.incarnation, m.state, self.me) for m in notable]
        if self.incarnation > 0:
            out.insert(
                0, self._update(self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me)
            )
        return tuple(out[:MAX_SYNC])

    def _sync(self) -> None:
        live = [n for n in self.links if self.members[n].state is MemberState.ALIVE]
        if not live:
            return
        peer = self._rng.choice(live)
        self._send(
            self.members[peer].addr,
            self._rng.getrandbits(64),
            Sync(updates=self._digest(), reply=False),
        )

    def _send(self, addr: Addr, msg_id: int, msg: Message) -> None:
        self._outbox.append((addr, Envelope(sender=self.me, msg_id=msg_id, message=msg)))
