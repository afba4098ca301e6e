"""The Comb core on the simulator: links from the map, quiet steady state, views."""

import random

from hexamesh.comb.core import Comb, CombConfig
from hexamesh.comb.swim import RELINK, MembershipEvent, MemberState
from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import ORIGIN, Hex, distance, nearest_in_direction, neighbours, spiral
from hexamesh.net.base import Addr
from hexamesh.net.sim import SimHost, SimNetwork, UniformLatency


def nid(i: int) -> bytes:
    return (i + 1).to_bytes(20, "big")


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 7420)


def build(
    cells: list[Hex], models: dict[int, tuple[str, ...]] | None = None
) -> tuple[SimNetwork, list[Comb]]:
    net = SimNetwork(seed=1, latency=UniformLatency(0.001, 0.005))
    owners = {c: nid(i) for i, c in enumerate(cells)}
    addrs = {nid(i): addr(i) for i in range(len(cells))}
    combs: list[Comb] = []
    for i, cell in enumerate(cells):
        dance = Dance.first(
            nid(i), addr(i), cell.q, cell.r, models=(models or {}).get(i, ()), load=i / 10
        )

        def factory(host: SimHost, d: Dance = dance) -> Comb:
            combs.append(Comb(d, CombConfig(), host.rng, net.now))
            return combs[-1]

        net.add_host(addr(i), factory)
    for i in range(len(cells)):
        net.interact(addr(i), lambda c, now: c.set_map(owners, addrs, now))
    return net, combs


def test_the_centre_links_to_its_ring_and_steady_state_needs_no_probes() -> None:
    cells = spiral(ORIGIN, 1)
    net, combs = build(cells)
    centre = combs[0]
    assert sorted(centre.neighbours()) == sorted(nid(cells.index(c)) for c in neighbours(ORIGIN))
    net.run(until=5.0)
    first_contact = [c.swim.probes_sent for c in combs]  # each new link is probed once
    assert all(0 < p <= 6 for p in first_contact)
    net.run(until=60.0)
    # Every link danced at least once a second: proof of life, so nobody probed again.
    assert [c.swim.probes_sent for c in combs] == first_contact
    assert all(c.swim.state_of(n) is MemberState.ALIVE for c in combs for n in c.neighbours())


def test_the_view_covers_two_rings_and_peers_with_sorts_by_load() -> None:
    cells = spiral(ORIGIN, 2)
    net, combs = build(cells, models={3: ("tiny",), 9: ("tiny",), 12: ("big",)})
    net.run(until=10.0)
    centre = combs[0]
    assert all(centre.state_of(nid(i)) is not None for i in range(1, len(cells)))
    assert [d.node for d in centre.peers_with("tiny")] == [nid(3), nid(9)]  # load 0.3 < 0.9


def test_a_dead_neighbour_is_found_and_the_survivors_relink() -> None:
    cells = spiral(ORIGIN, 2)
    net, combs = build(cells)
    net.run(until=10.0)
    victim = cells.index(Hex(1, 0))
    net.kill(addr(victim))
    net.run(until=40.0)
    centre = combs[0]
    assert centre.swim.state_of(nid(victim)) is MemberState.DEAD
    owners = {c: nid(i) for i, c in enumerate(cells)}
    addrs = {nid(i): addr(i) for i in range(len(cells))}
    net.interact(addr(0), lambda c, now: c.set_map(owners, addrs, now))
    # East is now served by the nearest live cell in that sector, not the dead one.
    live = {c for c in cells if c != Hex(1, 0)}
    east = nearest_in_direction(ORIGIN, 0, live.__contains__, 4)
    assert east is not None and east != Hex(1, 0)
    assert nid(victim) not in centre.neighbours()
    assert centre.comb_links[0] == nid(cells.index(east))


def test_the_live_cell_view_hides_the_dead_and_holds_us() -> None:
    from hexamesh.comb.core import _LiveCells

    owners = {c: bytes([i]) * 20 for i, c in enumerate(spiral(ORIGIN, 1))}
    dead = {owners[Hex(1, 0)]}
    me = b"\xee" * 20
    live = _LiveCells(
        owners, ORIGIN, me, lambda n: MemberState.DEAD if n in dead else MemberState.ALIVE
    )
    assert live[ORIGIN] == me  # our cell is ours, whatever the map said
    assert Hex(1, 0) not in live and live.get(Hex(1, 0)) is None
    assert Hex(0, 1) in live and live[Hex(0, 1)] == owners[Hex(0, 1)]
    assert Hex(5, 5) not in live
    assert set(live) == set(spiral(ORIGIN, 1)) - {Hex(1, 0)} and len(live) == 6


