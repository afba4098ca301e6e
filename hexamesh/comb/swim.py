"""SWIM failure detection over a node's links, with Lifeguard's refinements (sans-IO).

Theory of operation
-------------------
The honeycomb gives each node a few *watched links* (its comb neighbours) and
a few more *spread links* (shortcuts); this core watches the first and tells
both what it learns.

*Probing* (SWIM §3.1). Comb neighbours hear from each other every heartbeat
(waggle pushes; any message is proof of life), so a link is probed only when
it has been silent for ``quiet_after``: one lost heartbeat costs one probe,
and a dead neighbour is probed at once, not when a round robin reaches it.
A probe with no ``Ack`` within ``probe_timeout`` is retried through up to
``indirect_checks`` other links (``ProbeReq``), which answer ``Nack`` when
they cannot reach the target either; no ack by ``probe_interval`` makes the
target *suspect*. A link keeps being probed while it is silent, at most once
per ``probe_interval``.

*Suspicion* (SWIM §4.2, Lifeguard §3.2). Only a node's watchers act on a
suspicion: they time it out, confirm it with their own failed probes, and
tell each other. The timeout starts at ``suspicion_max_mult`` times the
minimum ``suspicion_mult * log10(N) * interval`` and shrinks towards that
minimum as other watchers independently suspect it too. A suspect hears of
it at once (the accuser's probes and flood carry it) and refutes with a
higher *incarnation*; ``alive`` news with a higher incarnation overrides
suspicion and death. A node told it is dead rejoins the same way. Nodes that
do not watch a suspect ignore the suspicion and wait for the verdict, so a
refutation only has to reach the few watchers, who are one hop away.

*Dissemination* (SWIM §4.1, as a flood over the comb). News (a death, a
suspicion among watchers, a refutation, a rejoin) is batched for at most
``gossip_interval`` (it joins the next flood already due) and then sent to
every link and shortcut that has not told us the same thing, and once more
``flood_repeat`` later to the comb links: ``flood_rounds`` copies per link
at most and one per shortcut, so each node sends one item about
``flood_rounds * links + shortcuts`` times, the same order as SWIM's
``retransmit_mult * log10(N)``. The second round repairs a lost copy; a
shortcut only speeds the flood across the comb, which carries it anyway.
Over a comb with shortcuts a flood reaches every node in O(log N) hops, and a
node misses it only if every copy from every link is lost. News also rides
on every probe and ack (retransmit-limited piggybacking) until its flood is
done; after that it only cost bytes. Join news is not
flooded: a joiner's neighbourhood learns it from its dances, and nobody
needs a full member list (the DHT finds anyone).

*Local health* (Lifeguard §3.1). A failed probe raises our awareness score by
the number of helpers that did not even answer ``Nack`` (all of them when
there were none to ask), an answered probe lowers it; timings stretch by
``score + 1``, so a node that is itself slow or cut off probes less and
accuses later instead of accusing healthy peers.

*Anti-entropy.* Every ``sync_interval`` a node swaps its notable news
(deaths, suspicions, refutations) with one random link (push-pull), which
repairs what a lost flood missed. It asks with its suspicions (few, and
each a confirmation for another watcher) and a fingerprint of its deaths and
refutations of the last ``sync_news_age``; a link whose own fingerprint
differs answers with all its news, and the asker then sends what that
answer lacked; one that agrees answers with its suspicions, if any. After a
mass failure two neighbours hold the same thousands of deaths, and a
push-pull between them costs two small datagrams instead of two digests of
a thousand entries. A node also asks each new comb link for a push-pull
``new_link_sync`` after linking: the flood does not resend finished news to
links made later, and a node whose links all died would hear nothing until
its next push-pull.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
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
from hexamesh.limits import MAX_HEARSAY, MAX_INCARNATION, MAX_INCARNATION_JUMP
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, Len, MaxLen, Message, Struct, message, struct

__all__ = [
    "Ack",
    "Gossip",
    "MemberState",
    "MemberUpdate",
    "MembershipEvent",
    "Nack",
    "Probe",
    "ProbeReq",
    "Swim",
    "SwimConfig",
    "Sync",
]

NodeId = Annotated[bytes, Len(NODE_ID_BYTES)]
MAX_UPDATES = 32  # updates in one message
# A helper that cannot reach a target says so (Nack) at this share of the probe
# timeout: the requester, which waits the whole timeout, hears it in time.
NACK_AT = 0.8
# Push-pulls are drawn this many sync_intervals apart, uniformly: nodes that
# joined together do not all sync in the same second.
SYNC_SPREAD = (0.5, 1.5)
NEVER = -math.inf  # "when" of something that has not happened
PIGGYBACK_QUEUE = 1024  # news items waiting to ride probes and acks; the most-sent go first


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

# The steps of a push-pull exchange (``Sync.step``).
SYNC_ASK = 0  # the asker's suspicions and fingerprint (of its deaths and refutations)
SYNC_ANSWER = 1  # the answerer's digest if the fingerprints differ, else its suspicions
SYNC_REST = 2  # what the answer lacked of the asker's digest; not answered


@message(0x0206)
@dataclass(frozen=True, slots=True, kw_only=True)
class Sync(Message):
    """Push-pull anti-entropy of notable news (not plainly alive at incarnation 0)."""

    updates: Annotated[tuple[MemberUpdate, ...], MaxLen(MAX_SYNC)]
    step: int  # SYNC_ASK, SYNC_ANSWER or SYNC_REST
    fingerprint: int  # of the sender's recent news (``Swim._fingerprint``), 64 bits

    def __post_init__(self) -> None:
        if self.step not in (SYNC_ASK, SYNC_ANSWER, SYNC_REST):
            raise ValueError(f"unknown sync step {self.step}")
        if not 0 <= self.fingerprint < 1 << 64:
            raise ValueError("a sync fingerprint is 64 bits")


@message(0x0207)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    """A helper could not reach the target of a ``ProbeReq`` either (Lifeguard)."""


SWIM_MESSAGES: tuple[type[Message], ...] = (Probe, Ack, ProbeReq, Gossip, Sync, Nack)


@dataclass(frozen=True, kw_only=True)
class SwimConfig:
    probe_interval: float = (
        1.0  # s; a silent link is probed at most once per interval (memberlist LAN)
    )
    quiet_after: float = 1.25  # s of silence before a probe: links dance every 1 s, so one
    # lost heartbeat costs one probe and a dead link is probed 1.25 s after its last word
    probe_timeout: float = (
        0.5  # s; well above LAN RTT, leaves half the interval for indirect probes
    )
    indirect_checks: int = 3  # links asked to probe on our behalf (memberlist IndirectChecks)
    suspicion_mult: float = 4.0  # minimum suspicion = mult * log10(N) * interval (memberlist LAN)
    suspicion_max_mult: float = 6.0  # suspicion starts at max_mult times the minimum (Lifeguard)
    suspicion_confirmations: int = 2  # independent accusers that bring it down to the minimum
    # (memberlist uses SuspicionMult - 2; in a honeycomb two other neighbours share each link)
    retransmit_mult: int = 4  # piggybacked news rides mult * ceil(log10(N + 1)) messages
    gossip_interval: float = 0.1  # s; news waits at most this long for its flood (batching)
    flood_rounds: int = 2  # copies of one item a comb link gets at most (a lost datagram
    # is repaired by the second round; a link that told us the news gets none); a
    # shortcut gets one
    flood_repeat: float = 0.5  # s between the rounds (time for links to echo it back)
    piggyback_bytes: int = 900  # bytes of updates per probe or ack, well inside a datagram
    awareness_max: int = 8  # local health scales timings by at most this factor
    sync_interval: float = 30.0  # s between push-pull exchanges with one random link (memberlist)
    reconnect_interval: float = 30.0  # s between tries to reach one member held dead (Serf's
    # reconnect): after a partition heals, each side holds the other dead and, having
    # relinked around it, never hears from it; the one reached refutes and it spreads
    new_link_sync: float = 3.0  # s after a comb link is made, a push-pull with it: the flood
    # does not resend finished news to links made later, and a node whose links all died
    # heard nothing until its next push-pull (up to 45 s). By then the flood is over, so
    # the fingerprints agree and the ask is one datagram, unless news is really missing
    sync_news_age: float = 90.0  # s; older news is no longer exchanged: every node has had
    # a few syncs to pull what it missed (memberlist forgets the dead after 30 s). Without
    # it, after a mass failure every sync carried a thousand old deaths (tens of KB) forever.
    tombstone_ttl: float = 360.0  # s a member held dead is kept, then forgotten (reaped),
    # cells and address with it (Comb). It guards against stale copies bringing the node
    # back: a dance leaves views after 60 s, news leaves push-pull after 90 s, a dead
    # node's cell lease runs out after 60 s and its model: lease after 300 s. Serf keeps
    # tombstones 24 h, for reconnects across long partitions; here a swarm under churn
    # (new identities) would hold every death of the day: 72,000 a day at 5 % of 1,000
    # nodes a minute, where 6 min hold ~300 (docs/decisions.md).
    hearsay_ttl: float = 360.0  # s a live member that is neither link nor shortcut is kept
    # after the last news of it and the last word from it (a former link or shortcut, a
    # node heard of in a flood); a relink adds it back when it is a link again
    reap_interval: float = 30.0  # s between sweeps for members and notes past their time


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipEvent:
    node: bytes
    addr: Addr
    state: MemberState
    incarnation: int
    at: float


_NOBODY: frozenset[bytes] = frozenset()


@dataclass(slots=True)
class _Member:
    node: bytes
    addr: Addr
    incarnation: int
    state: MemberState
    since: float
    suspicion_start: float = 0.0
    # Accusers of a suspect. Shared and empty otherwise: after a mass failure a
    # node holds thousands of tombstones, and an empty set each is 216 bytes.
    confirmers: AbstractSet[bytes] = _NOBODY


@dataclass(slots=True)
class _Probe:
    target: bytes
    sent: float
    indirect_at: float
    give_up_at: float
    indirect_sent: bool = False
    helpers: int = 0  # ProbeReqs sent
    nackers: set[bytes] = field(default_factory=set)  # helpers that could not reach it either


@dataclass(slots=True)
class _Relay:
    requester: Addr
    their_seq: int
    nack_at: float  # tell the requester we failed too (Lifeguard)


@dataclass(slots=True)
class _News:
    update: MemberUpdate
    due: float  # next flood round
    order: int  # flood order: news keeps its place while it is replaced, new news goes last
    rounds: int = 0  # rounds done
    # Links that have it already: a list, as a handful at most (an empty set is 216
    # bytes, and a node floods thousands of items at once in a mass failure).
    told_us: list[bytes] = field(default_factory=list)


@functools.lru_cache(maxsize=1 << 16)
def _entry_hash(node: bytes, incarnation: int, state: MemberState) -> int:
    """64 bits of one news entry for a fingerprint (a keyed hash would add
    nothing: only holders of the swarm key can send a Sync). Memoized: a node
    hashes every death it holds for each push-pull, and after a mass failure
    it holds thousands (12 % of a 3,000-node simulation's time after the kill)."""
    data = node + incarnation.to_bytes(8, "big") + bytes((state,))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _news_slot(update: MemberUpdate) -> bytes:
    """Where news about a node sits in ``Swim._news[node]``: one entry per
    suspicion and accuser, one (b"") per verdict or refutation."""
    return update.by if update.state is MemberState.SUSPECT else b""


_UPDATE_SIZE = 70  # bytes of one MemberUpdate on the wire, a safe upper estimate for IPv4
_FLOOD_BYTES = 1100  # updates per flood datagram (inside MAX_DATAGRAM with envelope and seal)


class Swim:
    def __init__(
        self,
        node_id: bytes,
        addr: Addr,
        config: SwimConfig,
        rng: random.Random,
        now: float,
        *,
        incarnation: int = 0,  # ours when we last ran (the agent keeps it on disk)
    ) -> None:
        self.me = node_id
        self.addr = addr
        self.config = config
        self._rng = rng
        self.incarnation = incarnation
        self._refuted_at = NEVER  # when we last raised our incarnation
        self.members: dict[bytes, _Member] = {}
        # Members in SUSPECT state (timers to watch). A dict, not a set: sets of
        # bytes iterate in hash order, which PYTHONHASHSEED changes per process,
        # and the order of deaths must replay exactly for a given seed.
        self._suspects: dict[bytes, None] = {}
        # Members held dead -> the incarnation they are held dead at (a dict:
        # ordered, see above). Read by the waggle next to us (``dead``).
        self._dead: dict[bytes, int] = {}
        self.links: list[bytes] = []  # watched
        self.spread: list[bytes] = []  # told news: watched links and shortcuts
        self._watched: set[bytes] = set()
        self._quiet_until: dict[bytes, float] = {}  # watched link -> probe it if silent by then
        self._probing: dict[bytes, int] = {}  # target -> seq of the probe in flight
        self._heard_at: dict[bytes, float] = {}  # node -> last message from it
        self._told_dead: dict[bytes, float] = {}  # node -> when we told it it is dead
        self._corrected: dict[bytes, float] = {}  # node -> when we last corrected its news
        self._stale: list[_Member] = []  # returned members the message at hand said were dead
        self._probes: dict[int, _Probe] = {}  # our seq -> probe
        self._relays: dict[int, _Relay] = {}  # our seq -> probe we make for another node
        # Piggybacking rides probes and acks, a dozen items each: a thousand queued
        # is plenty (the flood carries the news; each item is ~300 bytes here).
        self._queue: BroadcastQueue[MemberUpdate] = BroadcastQueue(
            self._retransmits, max_items=PIGGYBACK_QUEUE
        )
        # News being flooded: node -> accuser (or b"") -> news. By node, so that a
        # verdict replaces a node's suspicions without a scan of all the news: in
        # a mass failure a node holds thousands of items at once.
        self._news: dict[bytes, dict[bytes, _News]] = {}
        self._news_due: list[tuple[float, int, _News]] = []  # heap of rounds; stale ones skipped
        self._news_serial = 0  # tie-break in the heap, and ``_News.order``
        self._flood_at: float | None = None
        self.awareness = Awareness(config.awareness_max)
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._events: list[MembershipEvent] = []
        self._next_sync = now + rng.uniform(*SYNC_SPREAD) * config.sync_interval
        self._next_health = now + config.probe_interval
        self._next_reconnect = now + config.reconnect_interval
        self._new_links: dict[bytes, float] = {}  # comb link made lately -> push-pull with it then
        self._next_reap = now + config.reap_interval
        # Members we only heard of (not added by the comb as links, shortcuts or
        # the nodes behind suspects), oldest first: at most MAX_HEARSAY.
        self._hearsay: dict[bytes, None] = {}
        self._reaped: list[
            bytes
        ] = []  # forgotten since ``take_reaped`` (the Comb drops their cells)
        # a link was suspected or died, or a node came back (for the owner of links)
        self.relink_needed = False
        self.left = False  # we left gracefully (``leave``): a process on its way out
        # Who else watches a node (its other neighbours, known to the owner of the
        # map): our own accusations go to them directly, so their suspicions
        # confirm each other even where they are not linked to each other.
        self.other_watchers: Callable[[bytes], list[Addr]] = lambda node: []
        self.probes_sent = 0
        self.false_suspicions_refuted = 0
        # Updates refused: an incarnation past MAX_INCARNATION, or a claim about
        # us too far past our own (MAX_INCARNATION_JUMP): forged or corrupt.
        self.refused = 0
        self._announce(now)

    # ------------------------------------------------------------- commands

    def add_member(self, node: bytes, addr: Addr, incarnation: int, now: float) -> None:
        """Learn a member from outside (the honeycomb, the DHT)."""
        self._apply(self._update(node, addr, incarnation, MemberState.ALIVE, node), self.me, now)
        self._hearsay.pop(node, None)  # first-hand now

    def set_links(self, links: list[bytes], now: float, spread: Sequence[bytes] = ()) -> None:
        """Watch ``links``; tell news to them and to ``spread``. Known members
        only, never ourselves."""
        had_links = bool(self.spread)
        was_watched = self._watched
        self.links = [n for n in dict.fromkeys(links) if n != self.me and n in self.members]
        self.spread = [
            n for n in dict.fromkeys([*self.links, *spread]) if n != self.me and n in self.members
        ]
        self._watched = set(self.links)
        for node in self.links:
            # A new link is probed at once: after a death it is often the
            # next watcher of a node nobody else watches any more.
            self._quiet_until.setdefault(node, now)
        for node in list(self._quiet_until):
            if node not in self._watched:
                del self._quiet_until[node]
        if had_links:  # (first links: a push-pull at once, below)
            for node in self.links:
                if node not in was_watched:
                    self._new_links[node] = now + self.config.new_link_sync
        for node in list(self._new_links):
            if node not in self._watched:
                del self._new_links[node]
        if self.spread and not had_links:
            # Our first links (we just joined, or came back): swap news with one
            # now, as memberlist's join does a push-pull, instead of in up to
            # 45 s. It brings the recent news, and the link corrects any old
            # death we picked up before we had anyone to tell it to.
            self._next_sync = min(self._next_sync, now)

    def readdress(self, addr: Addr, now: float) -> None:
        """We are reached at ``addr`` from now on: announce it as a refutation
        is announced (alive at a higher incarnation, which wins everywhere)."""
        self.addr = addr
        self.incarnation += 1
        self._refuted_at = now
        self._announce(now)

    def reached_at(self, node: bytes, addr: Addr) -> None:
        """``node``'s messages come from ``addr``: probe it there (``Comb._heard_from``)."""
        member = self.members.get(node)
        if member is not None:
            member.addr = addr

    def heard(self, node: bytes, now: float) -> None:
        """A message came from ``node``: proof of life, no probe needed for a while."""
        self._heard_at[node] = now
        if node in self._quiet_until:
            self._quiet_until[node] = now + self.awareness.scale(self.config.quiet_after)

    def tell_dead(self, node: bytes, addr: Addr, now: float) -> None:
        """``node``, which we hold dead, spoke to us: tell it, so it rejoins with a
        higher incarnation (at most once per probe interval)."""
        member = self.members.get(node)
        if member is None or member.state is not MemberState.DEAD:
            return
        if now - self._told_dead.get(node, NEVER) < self.config.probe_interval:
            return
        self._told_dead[node] = now
        verdict = self._update(node, member.addr, member.incarnation, MemberState.DEAD, self.me)
        self._send(addr, self._rng.getrandbits(64), Gossip(updates=(verdict,)))

    def leave(self, now: float) -> None:
        """Leave gracefully: tell every link at once that we are gone (they relink
        without waiting for a timeout). Coming back later is a rejoin."""
        self.left = True
        self.incarnation += 1
        bye = self._update(self.me, self.addr, self.incarnation, MemberState.DEAD, self.me)
        for node in self.spread:
            member = self.members[node]
            if member.state is not MemberState.DEAD:
                self._send(member.addr, self._rng.getrandbits(64), Gossip(updates=(bye,)))

    def state_of(self, node: bytes) -> MemberState | None:
        member = self.members.get(node)
        return member.state if member else None

    def dead_members(self) -> list[bytes]:
        return list(self._dead)

    @property
    def dead(self) -> Mapping[bytes, int]:
        """Members held dead -> their incarnation then (a live view, not a copy)."""
        return self._dead

    def take_reaped(self) -> list[bytes]:
        """Members forgotten since the last call (their tombstone or hearsay aged out)."""
        out, self._reaped = self._reaped, []
        return out

    @property
    def has_events(self) -> bool:
        """Are there membership changes ``events()`` has not handed out yet?"""
        return bool(self._events)

    def events(self) -> list[MembershipEvent]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------- core interface

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        self.heard(env.sender, now)
        self.tell_dead(env.sender, sender, now)
        for update in getattr(msg, "updates", ()):
            self._apply(update, env.sender, now)
        if self._stale:
            self._correct(env.sender, sender, now)
        if isinstance(msg, Probe):
            if msg.target == self.me:
                self._send(sender, env.msg_id, Ack(updates=self._piggyback()))
        elif isinstance(msg, Ack):
            probe = self._probes.pop(env.msg_id, None)
            if probe is not None:
                self._probing.pop(probe.target, None)
                self.heard(probe.target, now)
                self.awareness.apply(-1)
            relay = self._relays.pop(env.msg_id, None)
            if relay is not None:
                self._send(relay.requester, relay.their_seq, Ack(updates=self._piggyback()))
        elif isinstance(msg, Nack):
            probe = self._probes.get(env.msg_id)
            if probe is not None:
                probe.nackers.add(env.sender)
        elif isinstance(msg, Sync):
            self._sync_step(msg, sender, env.msg_id, now)
        elif isinstance(msg, ProbeReq):
            seq = self._rng.getrandbits(64)
            nack_at = now + NACK_AT * self.config.probe_timeout  # before the requester gives up
            self._relays[seq] = _Relay(sender, env.msg_id, nack_at)
            self._send(
                (msg.host, msg.port), seq, Probe(target=msg.target, updates=self._piggyback())
            )

    def handle_timer(self, now: float) -> None:
        self._check_probes(now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.nack_at:
                del self._relays[seq]
                self._send(relay.requester, relay.their_seq, Nack())
        self._expire_suspicions(now)
        if now >= self._next_health:
            # Links that keep dancing are answered probes in all but name: our
            # network works, so recover from a burst of failures (Lifeguard).
            self._next_health = now + self.config.probe_interval
            if any(
                now - self._heard_at.get(n, NEVER) < self.config.probe_interval for n in self.links
            ):
                self.awareness.apply(-1)
        self._probe_quiet_links(now)
        if self._flood_at is not None and now >= self._flood_at:
            self._flood(now)
        if now >= self._next_sync:
            self._sync(now)
            self._next_sync = now + self._rng.uniform(*SYNC_SPREAD) * self.config.sync_interval
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            self._reconnect(now)
        for node, due in list(self._new_links.items()):
            if now >= due:
                del self._new_links[node]
                self._sync(now, node)
        if now >= self._next_reap:
            self._next_reap = now + self.config.reap_interval
            self._reap(now)

    def _reap(self, now: float) -> None:
        """Forget members past their time: the dead after ``tombstone_ttl``, live
        ones that are neither link nor shortcut after ``hearsay_ttl`` without
        news of them or a word from them. Never a link, a shortcut or a suspect;
        the notes kept per node go with them."""
        cfg = self.config
        keep = set(self.spread) | self._watched
        for node in list(self._dead):
            member = self.members[node]
            if node not in keep and now - member.since > cfg.tombstone_ttl:
                self._forget(node)
        quiet = now - cfg.hearsay_ttl
        heard_at = self._heard_at
        for node, member in list(self.members.items()):
            if (
                member.state is MemberState.ALIVE
                and member.since < quiet
                and node not in keep
                and heard_at.get(node, -math.inf) < quiet
            ):
                self._forget(node)
        for notes in (self._heard_at, self._told_dead, self._corrected):
            for node, at in list(notes.items()):
                if node not in self.members and now - at > cfg.tombstone_ttl:
                    del notes[node]

    def _forget(self, node: bytes) -> None:
        self.members.pop(node, None)
        self._dead.pop(node, None)
        self._suspects.pop(node, None)
        self._hearsay.pop(node, None)
        self._news.pop(node, None)  # its heap entries are stale now, skipped when due
        self._reaped.append(node)

    def next_timer(self) -> float | None:
        # Called after every event: plain loops, no lists.
        soonest = self._next_sync
        if self._next_reap < soonest:
            soonest = self._next_reap
        if self._dead and self._next_reconnect < soonest:
            soonest = self._next_reconnect
        if self.awareness.score and self._next_health < soonest:
            soonest = self._next_health
        if self._flood_at is not None and self._flood_at < soonest:
            soonest = self._flood_at
        probing = self._probing
        for node, until in self._quiet_until.items():
            if until < soonest and node not in probing:
                soonest = until
        for probe in self._probes.values():
            due = probe.give_up_at if probe.indirect_sent else probe.indirect_at
            if due < soonest:
                soonest = due
        if self._suspects:
            bounds = self._suspicion_bounds()
            for node in self._suspects:
                member = self.members[node]
                due = member.suspicion_start + self._suspicion_total(member, bounds)
                if due < soonest:
                    soonest = due
        for relay in self._relays.values():
            if relay.nack_at < soonest:
                soonest = relay.nack_at
        for due in self._new_links.values():
            if due < soonest:
                soonest = due
        return soonest

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    # ---------------------------------------------------------------- probing

    def _probe_quiet_links(self, now: float) -> None:
        for target, until in self._quiet_until.items():
            if until > now or target in self._probing:
                continue
            member = self.members[target]  # links are members
            self._quiet_until[target] = now + self.awareness.scale(self.config.probe_interval)
            if member.state is MemberState.DEAD:
                continue  # until the owner of the links relinks
            seq = self._rng.getrandbits(64)
            timeout = self.awareness.scale(self.config.probe_timeout)
            self._probes[seq] = _Probe(
                target=target,
                sent=now,
                indirect_at=now + timeout,
                give_up_at=now + self.awareness.scale(self.config.probe_interval),
            )
            self._probing[target] = seq
            updates = self._piggyback()
            if member.state is MemberState.SUSPECT:
                # Tell the suspect first, so it can refute (it is alive if it reads this).
                accusation = self._update(
                    target, member.addr, member.incarnation, MemberState.SUSPECT, self.me
                )
                updates = (accusation, *updates[: MAX_UPDATES - 1])
            self._send(member.addr, seq, Probe(target=target, updates=updates))
            self.probes_sent += 1

    def _check_probes(self, now: float) -> None:
        for seq, probe in list(self._probes.items()):
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                probe.helpers = self._ask_indirect(seq, probe, now)
                # And once more directly (memberlist's TCP fallback in spirit): one
                # lost datagram should not be enough to make a suspect.
                member = self.members.get(probe.target)
                if member is not None:
                    self._send(member.addr, seq, Probe(target=probe.target, updates=()))
            if now >= probe.give_up_at:
                del self._probes[seq]
                self._probing.pop(probe.target, None)
                # Lifeguard: helpers that did not even nack point at us, not the target.
                nacks = len(probe.nackers)
                self.awareness.apply(probe.helpers - nacks if probe.helpers else 1)
                # A helper that failed too is an independent accuser: a confirmation.
                self._suspect(probe.target, self.me, now, also=probe.nackers)

    def _ask_indirect(self, seq: int, probe: _Probe, now: float) -> int:
        member = self.members.get(probe.target)
        if member is None:
            return 0
        helpers = [
            n
            for n in self.spread
            if n != probe.target and self.members[n].state is MemberState.ALIVE
        ]
        self._rng.shuffle(helpers)
        # Links heard from lately first, then shortcuts, then watched links gone
        # quiet: after a mass failure, asking dead helpers would cost their
        # nacks (each a confirmation) and wrongly lower our own health. A
        # watched link silent past ``quiet_after`` should have danced: it is
        # likely dead itself; a shortcut never dances to us, its silence
        # tells nothing.
        fresh = now - self.config.quiet_after
        watched = self._watched
        heard_at = self._heard_at
        helpers.sort(
            key=lambda n: 0 if heard_at.get(n, NEVER) >= fresh else (2 if n in watched else 1)
        )
        helpers = helpers[: self.config.indirect_checks]
        for helper in helpers:
            req = ProbeReq(
                target=probe.target,
                host=member.addr[0],
                port=member.addr[1],
                updates=self._piggyback(),
            )
            self._send(self.members[helper].addr, seq, req)
        return len(helpers)

    # ------------------------------------------------------------ membership

    def _update(
        self, node: bytes, addr: Addr, incarnation: int, state: MemberState, by: bytes
    ) -> MemberUpdate:
        return MemberUpdate(
            node=node, host=addr[0], port=addr[1], incarnation=incarnation, state=state, by=by
        )

    def _announce(self, now: float) -> None:
        self._broadcast(
            self._update(self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me), now
        )

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
        if member.state is MemberState.DEAD:
            self._dead[member.node] = member.incarnation
            if member.node in self.spread:
                self.relink_needed = True
        else:
            self._dead.pop(member.node, None)

    def _apply(self, u: MemberUpdate, sender: bytes, now: float) -> None:
        if not 0 <= u.incarnation <= MAX_INCARNATION:
            self.refused += 1
            return
        if u.node == self.me:
            if self.left:
                return  # we said goodbye: our death is the news, not a rumour to refute
            if u.incarnation - self.incarnation > MAX_INCARNATION_JUMP or (
                u.state is not MemberState.ALIVE and u.incarnation >= MAX_INCARNATION
            ):
                # Not a real accusation (ours is kept across restarts, so a real
                # one is a few refutations ahead at most): refuting it would spend
                # the counter, and one at the maximum could never be refuted.
                self.refused += 1
                return
            if u.state is not MemberState.ALIVE and u.incarnation >= self.incarnation:
                # Suspected or declared dead: refute with a higher incarnation (SWIM §4.2),
                # straight back to whoever told us too (it may not be one of our links).
                self.incarnation = u.incarnation + 1
                self._refuted_at = now
                self.false_suspicions_refuted += 1
                self._announce(now)
                told = self.members.get(sender)
                if told is not None and sender not in self.spread:
                    mine = self._update(
                        self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me
                    )
                    self._send(told.addr, self._rng.getrandbits(64), Gossip(updates=(mine,)))
            elif u.state is not MemberState.ALIVE:
                # The teller holds an old suspicion or death of us: it missed our
                # refutation (cut off while it went round, or a flood lost). Tell it
                # (``_correct``), or it holds us dead until a push-pull brings the
                # news, up to 45 s: after a partition healed, nodes that had
                # relinked around us kept us dead, hearing our dances all along.
                self._stale.append(
                    _Member(self.me, self.addr, self.incarnation, MemberState.ALIVE, now)
                )
            return
        if u.state is MemberState.SUSPECT and u.node not in self._watched:
            return  # not ours to judge: its watchers will tell us the verdict
        member = self.members.get(u.node)
        if member is None:
            # A stranger (alive, suspect, or dead: a tombstone, so that a rejoin
            # with an old incarnation is not believed, and the news keeps spreading).
            crowded = sender != self.me and len(self._hearsay) >= MAX_HEARSAY
            if crowded and not self._room_for_hearsay():
                self.refused += 1
                return
            member = _Member(u.node, (u.host, u.port), u.incarnation, u.state, now)
            self.members[u.node] = member
            if sender != self.me:
                self._hearsay[u.node] = None
            if u.state is MemberState.SUSPECT:
                member.suspicion_start = now
                member.confirmers = {u.by}
                self._suspects[u.node] = None
            self._emit(member, now)
            if u.state is not MemberState.ALIVE and not crowded:
                # (news over the hearsay cap is kept, not passed on: a flood of
                # forged strangers stops here instead of going round the swarm)
                self._broadcast(u, now, sender)
            return
        if u.state is MemberState.ALIVE:
            if u.incarnation > member.incarnation:
                changed = member.state is not MemberState.ALIVE
                self.relink_needed |= member.state is MemberState.DEAD or (
                    member.state is MemberState.SUSPECT and u.node in self._watched
                )
                member.incarnation, member.state, member.addr, member.since = (
                    u.incarnation,
                    MemberState.ALIVE,
                    (u.host, u.port),
                    now,
                )
                member.confirmers = _NOBODY
                if changed:
                    self._emit(member, now)
                    self._broadcast(u, now, sender)  # a refutation or a rejoin: undo the news
            else:
                self._told(u, sender)
        elif u.state is MemberState.SUSPECT:
            if u.incarnation < member.incarnation or member.state is MemberState.DEAD:
                return
            if member.state is MemberState.SUSPECT and u.incarnation == member.incarnation:
                if u.by not in member.confirmers:
                    member.confirmers = {*member.confirmers, u.by}  # independent (Lifeguard)
                    self._broadcast(u, now, sender)
                else:
                    self._told(u, sender)
                return
            self._suspect(u.node, u.by, now, incarnation=u.incarnation, sender=sender)
        elif member.state is not MemberState.DEAD and u.incarnation >= member.incarnation:
            member.incarnation, member.state, member.since = u.incarnation, MemberState.DEAD, now
            self._suspects.pop(u.node, None)
            self._emit(member, now)
            self._broadcast(u, now, sender)
        else:
            self._told(u, sender)
            if u.incarnation < member.incarnation and member.state is MemberState.ALIVE:
                self._stale.append(member)

    def _room_for_hearsay(self) -> bool:
        """Make room for one more member heard of (at most MAX_HEARSAY): the
        oldest news of a node we neither link to nor judge goes first."""
        keep = set(self.spread) | self._watched
        for node in self._hearsay:
            if node not in keep and node not in self._suspects:
                self._forget(node)
                return True
        return False

    def _suspect(
        self,
        node: bytes,
        by: bytes,
        now: float,
        incarnation: int | None = None,
        sender: bytes | None = None,
        also: set[bytes] | None = None,
    ) -> None:
        member = self.members.get(node)
        if member is None or member.state is MemberState.DEAD:
            return
        if member.state is MemberState.SUSPECT:
            # Our own failed probe of a node others suspect: an independent confirmation.
            if by not in member.confirmers:
                member.confirmers = {*member.confirmers, by}
                self._broadcast(
                    self._update(node, member.addr, member.incarnation, MemberState.SUSPECT, by),
                    now,
                )
            return
        if incarnation is not None:
            member.incarnation = incarnation
        member.state = MemberState.SUSPECT
        self._suspects[node] = None
        self.relink_needed |= node in self._watched  # watch who is behind it (Comb)
        member.since = member.suspicion_start = now
        member.confirmers = {by, *(also or ())}
        self._emit(member, now)
        accusation = self._update(node, member.addr, member.incarnation, MemberState.SUSPECT, by)
        self._broadcast(accusation, now, sender)
        if by == self.me:
            spread = {self.members[n].addr for n in self.spread}
            for addr in self.other_watchers(node):
                if addr not in spread and addr != self.addr:
                    self._send(addr, self._rng.getrandbits(64), Gossip(updates=(accusation,)))

    def _suspicion_bounds(self) -> tuple[float, float, int]:
        cfg = self.config
        minimum = suspicion_timeout(cfg.suspicion_mult, len(self.members) + 1, cfg.probe_interval)
        expected = cfg.suspicion_confirmations
        return minimum, cfg.suspicion_max_mult * minimum, expected

    def _suspicion_total(
        self, member: _Member, bounds: tuple[float, float, int] | None = None
    ) -> float:
        minimum, maximum, expected = bounds or self._suspicion_bounds()
        # The first accuser is not a confirmation.
        confirmations = max(0, len(member.confirmers) - 1)
        return remaining_suspicion_time(confirmations, expected, 0.0, minimum, maximum)

    def _expire_suspicions(self, now: float) -> None:
        bounds = self._suspicion_bounds()
        for node in list(self._suspects):
            member = self.members[node]
            if member.state is not MemberState.SUSPECT:
                self._suspects.pop(node, None)
                continue
            if now >= member.suspicion_start + self._suspicion_total(member, bounds):
                self._suspects.pop(node, None)
                member.state, member.since = MemberState.DEAD, now
                self._emit(member, now)
                self._broadcast(
                    self._update(
                        member.node, member.addr, member.incarnation, MemberState.DEAD, self.me
                    ),
                    now,
                )

    # ---------------------------------------------------------- dissemination

    def _broadcast(self, update: MemberUpdate, now: float, sender: bytes | None = None) -> None:
        """New news: piggyback it, and flood it to our links."""
        self._queue.queue(update.node, update, _UPDATE_SIZE)
        slots = self._news.setdefault(update.node, {})
        slot = _news_slot(update)
        if update.state is not MemberState.SUSPECT:
            slots.clear()  # a verdict or refutation replaces the suspicions
        old = slots.get(slot)
        self._news_serial += 1
        due = now + self.config.gossip_interval
        if self._flood_at is not None and self._flood_at < due:
            # A flood is due sooner: ride it. Every item timed on its own made
            # one datagram per item and link in a mass failure (1.2 updates per
            # message at 1,000 nodes) instead of a batch per gossip interval.
            due = self._flood_at
        news = _News(update, due, old.order if old is not None else self._news_serial)
        if sender is not None and sender != self.me:
            news.told_us.append(sender)
        slots[slot] = news
        heapq.heappush(self._news_due, (due, self._news_serial, news))
        if self._flood_at is None or due < self._flood_at:
            self._flood_at = due

    def _told(self, u: MemberUpdate, sender: bytes) -> None:
        """``sender`` sent us news we had: it needs no copy from us."""
        # Called for most of what a node receives in a mass failure: kept lean.
        slots = self._news.get(u.node)
        if slots is None:
            return
        news = slots.get(_news_slot(u))
        if news is not None:
            had = news.update
            same = had.incarnation == u.incarnation and had.state is u.state
            if same and sender not in news.told_us:
                news.told_us.append(sender)

    def _is_current(self, news: _News, due: float) -> bool:
        """Is a heap entry still the news' next round (not replaced, not done)?"""
        slots = self._news.get(news.update.node)
        return news.due == due and slots is not None and slots.get(_news_slot(news.update)) is news

    def _flood(self, now: float) -> None:
        cfg = self.config
        heap = self._news_due
        ready: list[_News] = []
        while heap and heap[0][0] <= now:
            due, _, news = heapq.heappop(heap)
            if self._is_current(news, due):
                ready.append(news)
        ready.sort(key=lambda n: n.order)  # oldest news first, as it was made
        per_msg = min(MAX_UPDATES, _FLOOD_BYTES // _UPDATE_SIZE)
        for target in self.spread:
            member = self.members[target]
            if member.state is MemberState.DEAD:
                continue
            if target in self._watched:
                items = [n.update for n in ready if target not in n.told_us]
            else:  # a shortcut: the first round only (the comb links repair loss)
                items = [n.update for n in ready if not n.rounds and target not in n.told_us]
            for start in range(0, len(items), per_msg):
                chunk = tuple(items[start : start + per_msg])
                self._send(member.addr, self._rng.getrandbits(64), Gossip(updates=chunk))
        for news in ready:
            news.rounds += 1
            if news.rounds >= cfg.flood_rounds:  # only the ready ones can have reached it
                self._queue.discard(news.update.node, news.update)
                slots = self._news[news.update.node]
                del slots[_news_slot(news.update)]
                if not slots:
                    del self._news[news.update.node]
            else:
                news.due = now + cfg.flood_repeat
                self._news_serial += 1
                heapq.heappush(heap, (news.due, self._news_serial, news))
        while heap and not self._is_current(heap[0][2], heap[0][0]):
            heapq.heappop(heap)
        self._flood_at = heap[0][0] if heap else None

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        taken = self._queue.take(self.config.piggyback_bytes)
        return tuple(taken[:MAX_UPDATES])

    def _digest(self, now: float) -> tuple[MemberUpdate, ...]:
        """What anti-entropy exchanges: news that gossip may have lost (deaths,
        suspicions, refutations) of the last ``sync_news_age``, newest first,
        at most MAX_SYNC entries."""
        # The newest MAX_SYNC without sorting them all: after a mass failure a
        # node holds thousands of tombstones and syncs every interval.
        newest = heapq.nsmallest(MAX_SYNC, self._notable(now), key=lambda m: -m.since)
        out = [u for m in newest for u in self._as_held(m)]
        if self.incarnation > 0:
            out.insert(
                0, self._update(self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me)
            )
        return tuple(out[:MAX_SYNC])

    def _correct(self, sender: bytes, addr: Addr, now: float) -> None:
        """``sender`` spread deaths of members that have come back since: stale
        tombstones, held by a node that missed the returns. Tell it the returns
        (at most once per probe interval). Without this a stale tombstone
        outlived the return: the return ages out of push-pull after
        ``sync_news_age``, while the tombstone, learned anew by each node that
        missed it, is new news to each."""
        stale, self._stale = self._stale, []
        if now - self._corrected.get(sender, NEVER) < self.config.probe_interval:
            return
        self._corrected[sender] = now
        back = tuple(self._update(m.node, m.addr, m.incarnation, m.state, self.me) for m in stale)
        for i in range(0, len(back), MAX_UPDATES):
            self._send(addr, self._rng.getrandbits(64), Gossip(updates=back[i : i + MAX_UPDATES]))

    def _reconnect(self, now: float) -> None:
        """Tell one member we hold dead that it is (Serf's reconnect): a dead
        one loses a datagram; a live one we lost to a partition refutes, and
        answers us (``_apply``), and the return floods on both sides."""
        if not self._dead:
            return
        member = self.members[self._rng.choice(list(self._dead))]
        self._told_dead[member.node] = now  # its answer need not be told again
        verdict = self._update(
            member.node, member.addr, member.incarnation, MemberState.DEAD, self.me
        )
        self._send(member.addr, self._rng.getrandbits(64), Gossip(updates=(verdict,)))

    def _sync(self, now: float, peer: bytes | None = None) -> None:
        """Ask ``peer`` (a random live link if None) for a push-pull."""
        if peer is None:
            live = [n for n in self.spread if self.members[n].state is MemberState.ALIVE]
            if not live:
                return
            peer = self._rng.choice(live)
        elif self.members[peer].state is not MemberState.ALIVE:
            return
        fingerprint = self._fingerprint(now)
        ask = Sync(updates=self._suspicions(now), step=SYNC_ASK, fingerprint=fingerprint)
        self._send(self.members[peer].addr, self._rng.getrandbits(64), ask)

    def _sync_step(self, msg: Sync, sender: Addr, msg_id: int, now: float) -> None:
        """The rest of a push-pull (its updates are applied already).

        Suspicions always travel (few, and each is a watcher's confirmation);
        the deaths and refutations, which after a mass failure are thousands
        and the same at both ends, only when the fingerprints differ."""
        if msg.step == SYNC_REST:
            return
        mine = self._fingerprint(now)
        if msg.step == SYNC_ASK:
            if mine != msg.fingerprint:
                answer = self._digest(now)
            else:
                answer = self._suspicions(now)
                if not answer:
                    return  # we agree, and no suspicion to confirm
            self._send(sender, msg_id, Sync(updates=answer, step=SYNC_ANSWER, fingerprint=mine))
        elif mine != msg.fingerprint:
            # Still apart after taking the answer: the answerer lacks some of ours.
            theirs = {(u.node, u.incarnation, u.state) for u in msg.updates}
            rest = tuple(
                u
                for u in self._digest(now)
                if u.state is not MemberState.SUSPECT
                and (u.node, u.incarnation, u.state) not in theirs
            )
            if rest:
                self._send(sender, msg_id, Sync(updates=rest, step=SYNC_REST, fingerprint=0))

    def _notable(self, now: float) -> Iterator[_Member]:
        """Members with news of the last ``sync_news_age``: not plainly alive."""
        since = now - self.config.sync_news_age
        for m in self.members.values():
            if (m.state is not MemberState.ALIVE or m.incarnation > 0) and m.since >= since:
                yield m

    def _suspicions(self, now: float) -> tuple[MemberUpdate, ...]:
        since = now - self.config.sync_news_age
        held = (self.members[node] for node in self._suspects)
        return tuple(
            u
            for m in held
            if m.state is MemberState.SUSPECT and m.since >= since
            for u in self._as_held(m)
        )[:MAX_SYNC]

    def _as_held(self, m: _Member) -> Iterator[MemberUpdate]:
        """``m`` for a push-pull: a suspicion once per accuser we know of, each
        named. Lifeguard shortens a suspicion for *independent* accusers; named
        as ours, a suspicion we only relay would count as one more at the other
        end (and back again at the next exchange)."""
        if m.state is MemberState.SUSPECT:
            for by in sorted(m.confirmers):  # sorted: sets of bytes iterate by hash
                yield self._update(m.node, m.addr, m.incarnation, m.state, by)
        else:
            yield self._update(m.node, m.addr, m.incarnation, m.state, self.me)

    def _fingerprint(self, now: float) -> int:
        """The deaths and refutations ``_digest`` holds, untruncated, in 64
        bits: two nodes that hold the same of the last ``sync_news_age`` agree
        on it. Our own entry counts while our last refutation is that recent
        (the others' records of it age the same way)."""
        total = 0
        for m in self._notable(now):
            if m.state is not MemberState.SUSPECT:
                total ^= _entry_hash(m.node, m.incarnation, m.state)
        if self.incarnation > 0 and self._refuted_at >= now - self.config.sync_news_age:
            total ^= _entry_hash(self.me, self.incarnation, MemberState.ALIVE)
        return total

    def _send(self, addr: Addr, msg_id: int, msg: Message) -> None:
        self._outbox.append((addr, Envelope(sender=self.me, msg_id=msg_id, message=msg)))
