"""The election core: by hand (exact messages), then on the simulator."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from functools import partial

import msgpack
import pytest

from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import ORIGIN, spiral
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.peerauth import Proof
from hexamesh.placement.messages import Ballot, Placed, Proposal, Scout, Site, Vote, VoteAck
from hexamesh.placement.order import sign_order
from hexamesh.placement.vote import (
    ElectionState,
    Outcome,
    PlacementConfig,
    PlacementError,
    Scouting,
    Won,
)
from hexamesh.simulate.combmap import node_id as nid
from hexamesh.wire import MAX_DATAGRAM, Codec, Envelope, WireError, decode_frame, encode_frame
from simulations.placement import Swarm
from tests.placement import helpers

CONFIG = PlacementConfig()


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 7420)


class Hand:
    """Scouting cores with fixed views, wired by hand: ``pump`` delivers what
    they send (through the real codec) until nothing is left, dropping what
    ``drop`` says; ``tick`` fires timers."""

    def __init__(self, loads: list[float], *, models: dict[int, tuple[str, ...]] | None = None):
        cells = spiral(ORIGIN, 1)
        self.dances = {
            nid(i): Dance.first(
                nid(i), addr(i), c.q, c.r, load=load, models=(models or {}).get(i, ())
            )
            for i, (c, load) in enumerate(zip(cells, loads, strict=False))
        }
        self.own: dict[int, Dance] = {}  # what a node dances now, before its links hear it
        self.cores = {
            addr(i): Scouting(
                nid(i),
                addr(i),
                partial(self.view, i),
                CONFIG,
                random.Random(i),
                operators=helpers.OPERATORS,
                is_member=self.dances.__contains__,
            )
            for i in range(len(loads))
        }
        self.now = 0.0
        self.sent: list[tuple[Addr, Envelope]] = []
        self.drop: Callable[[Addr, Envelope], bool] = lambda to, env: False
        self.decided: dict[int, list[Outcome]] = {}  # node -> its elections' progress

    def view(self, i: int) -> dict[bytes, Dance]:
        return {**self.dances, nid(i): self.own[i]} if i in self.own else self.dances

    def core(self, i: int) -> Scouting:
        return self.cores[addr(i)]

    def pump(self) -> None:
        while True:
            out = [(src, to, env) for src, c in self.cores.items() for to, env in c.outbox()]
            if not out:
                return
            for src, to, env in out:
                self.sent.append((to, env))
                assert Codec.sealed_size(env, Proof.SIGNED) <= MAX_DATAGRAM  # each one fits
                wire = decode_frame(encode_frame(env))
                if not self.drop(to, wire) and to in self.cores:
                    self.cores[to].receive(wire, src, self.now)

    def tick(self, dt: float) -> None:
        self.now += dt
        for c in self.cores.values():
            due = c.next_timer()
            if due is not None and due <= self.now:
                c.handle_timer(self.now)
        self.pump()

    def claims(self) -> dict[int, list[Ballot]]:
        """The quorums won since the last call (``Won`` events), by node; the
        proposers' ``Decided`` events go to ``decided``."""
        won: dict[int, list[Ballot]] = {}
        for i in range(len(self.cores)):
            for event in self.core(i).events():
                if isinstance(event, Won):
                    won.setdefault(i, []).append(event.ballot)
                else:
                    self.decided.setdefault(i, []).append(event.outcome)
        return won


