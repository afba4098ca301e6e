import random
from dataclasses import replace

import pytest

from hexamesh.comb.advert import (
    PROOF_EVERY,
    PROOF_FRESH,
    NodeKeySigner,
    StandInSigner,
    advert_bytes,
)
from hexamesh.comb.core import Comb, CombConfig
from hexamesh.comb.waggle import Dance, HopDance, Waggle, WaggleConfig, WaggleMsg
from hexamesh.hexgrid import ORIGIN, Hex
from hexamesh.identity import Identity
from tests.helpers import identity, nid


def dance(n: int, version: int = 1, load: float = 0.0) -> Dance:
    first = Dance.first(n.to_bytes(20, "big"), ("10.0.0.1", n), n, 0, models=("tiny",), load=load)
    return replace(first, version=version)


def waggle(n: int, links: list[int]) -> Waggle:
    w = Waggle(dance(n), WaggleConfig(), random.Random(n), 0.0)
    w.set_links({i.to_bytes(20, "big"): ("10.0.0.1", i) for i in links})
    return w


def deliver(src: Waggle, nodes: dict[int, Waggle], now: float) -> None:
    for (_, port), env in src.outbox():
        assert isinstance(env.message, WaggleMsg)
        nodes[port].receive(env.message, now)


def test_dances_travel_two_rings_and_no_further() -> None:
    # A line 1 - 2 - 3 - 4: 1's dance reaches 2 and 3, never 4.
    nodes = {1: waggle(1, [2]), 2: waggle(2, [1, 3]), 3: waggle(3, [2, 4]), 4: waggle(4, [3])}
    t = 0.0
    for _ in range(5):
        t += 1.0
        for n in (1, 2, 3, 4):
            nodes[n].handle_timer(t)
            deliver(nodes[n], nodes, t)
    one = (1).to_bytes(20, "big")
    assert one in nodes[2].view and one in nodes[3].view and one not in nodes[4].view


def test_older_versions_are_ignored() -> None:
    w = waggle(1, [])
    assert w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=5), hops=2),)), 1.0)
    assert not w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=2),)), 2.0)
    assert w.view[(2).to_bytes(20, "big")].dance.version == 5


def test_a_restarted_node_s_dances_beat_those_of_its_old_process() -> None:
    """A restart begins again at version 1, one incarnation up: peers that still
    relay the old process's dance (version 9, a cell it no longer holds) must
    not keep it over the new one's."""
    w = waggle(1, [])
    old = replace(dance(2, version=9), q=-1, r=1)
    new = replace(dance(2, version=1), incarnation=1)
    assert w.receive(WaggleMsg(dances=(HopDance(dance=old, hops=1),)), 1.0)
    assert w.receive(WaggleMsg(dances=(HopDance(dance=new, hops=2),)), 2.0) == [new]
    assert not w.receive(WaggleMsg(dances=(HopDance(dance=old, hops=1),)), 3.0)  # relayed late
    assert w.view[(2).to_bytes(20, "big")].dance == new


def test_a_noticeable_change_is_danced_early_a_small_one_waits() -> None:
    w = waggle(1, [2])
    w.handle_timer(w.next_timer())
    w.outbox()
    regular = w.next_timer()
    w.update(regular - 0.9, load=0.05)  # small: wait for the heartbeat
    assert w.next_timer() == regular
    w.update(regular - 0.9, load=0.5)  # noticeable: soon, but not before min_interval
    assert w.next_timer() < regular
    assert w.dance.version == 3


def test_a_new_cell_is_danced_at_once() -> None:
    """Neighbours link to a node (and so watch it) once they hear its cell: a node
    killed between taking a cell and its next heartbeat was never declared dead."""
    w = waggle(1, [2])
    w.handle_timer(w.next_timer())
    w.outbox()
    regular = w.next_timer()
    w.update(regular - 0.9, q=5, r=-3)  # 0.1 s after the last push
    assert w.next_timer() == pytest.approx(regular - 1.0 + w.config.min_interval)  # not 0.9 s on


def one(n: int) -> bytes:
    return n.to_bytes(20, "big")


