"""The SWIM core: its state, its commands and the core interface (sans-IO).

How it works: the package's doc (``hexamesh.comb.swim``). ``Swim`` composes
the parts: ``members`` (state and transitions), ``probing``, ``flood`` and
``sync``, each a mixin over the same state, initialised here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hexamesh.comb.advert import Signer
from hexamesh.comb.broadcast import BroadcastQueue
from hexamesh.comb.suspicion import Awareness
from hexamesh.comb.swim.config import NACK_AT, PIGGYBACK_QUEUE, SYNC_SPREAD, SwimConfig
from hexamesh.comb.swim.flood import Flooding, _News
from hexamesh.comb.swim.members import NEVER, MembershipEvent, SwimOrder, _Member
from hexamesh.comb.swim.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    Probe,
    ProbeReq,
    Sync,
)
from hexamesh.comb.swim.probing import Probing, _Probe, _Relay
from hexamesh.comb.swim.sync import PushPull
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope

__all__ = ["Swim"]


class Swim(Probing, Flooding, PushPull):
    def __init__(
        self,
        node_id: bytes,
        addr: Addr,
        config: SwimConfig,
        rng: random.Random,
        now: float,
        *,
        incarnation: int = 0,  # ours when we last ran (the agent keeps it on disk)
        signer: Signer | None = None,  # proves our refutations, checks others' (None: neither)
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
        # Dead members forgotten (reaped) -> (incarnation held dead, when): for
        # another tombstone_ttl their death, still going round, is old news.
        self._reaped: dict[bytes, tuple[int, float]] = {}
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
        self._orders: list[SwimOrder] = []  # for the owner of links and map (``orders``)
        self.left = False  # we left gracefully (``leave``): a process on its way out
        self.probes_sent = 0
        self.false_suspicions_refuted = 0
        # Updates refused: an incarnation past MAX_INCARNATION, or a claim about
        # us too far past our own (MAX_INCARNATION_JUMP): forged or corrupt.
        self.refused = 0
        self.revoked: set[bytes] = set()  # nodes an operator revoked: dead, whatever is said
        self.unproven = 0  # others' refutations and returns relayed without their proof
        self.signer = signer
        self._own_proof = (-1, b"")
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

    # ------------------------------------------------------- core interface

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        self.heard(env.sender, now)
        self.tell_dead(env.sender, sender, now)
        repair = isinstance(msg, Sync)
        for update in getattr(msg, "updates", ()):
            self._apply(update, env.sender, now, repair=repair)
        if self._stale:
            self._correct(env.sender, sender, now)
        if isinstance(msg, Probe):
            if msg.target == self.me:
                self._send(sender, env.msg_id, Ack(updates=self._piggyback()))
        elif isinstance(msg, Ack):
            # An Ack says the target lives only from the target or a helper we
            # asked (a member that saw the probe could otherwise answer for it)
            probe = self._probes.get(env.msg_id)
            if probe is not None and (env.sender == probe.target or env.sender in probe.asked):
                del self._probes[env.msg_id]
                self._probing.pop(probe.target, None)
                self.heard(probe.target, now)
                self.awareness.apply(-1)
            relay = self._relays.get(env.msg_id)
            if relay is not None and env.sender == relay.target:
                del self._relays[env.msg_id]
                self._send(relay.requester, relay.their_seq, Ack(updates=self._piggyback()))
        elif isinstance(msg, Nack):
            probe = self._probes.get(env.msg_id)
            if probe is not None and env.sender in probe.asked:
                probe.nackers.add(env.sender)
        elif isinstance(msg, Sync):
            self._sync_step(msg, sender, env.msg_id, now)
        elif isinstance(msg, ProbeReq):
            seq = self._rng.getrandbits(64)
            nack_at = now + NACK_AT * self.config.probe_timeout  # before the requester gives up
            self._relays[seq] = _Relay(sender, env.msg_id, nack_at, msg.target)
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
