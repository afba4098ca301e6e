"""Dissemination: news flooded over links and shortcuts, piggybacked on probes (SWIM §4.1)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from hexamesh.comb.swim.members import Membership
from hexamesh.comb.swim.messages import MAX_UPDATES, Gossip, MemberState, MemberUpdate

__all__ = ["Flooding"]


@dataclass(slots=True)
class _News:
    update: MemberUpdate
    due: float  # next flood round
    order: int  # flood order: news keeps its place while it is replaced, new news goes last
    rounds: int = 0  # rounds done
    # Links that have it already: a list, as a handful at most (an empty set is 216
    # bytes, and a node floods thousands of items at once in a mass failure).
    told_us: list[bytes] = field(default_factory=list)


def _news_slot(update: MemberUpdate) -> bytes:
    """Where news about a node sits in ``Swim._news[node]``: one entry per
    suspicion and accuser, one (b"") per verdict or refutation."""
    return update.by if update.state is MemberState.SUSPECT else b""


_UPDATE_SIZE = 70  # bytes of one MemberUpdate on the wire, a safe upper estimate for IPv4
_FLOOD_BYTES = 1100  # updates per flood datagram (inside MAX_DATAGRAM with envelope and seal)


class Flooding(Membership):
    """News out: batched into floods of ``flood_rounds`` rounds per link."""

    _news: dict[bytes, dict[bytes, _News]]
    _news_due: list[tuple[float, int, _News]]
    _news_serial: int
    _flood_at: float | None

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
