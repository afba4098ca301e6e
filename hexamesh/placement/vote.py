"""Scout voting: where a new model replica goes, decided by a quorum (sans-IO).

Theory of operation
-------------------
Honey bees pick a new nest this way: scouts inspect sites, dance for the good
ones, are drawn to sites others dance for, and the swarm moves once one site
has a quorum of scouts at it. Here:

*Proposal.* A node that holds an operator's order for a model (an
operator's command, or swarmscale seeing unmet demand for a model placed by
order) proposes a :class:`Ballot`: the order, how many new replicas, an
epoch that names the election. The proposer fixes the electorate from its
view: the live nodes within ``scout_rings`` of the demand's cell (itself
included, at most ``MAX_SCOUTS``), so every scout and candidate counts
against the same quorum, a strict majority of them. It sends the proposal
to each scout and resends it to those whose vote it has not heard, every
``retry``.

*Authority.* A node takes part in an election it hears of (as a scout or a
candidate) only if the ballot's order is signed by an operator it trusts,
stands, and names the ballot's model and source; if the demand's cell is
within ``2 * scout_rings`` of its own; and if the electorate is not smaller
than the live nodes it sees itself within ``scout_rings`` of the demand
(less ``ELECTORATE_SLACK`` of them, views differ at the edges). When the
proposal names the scouts, each must be a node it knows, and together they
may leave out no more of the live nodes it sees there than that slack: a key
holder can neither order a model of its own nor shrink a quorum to itself,
with a demand far away or with scouts of its own making.
Votes of nodes outside the electorate, or (before the proposal reached us)
of nodes that are neither in our view nor live members, are not counted.

*Voting.* A scout ranks the eligible candidates in its own neighbourhood view
(``score.best``: load, distance to the demand, free GPU memory, uptime) and
approves the best ``replicas`` of them. Its vote goes to every other scout
and to every candidate it approves or once approved (so a withdrawn approval
is heard), with a version number: the newest vote of a scout replaces its
older ones, so lost, late and duplicated votes change nothing. Votes are
resent until acknowledged. A scout re-ranks (at most every ``revote_every``)
when others' votes or a ``Placed`` arrive: other scouts' approvals add to a
candidate's rank (recruitment), which pulls a split electorate together.

*Winning.* A candidate that holds approvals from a quorum of scouts, while
the election is open and it is still eligible, asks its driver to claim a
slot (a ``Won`` event): one of the DHT keys ``placement:<model>:<epoch>:<slot>``,
slot < replicas, put-if-absent. The slots, not the votes, are what bounds the
replicas: two candidates that both count a quorum (a scout's withdrawal
still in flight) cannot both take the last slot, so an epoch never places
more than it asked for, whatever the network loses or repeats. A winner
tells the scouts (``Placed``); they stop approving it and, while replicas are
still wanted, approve the next best.

*No quorum, no move.* At the deadline (``ttl`` after the proposal) the
election closes. Nothing is claimed after it; if nobody won, nothing moved.
The proposer hears its election's progress as events too (``Decided``: a
winner placed, or the election closed).

Liveness: with a quorum of scouts reachable and an eligible candidate in
their views, votes converge within a few re-ranks and resends (seconds at
5 % loss; see simulations/placement.py).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import Hex, distance
from hexamesh.identity import short_id
from hexamesh.limits import MAX_ELECTION_TTL
from hexamesh.net.base import Addr
from hexamesh.placement.messages import (
    MAX_REPLICAS,
    MAX_SCOUTS,
    Ballot,
    Placed,
    PlacedAck,
    Proposal,
    Scout,
    Site,
    Vote,
    VoteAck,
)
from hexamesh.placement.order import Order, OrderError, check_order
from hexamesh.placement.score import Weights, best, eligible, merit, quorum_of
from hexamesh.wire import Envelope, Message

__all__ = [
    "ELECTORATE_SLACK",
    "Decided",
    "ElectionState",
    "Outcome",
    "PlacementConfig",
    "PlacementError",
    "Scouting",
    "Won",
]

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (model, epoch)

# Of the live nodes a node sees near the demand, the share a proposer's
# electorate may lack (views differ by a join or a death in flight): 19 seen,
# 18 named still passes; 3 seen, 2 named does not.
ELECTORATE_SLACK = 0.1


class PlacementError(Exception):
    """A proposal this node will not start (bad arguments, too many open)."""


@dataclass(frozen=True, kw_only=True)
class PlacementConfig:
    scout_rings: int = 2  # scouts: live nodes this many rings from the demand (19 in a full comb)
    ttl: float = 10.0  # s an election stays open; no quorum by then: nothing moves
    retry: float = 0.5  # s between resends of an unanswered proposal or unacked vote (loss)
    revote_every: float = 0.2  # s; a scout re-ranks at most this often (others' votes, winners)
    keep_closed: float = 300.0  # s a closed election is remembered (late copies are ignored)
    # Elections others opened that this node takes part in at once; more are
    # refused. Counted apart from our own (max_own), so others' proposals,
    # forged or not, cannot keep an operator from calling a vote here.
    max_open: int = 16
    max_own: int = 16  # elections this node proposed that are open at once
    weights: Weights = field(default_factory=Weights)


class ElectionState(enum.StrEnum):
    """Where an election stands (sent in the API as these strings)."""

    OPEN = "open"
    PLACED = "placed"  # a quorum placed at least one replica
    NO_QUORUM = "no quorum"  # closed with nobody placed: nothing moved


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    model: str
    epoch: int
    state: ElectionState
    replicas: int  # wanted
    winners: dict[int, bytes]  # slot -> node, as far as this node heard
    scouts: int  # electorate size (0: this node only watched, as a candidate)
    quorum: int


@dataclass(frozen=True, slots=True)
class Won:
    """We hold a quorum's approvals in this election: claim a slot, then tell
    the core how it went (``claimed`` or ``lost``)."""

    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Decided:
    """An election we proposed moved: a winner was placed, or it closed."""

    outcome: Outcome


@dataclass(slots=True, kw_only=True)
class _Election:
    ballot: Ballot
    deadline: float
    scouts: dict[bytes, Addr]  # the electorate; empty when we only heard votes (a candidate)
    voters: dict[bytes, Addr] = field(default_factory=dict)  # scouts whose votes reached us
    votes: dict[bytes, tuple[int, tuple[bytes, ...]]] = field(default_factory=dict)
    version: int = 0  # of our own vote
    approve: tuple[Site, ...] = ()
    reported: dict[bytes, Site] = field(default_factory=dict)  # candidates others approved
    told: dict[bytes, Addr] = field(default_factory=dict)  # everyone our votes go to
    acked: dict[bytes, int] = field(default_factory=dict)  # node -> our vote version it holds
    winners: dict[int, Scout] = field(default_factory=dict)
    my_slot: int | None = None
    placed_acked: set[bytes] = field(default_factory=set)  # scouts that heard we won
    claiming: bool = False
    gave_up: bool = False  # claim lost (slots full) or we became ineligible
    refused: bool = False  # its proposal named scouts we cannot take: no part in it
    rank_at: float | None = None  # a re-rank is due then
    resend_at: float = 0.0
    closed: bool = False
    close_at: float = 0.0  # forget it then (closed + keep_closed)

    @property
    def demand(self) -> Hex:
        """The cell the ballot wants a replica near."""
        return Hex(self.ballot.q, self.ballot.r)


class Scouting:
    def __init__(
        self,
        me: bytes,
        addr: Addr,
        view: Callable[[], Mapping[bytes, Dance]],
        config: PlacementConfig,
        rng: random.Random,
        *,
        operators: frozenset[bytes],
        is_member: Callable[[bytes], bool],
    ) -> None:
        """``view()`` gives the live dances this node holds, its own included;
        ``operators``: the operator keys whose orders we obey; ``is_member``:
        whether a node is a live member of the comb (votes of strangers)."""
        self.me = me
        self.addr = addr
        self.config = config
        self.operators = operators
        self._view = view
        self._is_member = is_member
        self._rng = rng
        self._elections: dict[Key, _Election] = {}
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._events: list[Won | Decided] = []
        self.refused = 0  # proposals and votes dropped: too many open, or not of the election
        self.unauthorised = 0  # elections refused: no standing order, or a shrunk electorate
        self.sent = 0  # placement messages sent

    # ---------------------------------------------------------------- API

    def propose(
        self,
        order: Order,
        replicas: int,
        epoch: int,
        now: float,
        *,
        mem_need: int = 0,
        demand: Hex | None = None,
        ttl: float | None = None,
    ) -> Ballot:
        """Start an election for ``order``'s model, open for ``ttl`` (default
        ``config.ttl``); the electorate is this node and its live
        neighbourhood near ``demand`` (default: our own cell)."""
        model, source = order.model, order.source
        if (model, epoch) in self._elections:
            raise PlacementError(f"election {model}@{epoch} exists already")
        try:
            check_order(order, operators=self.operators, now=now, model=model, source=source)
        except OrderError as why:
            raise PlacementError(f"no authority: {why}") from None
        if self._open(own=True) >= self.config.max_own:
            raise PlacementError(f"{self.config.max_own} elections of ours are open already")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise PlacementError(f"replicas must be in 1..{MAX_REPLICAS}")
        dances = self._view()
        mine = dances.get(self.me)
        if mine is None:
            raise PlacementError("this node has no cell yet")
        at = demand if demand is not None else Hex(mine.q, mine.r)
        near = sorted(
            (d for d in dances.values() if d.node != self.me),
            key=lambda d: (distance(at, Hex(d.q, d.r)), d.node),
        )
        near = [d for d in near if distance(at, Hex(d.q, d.r)) <= self.config.scout_rings]
        electorate = [mine, *near][:MAX_SCOUTS]
        ballot = Ballot(
            model=model,
            source=source,
            epoch=epoch,
            replicas=replicas,
            quorum=quorum_of(len(electorate)),
            electorate=len(electorate),
            q=at.q,
            r=at.r,
            mem_need=mem_need,
            proposer=self._me_scout(),
            order=order,
        )
        scouts = tuple(Scout(node=d.node, host=d.host, port=d.port) for d in electorate)
        e = _Election(
            ballot=ballot,
            deadline=now + (self.config.ttl if ttl is None else ttl),
            scouts={s.node: (s.host, s.port) for s in scouts},
        )
        self._elections[ballot.key] = e
        log.info(
            "proposing %s x%d (epoch %d): %d scouts, quorum %d",
            model,
            replicas,
            epoch,
            len(scouts),
            ballot.quorum,
        )
        self._propose_to(e, [s for s in scouts if s.node != self.me], now)
        self._rank(e, now)
        return ballot

    def outcome(self, model: str, epoch: int) -> Outcome | None:
        e = self._elections.get((model, epoch))
        if e is None:
            return None
        winners = {slot: s.node for slot, s in e.winners.items()}
        if e.my_slot is not None:
            winners[e.my_slot] = self.me
        if not e.closed:
            state = ElectionState.OPEN
        else:
            state = ElectionState.PLACED if winners else ElectionState.NO_QUORUM
        return Outcome(
            model=model,
            epoch=epoch,
            state=state,
            replicas=e.ballot.replicas,
            winners=winners,
            scouts=len(e.scouts),
            quorum=e.ballot.quorum,
        )

    def electorate(self, model: str, epoch: int) -> list[bytes]:
        """The scouts of an election, as far as this node knows them."""
        e = self._elections.get((model, epoch))
        return list(e.scouts) if e else []

    def approvals(self, model: str, epoch: int) -> dict[bytes, int]:
        """Candidate -> scouts approving it, as this node holds the votes."""
        e = self._elections.get((model, epoch))
        out: dict[bytes, int] = {}
        for _, nodes in e.votes.values() if e else ():
            for n in nodes:
                out[n] = out.get(n, 0) + 1
        return out

    def events(self) -> list[Won | Decided]:
        """Quorums won, and our own elections' progress, since the last call.
        Bounded: one ``Won`` per election, elections bounded by ``max_open``."""
        out, self._events = self._events, []
        return out

    def _decided(self, e: _Election) -> None:
        if e.ballot.proposer.node == self.me:
            outcome = self.outcome(e.ballot.model, e.ballot.epoch)
            if outcome is not None:
                self._events.append(Decided(outcome))

    def claimed(self, key: Key, slot: int, now: float) -> None:
        """The driver holds slot ``slot`` for us: tell the scouts."""
        e = self._elections.get(key)
        if e is None:
            return
        e.claiming, e.my_slot = False, slot
        log.info("won %s@%d slot %d", key[0], key[1], slot)
        self._tell_placed(e, now)
        self._touch(e, now)
        self._decided(e)

    def lost(self, key: Key, now: float) -> None:
        """No slot for us (all taken, or we cannot load the model): stand down."""
        e = self._elections.get(key)
        if e is not None:
            e.claiming, e.gave_up = False, True

    # ------------------------------------------------------ core interface

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        if isinstance(msg, Proposal):
            self._on_proposal(msg, env.sender, sender, now)
        elif isinstance(msg, Vote):
            self._on_vote(msg, env.sender, sender, now)
        elif isinstance(msg, VoteAck):
            e = self._elections.get((msg.model, msg.epoch))
            if e is not None and msg.scout == self.me:
                e.acked[env.sender] = max(e.acked.get(env.sender, 0), msg.version)
        elif isinstance(msg, Placed):
            e = self._elections.get(msg.ballot.key)
            if e is None or msg.winner.node == self.me or msg.ballot != e.ballot:
                return
            self._send(
                sender, PlacedAck(model=msg.ballot.model, epoch=msg.ballot.epoch, slot=msg.slot)
            )
            if e.winners.get(msg.slot) != msg.winner:
                e.winners[msg.slot] = msg.winner
                self._touch(e, now)
                self._decided(e)
        elif isinstance(msg, PlacedAck):
            e = self._elections.get((msg.model, msg.epoch))
            if e is not None and e.my_slot == msg.slot:
                e.placed_acked.add(env.sender)

    def handle_timer(self, now: float) -> None:
        for key, e in list(self._elections.items()):
            if e.closed:
                if now >= e.close_at:
                    del self._elections[key]
                elif now >= e.resend_at and e.my_slot is not None:
                    self._tell_placed(e, now)  # a win just before the deadline
                continue
            if now >= e.deadline:
                e.closed, e.close_at = True, now + self.config.keep_closed
                self._decided(e)
                out = self.outcome(*key)
                log.info(
                    "election %s@%d closed: %s %s",
                    key[0],
                    key[1],
                    out.state if out else "?",
                    {s: short_id(n) for s, n in (out.winners if out else {}).items()},
                )
                continue
            if e.rank_at is not None and now >= e.rank_at:
                self._rank(e, now)
            if now >= e.resend_at:
                self._resend(e, now)

    def next_timer(self) -> float | None:
        soonest: float | None = None
        for e in self._elections.values():
            if e.closed:
                due = e.close_at
                if self._placed_pending(e):
                    due = min(due, e.resend_at)
            else:
                due = min(e.deadline, e.resend_at)
                if e.rank_at is not None:
                    due = min(due, e.rank_at)
            if soonest is None or due < soonest:
                soonest = due
        return soonest

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    # ------------------------------------------------------------ receiving

    def _open(self, *, own: bool) -> int:
        """Open elections we proposed (``own``) or others did."""
        return sum(
            not e.closed and (e.ballot.proposer.node == self.me) == own
            for e in self._elections.values()
        )

    def _election_for(self, ballot: Ballot, ttl: float, now: float) -> _Election | None:
        e = self._elections.get(ballot.key)
        if e is None:
            if ballot.proposer.node == self.me or self._open(own=False) >= self.config.max_open:
                self.refused += 1  # (ours is never made by another's message)
                return None
            why = self._unauthorised(ballot, now)
            if why is not None:
                self.unauthorised += 1
                log.info("refusing election %s@%d: %s", ballot.model, ballot.epoch, why)
                return None
            # The time left comes from a peer: at most what the API allows.
            left = min(max(ttl, 0.0), MAX_ELECTION_TTL)
            e = _Election(ballot=ballot, deadline=now + left, scouts={})
            self._elections[ballot.key] = e
        return e

    def _unauthorised(self, ballot: Ballot, now: float) -> str | None:
        """Why we take no part in ``ballot``'s election (see Authority), or None."""
        if ballot.quorum != quorum_of(ballot.electorate):
            return f"a quorum of {ballot.quorum} is no majority of {ballot.electorate} scouts"
        try:
            check_order(
                ballot.order,
                operators=self.operators,
                now=now,
                model=ballot.model,
                source=ballot.source,
            )
        except OrderError as e:
            return f"no standing order: {e}"
        at = Hex(ballot.q, ballot.r)
        mine = self._view().get(self.me)
        if mine is None:
            return "we have no cell yet"
        # a scout is within scout_rings of the demand, a candidate within
        # scout_rings of a scout: a demand further away is not ours to meet
        # (and one named far from everyone would have no electorate to check)
        if distance(at, Hex(mine.q, mine.r)) > 2 * self.config.scout_rings:
            return f"the demand's cell {at} is far from ours"
        expected = min(len(self._near(at)), MAX_SCOUTS)
        if ballot.electorate < expected - int(expected * ELECTORATE_SLACK):
            return f"{ballot.electorate} scouts named where we see {expected} live nodes"
        return None

    def _knows(self, node: bytes, view: Mapping[bytes, Dance]) -> bool:
        """Is ``node`` in our view or a live member (a key that never joined is neither)?"""
        return node in view or self._is_member(node)

    def _near(self, at: Hex) -> set[bytes]:
        """The live nodes we see within ``scout_rings`` of ``at``."""
        rings = self.config.scout_rings
        return {d.node for d in self._view().values() if distance(at, Hex(d.q, d.r)) <= rings}

    def _odd_electorate(self, e: _Election, named: set[bytes]) -> str | None:
        """Why a proposal's list of scouts is not the electorate we see, or None:
        each must be a node we know, and it must leave out no more of the live
        nodes we see near the demand than the slack allows."""
        view = self._view()
        strangers = [n for n in named if not self._knows(n, view)]
        if strangers:
            return f"{len(strangers)} scouts named that are no live members"
        seen = self._near(e.demand)
        left_out = seen - named
        if len(left_out) > int(min(len(seen), MAX_SCOUTS) * ELECTORATE_SLACK):
            return f"{len(left_out)} of the {len(seen)} live nodes we see there left out"
        return None

    def _on_proposal(self, msg: Proposal, node: bytes, addr: Addr, now: float) -> None:
        e = self._election_for(msg.ballot, msg.ttl, now)
        if e is None or e.closed:
            return
        if msg.ballot != e.ballot:
            self.refused += 1
            return
        if not e.scouts:  # new to us, or we only watched it as a candidate so far
            if len(msg.scouts) != msg.ballot.electorate or e.refused:
                self.refused += 1
                return
            why = self._odd_electorate(e, {s.node for s in msg.scouts})
            if why is not None:
                self.unauthorised += 1
                e.refused = True  # neither scout nor candidate in it
                log.info("refusing election %s@%d: %s", e.ballot.model, e.ballot.epoch, why)
                return
            e.scouts = {s.node: (s.host, s.port) for s in msg.scouts}
            for voter in [v for v in e.votes if v not in e.scouts]:  # heard before: not of it
                del e.votes[voter]
            if self.me in e.scouts:
                self._rank(e, now)
            return
        if e.version and node not in e.acked:  # the proposer missed our vote
            self._send(addr, self._vote_msg(e, now))

    def _on_vote(self, msg: Vote, node: bytes, addr: Addr, now: float) -> None:
        if msg.scout != node:  # a scout speaks for itself only
            self.refused += 1
            return
        e = self._election_for(msg.ballot, msg.ttl, now)
        if e is None:
            return
        if e.scouts:
            stranger = msg.scout not in e.scouts
        else:  # the proposal has not reached us: live members only, at most an electorate
            known = self._knows(msg.scout, self._view())
            stranger = not known or len(e.votes) >= e.ballot.electorate
        if msg.ballot != e.ballot or (stranger and msg.scout not in e.votes):
            self.refused += 1  # another ballot under the same name, or not of the electorate
            return
        e.voters[msg.scout] = addr
        held = e.votes.get(msg.scout)
        if held is None or held[0] < msg.version:
            e.votes[msg.scout] = (msg.version, tuple(s.node for s in msg.approve))
            for site in msg.approve:
                e.reported[site.node] = site
            self._touch(e, now)
        self._send(
            addr,
            VoteAck(
                model=msg.ballot.model,
                epoch=msg.ballot.epoch,
                scout=msg.scout,
                version=e.votes[msg.scout][0],
            ),
        )

    # --------------------------------------------------------------- voting

    def _touch(self, e: _Election, now: float) -> None:
        """Votes or winners changed: re-rank soon (if we scout), check our quorum."""
        if self.me in e.scouts and not e.closed and e.rank_at is None:
            e.rank_at = now + self.config.revote_every
        self._check_quorum(e)

    def _rank(self, e: _Election, now: float) -> None:
        e.rank_at = None
        if e.closed or self.me not in e.scouts:
            return
        won = {s.node for s in e.winners.values()}
        if e.my_slot is not None:
            won.add(self.me)
        wanted = max(e.ballot.replicas - len(won), 0)
        support: dict[bytes, int] = {}
        for scout, (_, nodes) in e.votes.items():
            if scout != self.me:
                for n in nodes:
                    support[n] = support.get(n, 0) + 1
        w = self.config.weights
        view = self._view()
        sites: dict[bytes, Site] = {}
        for d in view.values():
            if d.node not in won and eligible(d, e.ballot):
                m = round(merit(d, e.demand, w), 4)
                sites[d.node] = Site(node=d.node, host=d.host, port=d.port, merit=m)
        for node, site in e.reported.items():
            if node not in won and node not in view:  # out of our sight: trust the report
                sites[node] = site
        chosen = best(
            {n: s.merit for n, s in sites.items()},
            support,
            len(e.scouts),
            (s.node for s in e.approve),
            wanted,
            w,
        )
        approve = tuple(sites[n] for n in chosen)
        if e.version and chosen == [s.node for s in e.approve]:
            return
        e.version += 1
        e.approve = approve
        e.votes[self.me] = (e.version, tuple(s.node for s in approve))
        for site in approve:
            e.told[site.node] = (site.host, site.port)
        e.told.update(e.scouts)
        e.told.pop(self.me, None)
        vote = self._vote_msg(e, now)
        for addr in e.told.values():
            self._send(addr, vote)
        e.resend_at = now + self.config.retry
        self._check_quorum(e)

    def _check_quorum(self, e: _Election) -> None:
        if e.closed or e.claiming or e.gave_up or e.refused or e.my_slot is not None:
            return
        if len(e.winners) >= e.ballot.replicas:
            return
        approvals = sum(self.me in nodes for _, nodes in e.votes.values())
        if approvals < e.ballot.quorum:
            return
        mine = self._view().get(self.me)
        if mine is None or not eligible(mine, e.ballot):
            e.gave_up = True
            return
        e.claiming = True
        log.info(
            "quorum for %s@%d: %d of %d approvals",
            e.ballot.model,
            e.ballot.epoch,
            approvals,
            e.ballot.quorum,
        )
        self._events.append(Won(e.ballot))

    def _resend(self, e: _Election, now: float) -> None:
        e.resend_at = now + self.config.retry
        if e.ballot.proposer.node == self.me:
            missing = [
                Scout(node=n, host=a[0], port=a[1])
                for n, a in e.scouts.items()
                if n != self.me and n not in e.votes
            ]
            self._propose_to(e, missing, now)
        if e.my_slot is not None:
            self._tell_placed(e, now)
        if e.version:
            vote = None
            for node, addr in e.told.items():
                if e.acked.get(node, 0) < e.version:
                    vote = vote or self._vote_msg(e, now)
                    self._send(addr, vote)

    def _placed_pending(self, e: _Election) -> list[tuple[bytes, Addr]]:
        """Scouts that have not acked our win; none once the grace after the
        deadline (one more ``ttl``) is over."""
        if e.my_slot is None or e.resend_at > e.deadline + self.config.ttl:
            return []
        return [
            (n, a)
            for n, a in {**e.voters, **e.scouts, **e.told, **self._proposer(e)}.items()
            if n != self.me and n not in e.placed_acked
        ]

    def _tell_placed(self, e: _Election, now: float) -> None:
        e.resend_at = now + self.config.retry
        assert e.my_slot is not None
        placed = Placed(ballot=e.ballot, winner=self._me_scout(), slot=e.my_slot)
        for _, addr in self._placed_pending(e):
            self._send(addr, placed)

    def _propose_to(self, e: _Election, scouts: list[Scout], now: float) -> None:
        if not scouts:
            return
        everyone = tuple(Scout(node=n, host=a[0], port=a[1]) for n, a in e.scouts.items())
        msg = Proposal(
            ballot=e.ballot,
            scouts=everyone,
            ttl=max(e.deadline - now, 0.0),
        )
        for s in scouts:
            self._send((s.host, s.port), msg)

    def _vote_msg(self, e: _Election, now: float) -> Vote:
        return Vote(
            ballot=e.ballot,
            scout=self.me,
            version=e.version,
            approve=e.approve,
            ttl=max(e.deadline - now, 0.0),
        )

    @staticmethod
    def _proposer(e: _Election) -> dict[bytes, Addr]:
        p = e.ballot.proposer
        return {p.node: (p.host, p.port)}

    def _me_scout(self) -> Scout:
        return Scout(node=self.me, host=self.addr[0], port=self.addr[1])

    def _send(self, addr: Addr, msg: Message) -> None:
        env = Envelope(sender=self.me, msg_id=self._rng.getrandbits(64), message=msg)
        self._outbox.append((addr, env))
        self.sent += 1