def test_a_node_dances_back_to_whoever_danced_to_it() -> None:
    # 2 links to 1 across a hole, 1 does not link to 2: 1 still answers 2 for a while.
    w = waggle(1, [])
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2), hops=2),)), 0.5, ("10.0.0.1", 2))
    w.handle_timer(w.next_timer())
    assert [a for a, _ in w.outbox()] == [("10.0.0.1", 2)]
    w.handle_timer(10.0)  # 2 went quiet for longer than answer_for heartbeats
    assert w.outbox() == []


def test_a_dance_heard_first_from_a_relay_is_relayed_once_heard_from_its_source() -> None:
    w = waggle(1, [3])
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=1),)), 0.1)
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=2),)), 0.2)
    w.handle_timer(w.next_timer())
    [(_, env)] = w.outbox()
    carried = {hd.dance.node: hd.hops for hd in env.message.dances}  # type: ignore[attr-defined]
    assert carried[one(2)] == 1


def test_a_noticeable_change_heard_from_a_link_is_relayed_early() -> None:
    w = waggle(1, [3])
    w.handle_timer(w.next_timer())
    w.outbox()
    regular = w.next_timer()
    t = regular - 0.9
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=2, load=0.0), hops=2),)), t)
    soon = w.next_timer()
    assert soon < regular
    w.handle_timer(soon)
    w.outbox()
    regular = w.next_timer()
    t = soon + 0.05
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=3, load=0.05), hops=2),)), t)
    assert w.next_timer() == regular  # a small change waits for the heartbeat


def test_the_dance_of_a_node_held_dead_is_dropped_and_not_relayed() -> None:
    w = waggle(1, [3])
    dead: dict[bytes, int] = {}  # node -> incarnation held dead at
    w.dead = dead
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=2),)), 0.1)
    dead[one(2)] = 0
    # a link relays the same dance back: it no longer refreshes our copy, it ends it
    assert not w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=1),)), 0.2)
    assert one(2) not in w.view
    w.handle_timer(w.next_timer())
    [(_, env)] = w.outbox()
    assert [hd.dance.node for hd in env.message.dances] == [one(1)]  # type: ignore[attr-defined]
    # a refutation (a higher incarnation) passes
    back = replace(dance(2, version=5), incarnation=1)
    assert w.receive(WaggleMsg(dances=(HopDance(dance=back, hops=2),)), 0.3) == [back]


def test_a_view_entry_is_dropped_when_its_node_is_declared_dead() -> None:
    w = waggle(1, [3])
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2), hops=2),)), 0.1)
    w.dead = {one(2): 0}
    w.handle_timer(0.5)  # long before the entry would expire
    assert one(2) not in w.view


# -- adverts: what a node says of itself, proven by its key ------------------------


def signed(n: int, links: list[int], clock: float = 0.0) -> tuple[Waggle, Identity]:
    """Node ``n`` with a real key: its id is the key's, its adverts signed."""
    me = identity(n)
    d = Dance.first(me.node_id, ("10.0.0.1", n), n, 0, models=("tiny",))
    w = Waggle(d, WaggleConfig(), random.Random(n), clock, signer=NodeKeySigner(me))
    w.set_links({nid(i): ("10.0.0.1", i) for i in links})
    return w, me


def pushes(w: Waggle, now: float) -> list[WaggleMsg]:
    w.handle_timer(now)
    out = [env.message for _, env in w.outbox()]
    assert all(isinstance(m, WaggleMsg) for m in out)
    return out  # type: ignore[return-value]


