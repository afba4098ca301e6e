"""Membership state and its transitions: who we hold alive, suspect or dead, and why.

``Membership`` holds what every part of SWIM reads: the members (each with its
address, incarnation, state and, while suspect, its accusers), the suspects'
timers, the dead, the members known only from hearsay, and what the core hands
out (messages, events). News about a member goes through ``_apply``: about us
(refute a suspicion or death with a higher incarnation, Swim §4.2), about a
stranger (from the flood: kept, as a tombstone too, within ``MAX_HEARSAY``; a
push-pull teaches no strangers), then one handler per state the news says
(alive, suspect, dead): a higher incarnation wins; at equal incarnation
suspect beats alive and dead beats both. Alive above incarnation 0 (a
refutation, a return) is a node's word about itself: from anyone but that
node it is taken only with the node's signature (``_proven``,
``advert.alive_bytes``). Suspicions time out per Lifeguard
§3.2 (``_expire_suspicions``); members past their time are forgotten
(``_reap``). The flood, the probes and the push-pull are mixins over this
state (``flood``, ``probing``, ``sync``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from hexamesh.comb.advert import Signer, alive_bytes
from hexamesh.comb.broadcast import BroadcastQueue
from hexamesh.comb.suspicion import (
    Awareness,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)
from hexamesh.comb.swim.config import SwimConfig
from hexamesh.comb.swim.messages import Gossip, MemberState, MemberUpdate
from hexamesh.limits import MAX_HEARSAY, MAX_INCARNATION, MAX_INCARNATION_JUMP
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, Message

__all__ = ["NEVER", "Membership", "MembershipEvent"]

NEVER = -math.inf  # "when" of something that has not happened


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipEvent:
    node: bytes
    addr: Addr
    state: MemberState
    incarnation: int
    at: float


@dataclass(frozen=True, slots=True)
class Relink:
    """An order for the owner of the links (the Comb): recompute them. A link
    was suspected (watch who is behind it) or died, or a node came back."""


RELINK = Relink()


@dataclass(frozen=True, slots=True)
class TellWatchers:
    """An order: send our own accusation of ``node`` to its other watchers
    (its other neighbours, whom only the owner of the cell map knows), except
    the addresses in ``skip`` (our spread links: the flood reaches them). Their
    suspicions then confirm each other even where they are not linked."""

    node: bytes
    accusation: MemberUpdate
    skip: frozenset[Addr]


@dataclass(frozen=True, slots=True)
class Forgotten:
    """An order: a dead member was forgotten (its tombstone aged out, or the
    hearsay cap pushed it out); the owner drops its cell and address."""

    node: bytes


SwimOrder = Relink | TellWatchers | Forgotten

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
    proof: bytes = b""  # its signature of "alive at this incarnation" (above 0), to relay
    proof_addr: Addr = ("", 0)  # the address that proof signs (``addr`` is where we reach it)


class Membership:
    """The state every part of SWIM shares, and its transitions (see above)."""

    me: bytes
    addr: Addr
    config: SwimConfig
    _rng: random.Random
    incarnation: int
    _refuted_at: float
    members: dict[bytes, _Member]
    _suspects: dict[bytes, None]
    _dead: dict[bytes, int]
    links: list[bytes]
    spread: list[bytes]
    _watched: set[bytes]
    _heard_at: dict[bytes, float]
    _told_dead: dict[bytes, float]
    _corrected: dict[bytes, float]
    _reaped: dict[bytes, tuple[int, float]]
    _stale: list[_Member]
    _queue: BroadcastQueue[MemberUpdate]
    _news: dict[bytes, dict[bytes, Any]]  # (flood.Flooding's: its _News)
    awareness: Awareness
    _outbox: list[tuple[Addr, Envelope]]
    _events: list[MembershipEvent]
    _orders: list[SwimOrder]
    _hearsay: dict[bytes, None]
    left: bool
    false_suspicions_refuted: int
    refused: int
    unproven: int  # refutations and returns of others without their node's proof
    revoked: set[bytes]
    signer: Signer | None  # None: proofs neither made nor checked (unit tests)
    _own_proof: tuple[int, bytes]  # (incarnation, our proof of it)

    # -- what the mixins provide (here last in the order of lookup, so theirs win)

    def _broadcast(self, update: MemberUpdate, now: float, sender: bytes | None = None) -> None:
        raise NotImplementedError  # flood.Flooding

    def _told(self, u: MemberUpdate, sender: bytes) -> None:
        raise NotImplementedError  # flood.Flooding

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        raise NotImplementedError  # flood.Flooding

    # -- reading ---------------------------------------------------------------

    def state_of(self, node: bytes) -> MemberState | None:
        member = self.members.get(node)
        return member.state if member else None

    def dead_members(self) -> list[bytes]:
        return list(self._dead)

    @property
    def dead(self) -> Mapping[bytes, int]:
        """Members held dead -> their incarnation then (a live view, not a copy)."""
        return self._dead

    def events(self) -> list[MembershipEvent]:
        """Membership changes since the last call (for the rest of the agent)."""
        out, self._events = self._events, []
        return out

    def orders(self) -> list[SwimOrder]:
        """What the owner of the links and the map must do, since the last call."""
        out, self._orders = self._orders, []
        return out

    # -- forgetting --------------------------------------------------------------

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
                self._forget(node, now)
        quiet = now - cfg.hearsay_ttl
        heard_at = self._heard_at
        for node, member in list(self.members.items()):
            if (
                member.state is MemberState.ALIVE
                and member.since < quiet
                and node not in keep
                and heard_at.get(node, -math.inf) < quiet
            ):
                self._forget(node, now)
        for notes in (self._heard_at, self._told_dead, self._corrected):
            for node, at in list(notes.items()):
                if node not in self.members and now - at > cfg.tombstone_ttl:
                    del notes[node]
        for node, (_, at) in list(self._reaped.items()):  # oldest first
            if now - at <= cfg.tombstone_ttl:
                break
            del self._reaped[node]

    def _forget(self, node: bytes, now: float) -> None:
        """Drop a member and every note of it; a dead one is also handed out
        (``Forgotten``: the comb forgets its cell; a live one's cell stays in
        the map, where its dances keep it current)."""
        if node in self._dead:
            self._orders.append(Forgotten(node))
            # News of this death still going round (relayed, or flooded anew by
            # a node that reaped it later) must not make it a stranger's fresh
            # death here, flooded again: tombstones would cycle for ever.
            # In the order forgotten (pop first: a re-stamp moves to the end),
            # at most MAX_HEARSAY: forged deaths evicting each other from the
            # hearsay table must not grow this instead.
            self._reaped.pop(node, None)
            self._reaped[node] = (self._dead[node], now)
            if len(self._reaped) > MAX_HEARSAY:
                del self._reaped[next(iter(self._reaped))]
        self.members.pop(node, None)
        self._dead.pop(node, None)
        self._suspects.pop(node, None)
        self._hearsay.pop(node, None)
        self._news.pop(node, None)  # its heap entries are stale now, skipped when due

    # -- transitions -------------------------------------------------------------

    def _update(
        self, node: bytes, addr: Addr, incarnation: int, state: MemberState, by: bytes
    ) -> MemberUpdate:
        """News of ``node``; alive above incarnation 0, with its node's proof
        (ours, made once per incarnation; another's, as we received it)."""
        proof = b""
        if state is MemberState.ALIVE and incarnation > 0 and self.signer is not None:
            if node == self.me:
                if self._own_proof[0] != incarnation:
                    signed = alive_bytes(node, addr[0], addr[1], incarnation)
                    self._own_proof = (incarnation, self.signer.sign(signed))
                proof = self._own_proof[1]
            else:
                held = self.members.get(node)
                if held is not None and held.incarnation == incarnation and held.proof:
                    # its word as it signed it: the address it announced, not
                    # the one its messages reach us from (``reached_at``)
                    proof, addr = held.proof, held.proof_addr
        return MemberUpdate(
            node=node,
            host=addr[0],
            port=addr[1],
            incarnation=incarnation,
            state=state,
            by=by,
            proof=proof,
        )

    def _proven(self, u: MemberUpdate, sender: bytes) -> bool:
        """May we take ``u`` (alive) as its node's word? Told by ourselves (the
        comb, from a proven advert) or by the node itself (the frame proves
        it), or carrying its proof; else refused and counted."""
        if self.signer is None or u.incarnation == 0 or sender in (self.me, u.node):
            return True
        signed = alive_bytes(u.node, u.host, u.port, u.incarnation)
        if u.proof and self.signer.verify(u.node, signed, u.proof):
            return True
        self.unproven += 1
        return False

    def own_update(self) -> MemberUpdate:
        """We are alive at our incarnation, at our address (with our proof)."""
        return self._update(self.me, self.addr, self.incarnation, MemberState.ALIVE, self.me)

    def _announce(self, now: float) -> None:
        self._broadcast(self.own_update(), now)

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
                self._orders.append(RELINK)
        else:
            self._dead.pop(member.node, None)

    def revoke(self, node: bytes, now: float) -> None:
        """An operator revoked ``node``: dead for good, at once, whatever anyone
        says of it from now on (its own signed refutations included)."""
        if node == self.me or node in self.revoked:
            return
        self.revoked.add(node)
        member = self.members.get(node)
        if member is not None and member.state is not MemberState.DEAD:
            member.state, member.since = MemberState.DEAD, now
            self._suspects.pop(node, None)
            self._emit(member, now)

    def _apply(self, u: MemberUpdate, sender: bytes, now: float, *, repair: bool = False) -> None:
        """Take one piece of news about a member, from ``sender``; ``repair``:
        from a push-pull, which mends what we hold and teaches no strangers."""
        if not 0 <= u.incarnation <= MAX_INCARNATION:
            self.refused += 1
            return
        if u.node in self.revoked:
            return  # its verdict is an operator's, not the swarm's to change
        if u.node == self.me:
            self._news_of_us(u, sender, now)
            return
        if u.state is MemberState.SUSPECT and u.node not in self._watched:
            return  # not ours to judge: its watchers will tell us the verdict
        member = self.members.get(u.node)
        if member is None:
            if repair:
                # A push-pull hands on what the other end learned in the last
                # sync_news_age, counted from when *it* learned it. Taken as
                # news here, a stranger's death went round again with a fresh
                # age (newcomers learned every recent death and flooded it back
                # to nodes that had reaped it): tombstones under churn grew
                # without end. Deaths of strangers come by the flood, once.
                return
            self._news_of_a_stranger(u, sender, now)
        elif u.state is MemberState.ALIVE:
            self._news_alive(member, u, sender, now)
        elif u.state is MemberState.SUSPECT:
            self._news_suspect(member, u, sender, now)
        else:
            self._news_dead(member, u, sender, now)

    def _news_of_us(self, u: MemberUpdate, sender: bytes, now: float) -> None:
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
                mine = self.own_update()
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

    def _news_of_a_stranger(self, u: MemberUpdate, sender: bytes, now: float) -> None:
        """Alive, suspect, or dead: a tombstone, so that a rejoin with an old
        incarnation is not believed, and the news keeps spreading; but not the
        death of a member we reaped (``_reaped``), at the incarnation we held."""
        if u.state is MemberState.ALIVE and not self._proven(u, sender):
            return  # another's return: only its node can say so (nor may it end a reaping)
        reaped = self._reaped.get(u.node)
        if reaped is not None:
            if u.state is not MemberState.ALIVE and u.incarnation <= reaped[0]:
                return  # old news: we held it for tombstone_ttl already
            del self._reaped[u.node]  # a return (or a later death): news indeed
        crowded = sender != self.me and len(self._hearsay) >= MAX_HEARSAY
        if crowded and not self._room_for_hearsay(now):
            self.refused += 1
            return
        member = _Member(u.node, (u.host, u.port), u.incarnation, u.state, now)
        if u.state is MemberState.ALIVE:
            member.proof, member.proof_addr = u.proof, (u.host, u.port)
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

    def _news_alive(self, member: _Member, u: MemberUpdate, sender: bytes, now: float) -> None:
        """Alive at a higher incarnation wins over anything: a refutation or a rejoin."""
        if u.incarnation <= member.incarnation:
            self._told(u, sender)
            return
        if not self._proven(u, sender):
            return  # a refutation or return only its node can make (a relay's forgery)
        changed = member.state is not MemberState.ALIVE
        if member.state is MemberState.DEAD or (
            member.state is MemberState.SUSPECT and u.node in self._watched
        ):
            self._orders.append(RELINK)
        member.incarnation, member.state, member.addr, member.since = (
            u.incarnation,
            MemberState.ALIVE,
            (u.host, u.port),
            now,
        )
        member.confirmers = _NOBODY
        member.proof, member.proof_addr = u.proof, (u.host, u.port)
        if changed:
            self._emit(member, now)
        # A refutation or a return goes round even where nothing changes: the
        # nodes that held it dead may be reached only through us (after a
        # partition, through the side that never doubted it).
        self._broadcast(u, now, sender)

    def _news_suspect(self, member: _Member, u: MemberUpdate, sender: bytes, now: float) -> None:
        """Suspect beats alive at the same incarnation; another accuser confirms."""
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

    def _news_dead(self, member: _Member, u: MemberUpdate, sender: bytes, now: float) -> None:
        """Dead beats alive and suspect at the same or a higher incarnation."""
        if member.state is not MemberState.DEAD and u.incarnation >= member.incarnation:
            member.incarnation, member.state, member.since = u.incarnation, MemberState.DEAD, now
            self._suspects.pop(u.node, None)
            self._emit(member, now)
            self._broadcast(u, now, sender)
            return
        self._told(u, sender)
        if u.incarnation < member.incarnation and member.state is MemberState.ALIVE:
            self._stale.append(member)  # it spreads a death of one who came back

    def _room_for_hearsay(self, now: float) -> bool:
        """Make room for one more member heard of (at most MAX_HEARSAY): the
        oldest news of a node we neither link to nor judge goes first."""
        keep = set(self.spread) | self._watched
        for node in self._hearsay:
            if node not in keep and node not in self._suspects:
                self._forget(node, now)
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
        if node in self._watched:
            self._orders.append(RELINK)  # watch who is behind it
        member.since = member.suspicion_start = now
        member.confirmers = {by, *(also or ())}
        self._emit(member, now)
        accusation = self._update(node, member.addr, member.incarnation, MemberState.SUSPECT, by)
        self._broadcast(accusation, now, sender)
        if by == self.me:
            spread = frozenset(self.members[n].addr for n in self.spread)
            self._orders.append(TellWatchers(node, accusation, spread))

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

    def _send(self, addr: Addr, msg_id: int, msg: Message) -> None:
        self._outbox.append((addr, Envelope(sender=self.me, msg_id=msg_id, message=msg)))