def test_the_electorate_approves_the_idlest_node_which_claims_once() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    ballot = hand.core(0).propose(helpers.order(), 1, 7, hand.now)
    assert ballot.quorum == 4 and hand.core(0).electorate("tiny", 7) == [nid(i) for i in range(7)]
    hand.pump()
    assert hand.core(0).approvals("tiny", 7) == {nid(3): 7}
    assert hand.claims() == {3: [ballot]}  # the winner only, once
    hand.tick(1.0)
    assert hand.claims() == {}
    hand.core(3).claimed(ballot.key, 0, hand.now)
    hand.pump()
    hand.tick(CONFIG.revote_every)
    # Every scout heard the winner and, the one replica placed, approves nobody now.
    assert all(c.approvals("tiny", 7).get(nid(3), 0) == 0 for c in hand.cores.values())
    hand.tick(CONFIG.ttl)
    outcome = hand.core(0).outcome("tiny", 7)
    assert outcome is not None and outcome.state == "placed" and outcome.winners == {0: nid(3)}
    assert outcome.scouts == 7 and outcome.quorum == 4
    hand.claims()
    # The proposer heard each move of its election: the winner placed, then the close.
    moves = [(o.state, o.winners) for o in hand.decided[0]]
    assert moves == [(ElectionState.OPEN, {0: nid(3)}), (ElectionState.PLACED, {0: nid(3)})]
    assert set(hand.decided) == {0}  # only proposers hear of their elections


def test_a_node_serving_the_model_already_is_no_candidate() -> None:
    hand = Hand([0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5], models={0: ("tiny",)})
    ballot = hand.core(1).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    assert set(hand.core(1).approvals("tiny", 1)) == {nid(6)}
    assert hand.claims() == {6: [ballot]}


def test_a_winner_that_filled_up_meanwhile_does_not_claim() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5])
    d = hand.dances[nid(6)]
    hand.own[6] = dataclasses.replace(d, status="full")  # the others still see it "up"
    hand.core(1).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    assert hand.core(6).approvals("tiny", 1).get(nid(6)) == 6  # a quorum, and no claim
    assert hand.claims() == {}


def test_no_quorum_no_move() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    cut = {addr(4), addr(5), addr(6), addr(1)}  # four of seven never answer: three left < 4
    hand.drop = lambda to, env: to in cut or env.sender in {nid(1), nid(4), nid(5), nid(6)}
    hand.core(0).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    for _ in range(int(CONFIG.ttl / CONFIG.retry) + 2):
        hand.tick(CONFIG.retry)
        assert hand.claims() == {}
    outcome = hand.core(0).outcome("tiny", 1)
    assert outcome is not None and outcome.state == "no quorum" and outcome.winners == {}
    assert hand.core(3).approvals("tiny", 1) == {nid(3): 3}  # three approvals, one short
    assert hand.decided == {0: [outcome]}  # the close, told once


def test_lost_messages_are_resent_until_the_quorum_forms() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    rng = random.Random(3)
    hand.drop = lambda to, env: rng.random() < 0.5
    ballot = hand.core(0).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    claims: dict[int, list[Ballot]] = {}
    for _ in range(16):
        claims |= hand.claims()
        hand.tick(CONFIG.retry)
    assert claims == {3: [ballot]}
    kinds = {type(env.message) for _, env in hand.sent}
    assert {Proposal, Vote, VoteAck} <= kinds


def test_old_and_repeated_votes_change_nothing() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    ballot = hand.core(0).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    core = hand.core(2)
    before = core.approvals("tiny", 1)
    stale = Vote(ballot=ballot, scout=nid(5), version=0, approve=(), ttl=5.0)
    core.receive(Envelope(sender=nid(5), msg_id=1, message=stale), addr(5), hand.now)
    assert core.approvals("tiny", 1) == before
    acks = [env.message for to, env in core.outbox() if to == addr(5)]
    assert acks == [VoteAck(model="tiny", epoch=1, scout=nid(5), version=1)]  # the newest held