def test_a_shortcut_that_becomes_a_comb_link_is_dropped() -> None:
    cells = [ORIGIN, Hex(6, 0)]  # past look_past_holes: no link between them yet
    net, combs = build(cells)
    centre = combs[0]
    net.interact(addr(0), lambda c, now: c.set_shortcuts([nid(1)], now))
    assert centre.shortcuts == [nid(1)]
    # It moves next to us (lost a contested cell, took another): now a comb link.
    net.interact(addr(0), lambda c, now: c.learn(nid(1), addr(1), Hex(1, 0), now) and c.relink(now))
    assert nid(1) in centre.neighbours()
    assert centre.shortcuts == []  # the service draws a far one instead


def _lone_centre() -> tuple[Comb, list[Hex]]:
    import random

    cells = spiral(ORIGIN, 2)
    owners = {c: nid(i) for i, c in enumerate(cells)}
    addrs = {nid(i): addr(i) for i in range(len(cells))}
    centre = Comb(Dance.first(nid(0), addr(0), 0, 0), CombConfig(), random.Random(0), 0.0)
    centre.set_map(owners, addrs, 0.0)
    for i in range(7, len(cells)):  # ring 2: members we know, not links
        centre.swim.add_member(nid(i), addr(i), 0, 0.0)
    centre.events()
    centre.outbox()
    return centre, cells


def test_a_relayed_dance_at_a_higher_incarnation_brings_back_a_node_held_dead() -> None:
    """We missed a refutation (cut off while it spread): the node's dance,
    relayed by a neighbour, carries its new incarnation, and SWIM's rule
    applies to it: alive at a higher incarnation beats dead at a lower one."""
    from hexamesh.comb.swim import Gossip, MemberUpdate
    from hexamesh.comb.waggle import HopDance, WaggleMsg
    from hexamesh.wire import Envelope

    centre, cells = _lone_centre()
    far, link = 10, 1  # ring 2, and a ring-1 link between us
    dead = MemberUpdate(
        node=nid(far),
        host=addr(far)[0],
        port=7420,
        incarnation=0,
        state=MemberState.DEAD,
        by=nid(link),
    )
    centre.receive(
        Envelope(sender=nid(link), msg_id=1, message=Gossip(updates=(dead,))), addr(link), 1.0
    )
    assert centre.swim.state_of(nid(far)) is MemberState.DEAD
    centre.events()

    def relayed(incarnation: int, version: int) -> Envelope:
        cell = cells[far]
        theirs = Dance.first(nid(far), addr(far), cell.q, cell.r)
        theirs = Dance(
            **{
                **{f: getattr(theirs, f) for f in theirs.__dataclass_fields__},
                "incarnation": incarnation,
                "version": version,
            }
        )
        mine = Dance.first(nid(link), addr(link), cells[link].q, cells[link].r)
        msg = WaggleMsg(dances=(HopDance(dance=mine, hops=2), HopDance(dance=theirs, hops=1)))
        return Envelope(sender=nid(link), msg_id=2, message=msg)

    centre.receive(relayed(incarnation=0, version=5), addr(link), 2.0)
    assert centre.swim.state_of(nid(far)) is MemberState.DEAD  # an old dance proves nothing
    centre.receive(relayed(incarnation=1, version=6), addr(link), 3.0)
    assert centre.swim.state_of(nid(far)) is MemberState.ALIVE
    [event] = [e for e in centre.events() if isinstance(e, MembershipEvent) and e.node == nid(far)]
    assert event.state is MemberState.ALIVE and event.incarnation == 1


