"""Anti-entropy: push-pull by fingerprint, corrections of stale news, reconnects."""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Iterator

from hexamesh.comb.swim.members import NEVER, Membership, _Member
from hexamesh.comb.swim.messages import (
    MAX_SYNC,
    MAX_UPDATES,
    SYNC_ANSWER,
    SYNC_ASK,
    SYNC_REST,
    Gossip,
    MemberState,
    MemberUpdate,
    Sync,
)
from hexamesh.net.base import Addr

__all__ = ["PushPull"]


@functools.lru_cache(maxsize=1 << 16)
def _entry_hash(node: bytes, incarnation: int, state: MemberState) -> int:
    """64 bits of one news entry for a fingerprint (a keyed hash would add
    nothing: only holders of the swarm key can send a Sync). Memoized: a node
    hashes every death it holds for each push-pull, and after a mass failure
    it holds thousands (12 % of a 3,000-node simulation's time after the kill)."""
    data = node + incarnation.to_bytes(8, "big") + bytes((state,))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class PushPull(Membership):
    """Push-pull with one link every ``sync_interval`` (and each new link)."""

    def _digest(self, now: float) -> tuple[MemberUpdate, ...]:
        """What anti-entropy exchanges: news that gossip may have lost (deaths,
        suspicions, refutations) of the last ``sync_news_age``, newest first,
        at most MAX_SYNC entries."""
        # The newest MAX_SYNC without sorting them all: after a mass failure a
        # node holds thousands of tombstones and syncs every interval.
        newest = heapq.nsmallest(MAX_SYNC, self._notable(now), key=lambda m: -m.since)
        out = [u for m in newest for u in self._as_held(m)]
        if self.incarnation > 0:
            out.insert(0, self.own_update())
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