def test_winners_are_bounded_by_the_slots_when_a_withdrawal_is_lost() -> None:
    """Two candidates may both count a quorum (a scout's new vote lost on the
    way to the old favourite): both ask to claim, and the slots decide."""
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.2])
    ballot = helpers.ballot(quorum=4, electorate=7)

    def vote(scout: int, version: int, pick: int) -> None:
        site = Site(node=nid(pick), host=addr(pick)[0], port=7420, merit=0.5)
        msg = Vote(ballot=ballot, scout=nid(scout), version=version, approve=(site,), ttl=5.0)
        env = Envelope(sender=nid(scout), msg_id=version, message=msg)
        hand.core(pick).receive(env, addr(scout), hand.now)

    for scout, pick in [(0, 3), (1, 3), (2, 3), (5, 3), (4, 6), (6, 6)]:
        vote(scout, 1, pick)
    vote(5, 2, 6)  # scout 5 moves to 6; its withdrawal towards 3 is lost
    vote(2, 2, 6)  # and so does scout 2: 6 counts four, 3 still counts four
    assert hand.claims() == {3: [ballot], 6: [ballot]}
    hand.core(6).claimed(ballot.key, 0, hand.now)
    hand.core(3).lost(ballot.key, hand.now)  # the one slot was taken: it stands down
    hand.tick(1.0)
    assert hand.claims() == {}
    placed = [env.message for _, env in hand.sent if isinstance(env.message, Placed)]
    assert {p.winner.node for p in placed} == {nid(6)} and {p.slot for p in placed} == {0}


def test_proposals_are_bounded() -> None:
    hand = Hand([0.5] * 7)
    core = hand.core(0)
    for epoch in range(CONFIG.max_open):
        core.propose(helpers.order(), 1, epoch, hand.now)
    with pytest.raises(PlacementError, match="open already"):
        core.propose(helpers.order(), 1, 99, hand.now)
    with pytest.raises(PlacementError, match="exists already"):
        core.propose(helpers.order(), 1, 0, hand.now)
    with pytest.raises(PlacementError, match="replicas"):
        Hand([0.5]).core(0).propose(helpers.order(), 0, 1, 0.0)
    hand.tick(CONFIG.ttl + 0.1)  # they close; the core forgets them after keep_closed
    hand.tick(CONFIG.keep_closed)
    assert core.outcome("tiny", 0) is None and core.next_timer() is None


# -- on the simulator: a comb of 37 nodes, real links, loss and duplicates ------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_elections_on_a_lossy_comb_place_exactly_what_they_ask(seed: int) -> None:
    swarm = Swarm.build(3, seed=seed, loss=0.15, duplicate=0.1)
    swarm.net.run(until=8.0)
    rng = random.Random(seed)
    for epoch in range(1, 5):
        proposer = rng.choice(list(swarm.combs))
        replicas = rng.randint(1, 3)
        start = swarm.net.now
        swarm.propose(proposer, "tiny", replicas, epoch)
        swarm.net.run(until=start + CONFIG.ttl + 2.0)
        winners = swarm.winners("tiny", epoch)
        assert len(winners) == replicas  # a reachable quorum places them all, never more
        outcome = swarm.scouting[proposer].outcome("tiny", epoch)
        assert outcome is not None and outcome.state == "placed"
        assert outcome.winners == winners  # the proposer heard every winner
        assert swarm.claimed_at[("tiny", epoch)] - start < 2.0
        for node in winners.values():  # serving it now: a later election looks elsewhere
            assert "tiny" in swarm.combs[node].waggle.dance.models


def test_a_cut_off_majority_moves_nothing_on_the_comb() -> None:
    swarm = Swarm.build(3, seed=4, loss=0.05)
    swarm.net.run(until=8.0)
    proposer = nid(0)
    ballot = swarm.propose(proposer, "tiny", 2, 1)
    scouts = [n for n in swarm.scouting[proposer].electorate("tiny", 1) if n != proposer]
    victims = scouts[: len(scouts) + 2 - ballot.quorum]
    rest = [swarm.addrs[n] for n in swarm.combs if n not in victims]
    swarm.net.partition(rest, *[[swarm.addrs[v]] for v in victims])
    swarm.net.run(until=CONFIG.ttl + 10.0)
    assert swarm.winners("tiny", 1) == {}
    outcome = swarm.scouting[proposer].outcome("tiny", 1)
    assert outcome is not None and outcome.state == "no quorum"