def test_a_relayed_dance_counts_only_once_its_advert_is_proven() -> None:
    """A dance from its own node is proven by the frame; relayed, by its
    node's signature, which rides its own pushes for a few rounds after a
    change and every PROOF_EVERY pushes; once proven, the same advert needs
    no proof again."""
    one, _ = signed(1, [2])
    me, _ = signed(3, [])
    first = pushes(one, 1.0)[0].dances[0].dance
    assert first.proof  # a fresh advert: proven on its first pushes
    bare = replace(first, proof=b"", version=first.version + 1)
    relayed = WaggleMsg(dances=(HopDance(dance=bare, hops=1),))
    assert me.receive(relayed, 1.0, sender_node=nid(2)) == []  # not proven: dropped
    assert me.unproven == 1
    relay = WaggleMsg(dances=(HopDance(dance=first, hops=1),))
    assert me.receive(relay, 1.1, sender_node=nid(2)) == [first]  # the proof travels along
    later = replace(bare, version=first.version + 2, load=0.5)
    got = me.receive(WaggleMsg(dances=(HopDance(dance=later, hops=1),)), 1.2, sender_node=nid(2))
    assert got == [later]  # the advert it proved: no proof needed
    for t in range(2, 2 + PROOF_FRESH + PROOF_EVERY):  # (pushes 1..: one a second)
        (msg,) = pushes(one, float(t))
        due = (t + int.from_bytes(nid(1)[:4], "big")) % PROOF_EVERY == 0
        assert bool(msg.dances[0].dance.proof) == (t <= PROOF_FRESH or due)


def test_a_forged_dance_of_another_node_cannot_move_its_traffic() -> None:
    """A key holder relays the victim's dance with its own address or models:
    not proven by the victim's key, it is dropped, whatever proof it carries."""
    me, _ = signed(3, [])
    victim, _ = signed(1, [2])
    real = pushes(victim, 1.0)[0].dances[0].dance
    me.receive(WaggleMsg(dances=(HopDance(dance=real, hops=1),)), 1.0, sender_node=nid(2))
    mallory = identity(66)
    for lie in (
        replace(real, host="10.6.6.6", version=9, proof=b""),
        replace(real, models=("big",), version=9, proof=real.proof),  # the old proof
        replace(real, port=6666, version=9, proof=NodeKeySigner(mallory).sign(b"x")),
    ):
        lie = replace(lie, proof=lie.proof or NodeKeySigner(mallory).sign(advert_bytes(lie)))
        assert (
            me.receive(WaggleMsg(dances=(HopDance(dance=lie, hops=1),)), 2.0, None, nid(66)) == []
        )
    assert me.view[nid(1)].dance == replace(real, proof=b"") and me.unproven == 3
    # The victim's own word moves it at once: the frame proves the sender.
    moved = replace(real, host="10.0.0.9", version=10, proof=b"")
    assert me.receive(WaggleMsg(dances=(HopDance(dance=moved, hops=2),)), 3.0, None, nid(1))


def test_the_agent_signs_adverts_with_its_node_key() -> None:
    from hexamesh.agent import AgentCores

    cores = AgentCores.build(identity(5), ("10.0.0.5", 7420), random.Random(5), 0.0)
    signer = cores.comb.waggle.signer
    assert isinstance(signer, NodeKeySigner) and signer.identity is identity(5)
    advert = advert_bytes(cores.comb.waggle.dance)
    proof = signer.sign(advert)
    assert signer.verify(nid(5), advert, proof)
    assert not signer.verify(nid(6), advert, proof)  # names another node
    assert not signer.verify(nid(5), advert + b"x", proof)
    assert not StandInSigner().verify(nid(5), advert, proof[:20])


# -- a node without a cell ----------------------------------------------------