def test_a_refutation_is_danced() -> None:
    from hexamesh.comb.swim import Gossip, MemberUpdate
    from hexamesh.wire import Envelope

    centre, _ = _lone_centre()
    suspect_me = MemberUpdate(
        node=nid(0), host=addr(0)[0], port=7420, incarnation=0, state=MemberState.SUSPECT, by=nid(1)
    )
    centre.receive(
        Envelope(sender=nid(1), msg_id=1, message=Gossip(updates=(suspect_me,))), addr(1), 1.0
    )
    assert centre.swim.incarnation == 1
    assert centre.waggle.dance.incarnation == 1


def test_while_a_link_is_suspected_the_node_behind_it_is_watched_too() -> None:
    cells = spiral(ORIGIN, 2)
    net, combs = build(cells)
    net.run(until=5.0)
    centre = combs[0]
    east = nid(cells.index(Hex(1, 0)))
    live = {c for c in cells if c != Hex(1, 0)}
    past = nearest_in_direction(ORIGIN, 0, live.__contains__, 4)
    assert past is not None
    behind = nid(cells.index(past))
    assert behind not in centre.swim.links

    def suspect_east(c: Comb, now: float) -> None:
        c.swim._suspect(east, c.node, now)
        assert RELINK in c.swim.orders()  # an order, as a value: the comb carries it out
        c.relink(now)

    net.interact(addr(0), suspect_east)
    # Probed and judged like a link from now on; not a comb link, not danced to.
    assert behind in centre.swim.links and behind in centre.swim._quiet_until
    assert behind not in centre.neighbours() and behind not in centre.waggle.links
    assert centre.comb_links[0] == east
    # East is alive: it refutes, and the centre stops watching past it.
    net.run(until=10.0)
    assert centre.swim.state_of(east) is MemberState.ALIVE
    assert behind not in centre.swim.links


def test_a_dead_neighbours_dance_leaves_every_view() -> None:
    """Its ring-1 neighbours relay its last dance to each other; each copy used
    to refresh the others', so it stayed in their views for as long as they
    ran. Once it is declared dead the dance is dropped everywhere."""
    cells = spiral(ORIGIN, 2)
    net, combs = build(cells)
    net.run(until=10.0)
    victim = cells.index(Hex(1, 0))
    holders = [c for c in combs if nid(victim) in c.waggle.view]
    assert len(holders) >= 6  # its ring and more
    net.kill(addr(victim))
    net.run(until=10.0 + 2 * CombConfig().waggle.expiry)  # past the echo's refreshes
    assert all(c.swim.state_of(nid(victim)) is MemberState.DEAD for c in holders)
    assert [c.node for c in holders if nid(victim) in c.waggle.view] == []


def test_a_dead_neighbour_is_forgotten_with_its_cell_and_not_detected_again() -> None:
    cells = spiral(ORIGIN, 2)
    net, combs = build(cells)
    net.run(until=10.0)
    victim = cells.index(Hex(1, 0))
    net.kill(addr(victim))
    net.run(until=40.0)
    centre = combs[0]
    assert centre.swim.state_of(nid(victim)) is MemberState.DEAD
    ttl = CombConfig().swim.tombstone_ttl
    net.run(until=40.0 + ttl + 2 * CombConfig().swim.reap_interval)
    centre.events()
    for c in combs:
        if c is not combs[victim]:
            assert c.swim.state_of(nid(victim)) is None  # forgotten...
            assert nid(victim) not in c.owners.values() and nid(victim) not in c.addrs
            assert nid(victim) not in c.neighbours()
    net.run(until=40.0 + 2 * ttl)
    # ... and not added back by a relink (which would probe it and declare it dead again)
    assert all(getattr(e, "node", None) != nid(victim) for e in centre.events())
    assert centre.swim.state_of(nid(victim)) is None