def test_a_ballot_out_of_bounds_on_the_wire_is_a_wire_error() -> None:
    good = helpers.ballot(source="/m", quorum=1, electorate=1)
    vote = Vote(ballot=good, scout=nid(0), version=1, approve=(), ttl=1.0)
    env = Envelope(sender=nid(0), msg_id=1, message=vote)
    frame = encode_frame(env)
    # A Ballot on the wire starts: model, source, epoch, replicas, quorum, electorate
    fields = b"".join(msgpack.packb(f) for f in ["tiny", "/m", 1, 1, 1, 1])
    bad = frame.replace(fields, fields[:-3] + msgpack.packb(0) + fields[-2:])
    assert bad != frame
    with pytest.raises(WireError, match=r"replicas must be in 1\.\.8"):
        decode_frame(bad)
    assert decode_frame(frame) == env


def test_votes_that_are_not_the_electorates_change_nothing() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    ballot = hand.core(0).propose(helpers.order(), 1, 1, hand.now)
    hand.pump()
    core = hand.core(3)
    before, refused = core.approvals("tiny", 1), core.refused
    site = (Site(node=nid(6), host=addr(6)[0], port=7420, merit=1.0),)
    outsider = b"\xee" * 20
    forged = [
        # a node voting as another
        (nid(5), Vote(ballot=ballot, scout=nid(4), version=9, approve=site, ttl=5.0)),
        # not of the electorate
        (outsider, Vote(ballot=ballot, scout=outsider, version=1, approve=site, ttl=5.0)),
        # another ballot under the same name (more replicas)
        (
            nid(5),
            Vote(
                ballot=dataclasses.replace(ballot, replicas=3),
                scout=nid(5),
                version=9,
                approve=site,
                ttl=5.0,
            ),
        ),
    ]
    for sender, vote in forged:
        core.receive(Envelope(sender=sender, msg_id=1, message=vote), addr(5), hand.now)
    assert core.approvals("tiny", 1) == before and core.refused == refused + 3


# -- authority: who may order a vote, and how small its quorum may be -----------


def _vote_for(ballot: Ballot, scout: int, pick: int) -> Envelope:
    site = Site(node=nid(pick), host=addr(pick)[0], port=7420, merit=1.0)
    msg = Vote(ballot=ballot, scout=nid(scout), version=1, approve=(site,), ttl=5.0)
    return Envelope(sender=nid(scout), msg_id=1, message=msg)


def test_a_ballot_without_a_trusted_order_is_refused_by_scouts_and_candidates() -> None:
    """A key holder signs an order with a key of its own: no scout votes on
    it, no candidate counts its votes, nothing is won."""
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    stranger_key = Identity.from_private_bytes(b"\x42" * 32)
    forged = helpers.ballot(
        source="/attacker/weights",
        quorum=4,
        electorate=7,
        order=sign_order(stranger_key, "tiny", "/attacker/weights", now=0.0),
    )
    scouts = tuple(Scout(node=nid(i), host=addr(i)[0], port=7420) for i in range(7))
    proposal = Proposal(ballot=forged, scouts=scouts, ttl=5.0)
    for i in range(1, 7):
        hand.core(i).receive(Envelope(sender=nid(0), msg_id=1, message=proposal), addr(0), 0.0)
    for scout in (0, 1, 2, 4, 5):
        hand.core(3).receive(_vote_for(forged, scout, 3), addr(scout), hand.now)
    hand.pump()
    hand.tick(1.0)
    assert hand.claims() == {}
    assert all(hand.core(i).approvals("tiny", 1) == {} for i in range(7))
    assert all(hand.core(i).unauthorised >= 1 for i in range(1, 7))
    # an order of ours that has expired gives no authority either
    with pytest.raises(PlacementError, match="expired"):
        hand.core(0).propose(helpers.order(ttl=1.0), 1, 9, 5.0)