def test_a_restarted_neighbour_still_joining_does_not_take_the_centre_from_its_owner() -> None:
    """A node restarts and joins again: until it has its cell its dance names a
    stand-in one, (0, 0), and a neighbour that still danced to it once took
    that for a claim, then forgot the centre's owner when the node danced its
    real cell (it moved, so its old cell went). The owner's dance, unchanged,
    was no news any more: the neighbour never linked back to it (the host that
    stayed up in test_e2e_hosts). A node without a cell dances to nobody."""
    a, b, c = nid(1), nid(2), nid(3)
    addr = {a: ("10.0.0.1", 7420), b: ("10.0.0.2", 7420), c: ("10.0.0.3", 7420)}

    def node(n: int, cell: Hex, *, placed: bool = True, incarnation: int = 0) -> Comb:
        me = identity(n)
        first = Dance.first(me.node_id, addr[me.node_id], cell.q, cell.r)
        first = replace(first, incarnation=incarnation)
        signer = NodeKeySigner(me)
        return Comb(first, CombConfig(), random.Random(n), 0.0, placed=placed, signer=signer)

    def run(comb: Comb, now: float, nodes: dict[bytes, Comb]) -> list[Dance]:
        """``comb``'s timers at ``now``, its frames delivered; its own dances returned."""
        comb.handle_timer(now)
        own = []
        for to, env in comb.outbox():
            [dest] = [n for n, at in addr.items() if at == to]
            if dest in nodes:
                nodes[dest].receive(env, addr[comb.node], now)
            if isinstance(env.message, WaggleMsg):
                own += [hd.dance for hd in env.message.dances if hd.dance.node == comb.node]
        return own

    # c (at -1,1) stays up; a owns the centre, b the cell beside it, both linked.
    stay = node(3, Hex(-1, 1))
    stay.set_map({ORIGIN: a, Hex(0, 1): b}, dict(addr), 0.0)
    owner = node(1, ORIGIN, incarnation=1)  # back at its cell after its own restart
    owner.set_map({Hex(-1, 1): c, Hex(0, 1): b}, dict(addr), 0.0)
    run(owner, 1.0, {c: stay})
    assert stay.owners.get(ORIGIN) == a and a in stay.neighbours()
    # b restarts: not placed yet, it hears c, which still links to it and dances to it
    joining = node(2, ORIGIN, placed=False, incarnation=1)
    nodes = {a: owner, b: joining, c: stay}
    run(stay, 1.5, nodes)
    assert run(joining, 2.0, nodes) == []  # no cell: no dance, not even to c
    joining.update_dance(2.1, models=("tiny",))  # its engine came up first
    assert run(joining, 2.2, nodes) == []
    joining.place(Hex(0, 1), 2.5)  # its cell: now it dances it, at once
    assert {(d.q, d.r) for d in run(joining, 2.5, nodes)} == {(0, 1)}
    run(owner, 3.0, nodes)  # the same dance of a's as before: no news
    assert stay.owners.get(ORIGIN) == a and stay.owners.get(Hex(0, 1)) == b
    assert {a, b} <= set(stay.neighbours())


def test_a_waggle_without_a_cell_takes_dances_and_pushes_none_until_started() -> None:
    w = Waggle(dance(1), WaggleConfig(), random.Random(1), 0.0, dancing=False)
    w.receive(WaggleMsg(dances=(HopDance(dance=dance(2), hops=2),)), 0.0, ("10.0.0.1", 2))
    assert one(2) in w.view  # taken
    w.set_links({one(3): ("10.0.0.1", 3)})
    t = w.next_timer()
    w.handle_timer(t)
    assert w.outbox() == []  # neither to its dancer nor to a link
    w.update(t + 0.5, q=4, r=-2)  # its cell
    w.start(t + 0.5)
    assert w.next_timer() == t + 0.5  # at once, not at the next heartbeat
    w.handle_timer(t + 0.5)
    out = w.outbox()
    assert sorted(a for a, _ in out) == [("10.0.0.1", 2), ("10.0.0.1", 3)]
    assert all(env.message.dances[0].dance.q == 4 for _, env in out)  # type: ignore[attr-defined]


def test_a_waggle_without_a_cell_keeps_only_its_recent_dancers() -> None:
    """An unplaced node (one that cannot place for long) meets dancer after
    dancer: what it keeps of them (and owes them) stays within the answer
    window, as a placed node's does."""
    from hexamesh.comb.advert import StandInSigner

    cfg = WaggleConfig()
    w = Waggle(dance(1), cfg, random.Random(1), 0.0, signer=StandInSigner(), dancing=False)
    for i in range(2, 200):
        t = float(i) * cfg.heartbeat
        hd = HopDance(dance=dance(i), hops=cfg.hops)
        w.receive(WaggleMsg(dances=(hd,)), t, ("10.0.0.1", i), one(i))
        w.handle_timer(t + cfg.heartbeat / 2)
    assert len(w._dancers) <= cfg.answer_for + 1
    assert len(w._proofs_for) <= cfg.answer_for + 1
    assert w.outbox() == []