def test_a_view_of_a_map_past_the_wire_bound_still_decodes() -> None:
    """A ViewReply carried up to 4,096 cells and deaths, which no joiner could
    decode past the wire's 1,024 items: after a mass failure of that size,
    or in a swarm that large, nobody could join."""
    from hexamesh.comb.core import ViewReply
    from hexamesh.comb.swim import Gossip, MemberUpdate
    from hexamesh.peerauth import Proof
    from hexamesh.wire import (
        MAX_ITEMS,
        MAX_STREAM_FRAME,
        Codec,
        Envelope,
        decode_frame,
        encode_frame,
    )

    comb = Comb(Dance.first(nid(0), addr(0), 0, 0), CombConfig(), random.Random(1), 0.0)
    cells = spiral(ORIGIN, 40)[1:3001]  # 3,000 live neighbours' cells
    for i, cell in enumerate(cells, start=1):
        comb.learn(nid(i), addr(i % 250), cell, 0.0)
    for i in range(5000, 8000):  # and 3,000 deaths
        comb.swim.add_member(nid(i), addr(1), 0, float(i))
        death = MemberUpdate(
            node=nid(i), host="10.0.0.1", port=1, incarnation=0, state=MemberState.DEAD, by=nid(1)
        )
        comb.swim.receive(
            Envelope(sender=nid(1), msg_id=i, message=Gossip(updates=(death,))), addr(1), float(i)
        )
    reply = comb.view_reply()
    assert len(reply.cells) == len(reply.dead) == MAX_ITEMS
    assert max(distance(ORIGIN, Hex(c.q, c.r)) for c in reply.cells) <= 18  # nearest the centre
    assert nid(7999) in reply.dead  # the latest deaths first
    env = Envelope(sender=nid(0), msg_id=1, message=reply)
    assert Codec.sealed_size(env, Proof.SIGNED) <= MAX_STREAM_FRAME
    assert decode_frame(encode_frame(env)).message == reply
    assert isinstance(reply, ViewReply)


def test_a_view_reply_comes_out_only_for_a_request_of_ours() -> None:
    import random

    from hexamesh.comb.core import ViewArrived, ViewReply, ViewReq
    from hexamesh.wire import Envelope

    asker = Comb(
        Dance.first(nid(9), addr(9), 0, 0), CombConfig(max_view_requests=2), random.Random(1), 0.0,
        placed=False,
    )  # fmt: skip
    answer = ViewReply(placed=False, dances=(), cells=(), dead=())
    ids = [asker.request_view(addr(i), 0.0) for i in range(3)]  # the first is forgotten
    assert [type(env.message) for _, env in asker.outbox()] == [ViewReq] * 3
    for msg_id in [*ids, ids[2], 12345]:  # each asked one, one twice, one never asked
        asker.receive(Envelope(sender=nid(1), msg_id=msg_id, message=answer), addr(1), 0.1)
    assert asker.events() == [ViewArrived(ids[1], answer), ViewArrived(ids[2], answer)]
    assert asker.views_unasked == 3


def test_a_contest_for_our_cell_is_told_once_until_the_agent_settles_it() -> None:
    from hexamesh.comb.core import CellContested

    centre, _ = _lone_centre()
    assert centre.learn(nid(30), addr(30), ORIGIN, 1.0) is True  # it says it owns our cell
    centre.learn(nid(31), addr(31), ORIGIN, 1.1)
    assert centre.events() == [CellContested(ORIGIN)]
    centre.settling()
    centre.learn(nid(30), addr(30), ORIGIN, 2.0)
    assert centre.events() == [CellContested(ORIGIN)]
    assert centre.owners.get(ORIGIN) != nid(30)  # not in our map: the DHT decides


def test_our_accusation_goes_to_the_suspects_other_watchers() -> None:
    """SWIM orders it (``TellWatchers``, a value); the comb knows the map, so
    it finds the suspect's other neighbours and sends it to them."""
    from hexamesh.comb.swim import Gossip

    centre, cells = _lone_centre()
    east = nid(cells.index(Hex(1, 0)))
    for i, cell in enumerate(cells[1:], 1):  # as their dances tell it
        centre.learn(nid(i), addr(i), cell, 0.0)
    told: set[Addr] = set()
    t = 0.0
    while centre.swim.state_of(east) is MemberState.ALIVE and t < 30.0:  # nobody answers
        t = centre.next_timer() or t + 0.1
        centre.handle_timer(t)
        for to, env in centre.outbox():
            if isinstance(env.message, Gossip) and any(
                u.node == east and u.state is MemberState.SUSPECT for u in env.message.updates
            ):
                told.add(to)
    assert centre.swim.state_of(east) is MemberState.SUSPECT
    ring2 = {addr(cells.index(c)) for c in neighbours(Hex(1, 0)) if distance(ORIGIN, c) == 2}
    assert len(ring2) == 3 and ring2 <= told  # east's watchers that are not our links