def test_a_key_holder_cannot_shrink_the_quorum_to_itself() -> None:
    """A forged vote whose ballot (under a real order) names an electorate
    of one, itself, made the victim win and load: the victim sees seven live
    nodes around the demand and takes no part."""
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    shrunk = helpers.ballot(quorum=1, electorate=1)
    hand.core(3).receive(_vote_for(shrunk, 5, 3), addr(5), hand.now)
    no_majority = helpers.ballot(quorum=1, electorate=7, epoch=3)
    hand.core(3).receive(_vote_for(no_majority, 5, 3), addr(5), hand.now)
    assert hand.claims() == {} and hand.core(3).unauthorised == 2
    # the same with the true electorate is taken (the check is on the size)
    fair = helpers.ballot(quorum=4, electorate=7, epoch=2)
    for scout in (0, 1, 2, 5):
        hand.core(3).receive(_vote_for(fair, scout, 3), addr(scout), hand.now)
    assert hand.claims() == {3: [fair]}


def test_votes_of_strangers_are_not_counted_before_the_proposal_arrives() -> None:
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    fair = helpers.ballot(quorum=4, electorate=7)
    outsiders = [b"\xe0" + bytes([i]) * 19 for i in range(4)]  # keys that never joined
    for node in outsiders:
        site = Site(node=nid(3), host=addr(3)[0], port=7420, merit=1.0)
        msg = Vote(ballot=fair, scout=node, version=1, approve=(site,), ttl=5.0)
        hand.core(3).receive(Envelope(sender=node, msg_id=1, message=msg), addr(9), hand.now)
    assert hand.claims() == {} and hand.core(3).approvals("tiny", 1) == {}


def test_a_demand_named_far_away_gives_no_quorum_of_one() -> None:
    """A ballot (under a real order) whose demand lies 1,000 cells away, where
    nobody is seen and so an electorate of one looked fine: refused by a
    candidate that far from it."""
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    far = helpers.ballot(quorum=1, electorate=1, q=1000, r=0, epoch=7)
    hand.core(3).receive(_vote_for(far, 5, 3), addr(5), hand.now)
    assert hand.claims() == {} and hand.core(3).unauthorised == 1


def test_a_proposal_naming_scouts_of_its_own_making_is_refused() -> None:
    """Four fresh keys named among seven scouts made a majority of their own."""
    hand = Hand([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    ballot = helpers.ballot(quorum=4, electorate=7, epoch=9)
    sybils = [b"\xe0" + bytes([i]) * 19 for i in range(4)]
    named = [*sybils, nid(0), nid(1), nid(2)]
    scouts = tuple(Scout(node=n, host="10.9.9.9", port=7420) for n in named)
    proposal = Proposal(ballot=ballot, scouts=scouts, ttl=5.0)
    hand.core(3).receive(Envelope(sender=nid(5), msg_id=1, message=proposal), addr(5), hand.now)
    for node in sybils:
        site = Site(node=nid(3), host=addr(3)[0], port=7420, merit=1.0)
        msg = Vote(ballot=ballot, scout=node, version=1, approve=(site,), ttl=5.0)
        hand.core(3).receive(Envelope(sender=node, msg_id=1, message=msg), addr(9), hand.now)
    assert hand.claims() == {} and hand.core(3).unauthorised == 1
    # the seven it sees, named, make an election it takes part in
    fair = helpers.ballot(quorum=4, electorate=7, epoch=10)
    everyone = tuple(Scout(node=nid(i), host=addr(i)[0], port=7420) for i in range(7))
    proposal = Proposal(ballot=fair, scouts=everyone, ttl=5.0)
    hand.core(3).receive(Envelope(sender=nid(0), msg_id=2, message=proposal), addr(0), hand.now)
    assert hand.core(3).electorate("tiny", 10) == [nid(i) for i in range(7)]
