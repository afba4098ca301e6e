"""SWIM on the discrete-event simulator: detection, dissemination, no false alarms."""

import random
from dataclasses import replace

from hexamesh.comb.swim import (
    Ack,
    Forgotten,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    Probe,
    ProbeReq,
    Swim,
    SwimConfig,
)
from hexamesh.net.base import Addr
from hexamesh.net.sim import SimHost, SimNetwork, UniformLatency
from hexamesh.wire import Envelope


def node_id(i: int) -> bytes:
    return i.to_bytes(20, "big")


def addr(i: int) -> Addr:
    return (f"10.0.{i // 250}.{i % 250}", 7420)


OFFSETS = (1, -1, 2, -2, 7, -7)  # six links each: a ring with chords


def swarm(
    n: int, *, seed: int = 1, loss: float = 0.0, config: SwimConfig | None = None
) -> SimNetwork:
    net = SimNetwork(seed=seed, latency=UniformLatency(0.001, 0.01), loss=loss)

    def factory(i: int):  # type: ignore[no-untyped-def]
        def make(host: SimHost) -> Swim:
            core = Swim(node_id(i), addr(i), config or SwimConfig(), host.rng, net.now)
            for j in range(n):
                if j != i:
                    core.add_member(node_id(j), addr(j), 0, net.now)
            core.set_links([node_id((i + o) % n) for o in OFFSETS], net.now)
            core.events()  # the initial joins are not news for the test
            return core

        return make

    for i in range(n):
        net.add_host(addr(i), factory(i))
    return net


def core(net: SimNetwork, i: int) -> Swim:
    c = net.hosts[addr(i)].core
    assert isinstance(c, Swim)
    return c


def test_steady_state_is_quiet_and_within_budget() -> None:
    n = 60
    net = swarm(n)
    net.run(until=30.0)
    before = sum(h.sent_msgs for h in net.hosts.values())
    net.run(until=90.0)
    sent = sum(h.sent_msgs for h in net.hosts.values()) - before
    per_node_s = sent / n / 60.0
    assert per_node_s <= 10.0  # DESIGN's budget: ~10 datagrams per node per second
    for i in range(n):
        assert all(
            core(net, i).state_of(node_id(j)) is MemberState.ALIVE for j in range(n) if j != i
        )


def test_a_killed_node_is_declared_dead_everywhere() -> None:
    n = 60
    net = swarm(n)
    net.run(until=10.0)
    net.kill(addr(17))
    net.run(until=40.0)
    for i in range(n):
        if i != 17:
            assert core(net, i).state_of(node_id(17)) is MemberState.DEAD, i
    # The first to know was one of its links.
    first = min(
        (e.at, i)
        for i in range(n)
        if i != 17
        for e in core(net, i).events()
        if e.node == node_id(17) and e.state is MemberState.SUSPECT
    )
    assert (first[1] - 17) % n in {o % n for o in OFFSETS}
    assert first[0] - 10.0 < 3.0


def test_no_false_positives_under_loss() -> None:
    n = 40
    net = swarm(n, loss=0.05)
    net.run(until=180.0)
    for i in range(n):
        states = [core(net, i).state_of(node_id(j)) for j in range(n) if j != i]
        assert MemberState.DEAD not in states


def test_a_wrongly_suspected_node_refutes() -> None:
    n = 20
    net = swarm(n)
    net.run(until=5.0)
    rumour = MemberUpdate(
        node=node_id(3),
        host=addr(3)[0],
        port=addr(3)[1],
        incarnation=0,
        state=MemberState.SUSPECT,
        by=node_id(9),
    )
    # Told to one of 3's watchers (4 links to 3); non-watchers ignore suspicions.
    net.interact(
        addr(4),
        lambda c, now: c.receive(
            Envelope(sender=node_id(8), msg_id=1, message=Gossip(updates=(rumour,))), addr(8), now
        ),
    )
    net.run(until=60.0)
    assert core(net, 3).incarnation >= 1
    assert core(net, 3).false_suspicions_refuted >= 1
    for i in range(n):
        if i != 3:
            assert core(net, i).state_of(node_id(3)) is MemberState.ALIVE


def test_links_are_members_only_and_never_self() -> None:
    net = swarm(5)
    c = core(net, 0)
    c.set_links([node_id(0), node_id(1), node_id(99), node_id(1)], 0.0)
    assert c.links == [node_id(1)]


def exchange(asker: Swim, answerer: Swim, now: float) -> list[int]:
    """One push-pull from ``asker`` to its one link; the steps that went by."""
    from hexamesh.comb.swim import Sync

    def syncs(core: Swim) -> list[Envelope]:
        return [e for _, e in core.outbox() if isinstance(e.message, Sync)]

    asker._sync(now)
    steps = []
    pending = [(asker, answerer, e) for e in syncs(asker)]
    while pending:
        src, dst, env = pending.pop(0)
        steps.append(env.message.step)  # type: ignore[attr-defined]
        dst.receive(env, src.addr, now)
        pending += [(dst, src, e) for e in syncs(dst)]
    return steps


def test_push_pull_swaps_what_each_side_missed() -> None:
    from hexamesh.comb.swim import SYNC_ANSWER, SYNC_ASK, SYNC_REST

    a, b = lone(0, [1]), lone(1, [0])
    a.receive(gossip_from(2, verdict(8, by=2)), addr(2), 1.0)  # b missed this one
    b.receive(gossip_from(3, verdict(9, by=3)), addr(3), 1.0)  # and a this one
    assert exchange(a, b, 2.0) == [SYNC_ASK, SYNC_ANSWER, SYNC_REST]
    for c in (a, b):
        assert c.state_of(node_id(8)) is c.state_of(node_id(9)) is MemberState.DEAD


def test_push_pull_between_nodes_that_hold_the_same_news_is_one_datagram() -> None:
    from hexamesh.comb.swim import SYNC_ANSWER, SYNC_ASK

    a, b = lone(0, [1]), lone(1, [0])
    for c in (a, b):
        c.receive(gossip_from(2, verdict(8, by=2), verdict(9, by=2)), addr(2), 1.0)
    assert exchange(a, b, 2.0) == [SYNC_ASK]
    b.receive(gossip_from(3, verdict(7, by=3)), addr(3), 3.0)
    # b holds more: it answers, and a, which holds nothing b lacks, sends no rest.
    assert exchange(a, b, 4.0) == [SYNC_ASK, SYNC_ANSWER]
    assert a.state_of(node_id(7)) is MemberState.DEAD


def test_push_pull_always_carries_suspicions_each_a_confirmation() -> None:
    from hexamesh.comb.swim import SYNC_ANSWER, SYNC_ASK

    a, b = lone(0, [1, 5]), lone(1, [0, 5])  # both watch 5
    for c in (a, b):
        c.receive(gossip_from(2, verdict(8, by=2)), addr(2), 1.0)  # the same death
        c._suspect(node_id(5), c.me, 1.5)
    # The fingerprints agree (the death), yet each learns the other's suspicion.
    assert exchange(a, b, 2.0) == [SYNC_ASK, SYNC_ANSWER]
    assert a.members[node_id(5)].confirmers == {node_id(0), node_id(1)}
    assert b.members[node_id(5)].confirmers == {node_id(0), node_id(1)}


def lone(i: int, links: list[int], spread: list[int] = ()) -> Swim:  # type: ignore[assignment]
    """A core driven by hand: members 0..19, watching ``links``."""
    import random

    c = Swim(node_id(i), addr(i), SwimConfig(), random.Random(i), 0.0)
    for j in range(20):
        if j != i:
            c.add_member(node_id(j), addr(j), 0, 0.0)
    c.set_links([node_id(j) for j in links], 0.0, spread=[node_id(j) for j in spread])
    c.events()
    c.outbox()
    return c


def news_of(of: int, by: int, state: MemberState) -> MemberUpdate:
    return MemberUpdate(
        node=node_id(of),
        host=addr(of)[0],
        port=addr(of)[1],
        incarnation=0,
        state=state,
        by=node_id(by),
    )


def suspicion(of: int, by: int) -> MemberUpdate:
    return news_of(of, by, MemberState.SUSPECT)


def verdict(of: int, by: int) -> MemberUpdate:
    return news_of(of, by, MemberState.DEAD)


def gossip_from(sender: int, *updates: MemberUpdate) -> Envelope:
    return Envelope(sender=node_id(sender), msg_id=1, message=Gossip(updates=updates))


def test_only_watchers_act_on_a_suspicion() -> None:
    c = lone(0, [1, 2])
    c.receive(gossip_from(2, suspicion(of=5, by=2)), addr(2), 1.0)
    assert c.state_of(node_id(5)) is MemberState.ALIVE  # not ours to judge
    c.receive(gossip_from(2, suspicion(of=1, by=2)), addr(2), 1.0)
    assert c.state_of(node_id(1)) is MemberState.SUSPECT


def test_news_is_flooded_to_every_link_but_the_teller_twice_to_a_shortcut_once() -> None:
    c = lone(0, [1, 2, 3], spread=[4])
    dead = MemberUpdate(
        node=node_id(9),
        host=addr(9)[0],
        port=addr(9)[1],
        incarnation=0,
        state=MemberState.DEAD,
        by=node_id(1),
    )
    c.receive(gossip_from(1, dead), addr(1), 1.0)
    c.outbox()
    rounds = []
    for t in (1.1, 1.6, 2.1, 2.6):
        c.handle_timer(t)
        rounds.append(
            sorted(
                to
                for to, env in c.outbox()
                if isinstance(env.message, Gossip) and dead in env.message.updates
            )
        )
    # Links 2, 3 get it in each of two rounds, the shortcut 4 in the first (the
    # comb repairs a lost copy); 1 told us, so none.
    assert rounds[0] == sorted([addr(2), addr(3), addr(4)])
    assert rounds[1] == sorted([addr(2), addr(3)])
    assert rounds[2] == rounds[3] == []
    c.receive(gossip_from(2, dead), addr(2), 2.7)  # old news: not flooded again
    c.handle_timer(3.0)
    assert not [
        e for _, e in c.outbox() if isinstance(e.message, Gossip) and dead in e.message.updates
    ]


def test_a_verdict_replaces_the_suspicions_and_news_floods_in_the_order_made() -> None:
    c = lone(0, [1, 2, 3])

    c.receive(gossip_from(2, suspicion(of=1, by=2), suspicion(of=1, by=4)), addr(2), 0.01)
    c.receive(gossip_from(2, verdict(8, by=2), verdict(9, by=2)), addr(2), 0.02)
    c.receive(gossip_from(2, verdict(1, by=4)), addr(2), 0.03)
    c.handle_timer(0.15)  # one flood for all of it (and our own join news)
    sent = [
        (to, tuple(u for u in env.message.updates if u.node != node_id(0)))
        for to, env in c.outbox()
        if isinstance(env.message, Gossip)
    ]
    sent = [(to, updates) for to, updates in sent if updates]
    assert sent == [(addr(3), (verdict(8, by=2), verdict(9, by=2), verdict(1, by=4)))]


def test_news_arriving_meanwhile_rides_the_flood_already_due() -> None:
    c = lone(0, [1, 2, 3])
    for j in (1, 2, 3):
        c.heard(node_id(j), 0.0)  # no probes in this test
    for t in (0.15, 0.65):  # our own join news, flooded twice, out of the way
        c.handle_timer(t)
    c.outbox()
    verdicts = [verdict(j, by=2) for j in (7, 8, 9)]
    for update, t in zip(verdicts, (1.0, 1.05, 1.09), strict=True):
        c.receive(gossip_from(2, update), addr(2), t)
    assert c.next_timer() == 1.1  # the first news sets the flood...
    c.handle_timer(1.1)
    sent = sorted(
        (to, env.message.updates) for to, env in c.outbox() if isinstance(env.message, Gossip)
    )
    # ...and the rest ride it: one datagram per link, not one per item.
    assert sent == [(addr(1), tuple(verdicts)), (addr(3), tuple(verdicts))]


def test_a_quiet_link_is_probed_a_chatty_one_never() -> None:
    c = lone(0, [1, 2])
    for t in (0.0, 1.0, 2.0, 3.0):
        c.heard(node_id(1), t)  # 1 dances every second; 2 is silent from the start
        c.handle_timer(t)
    probed = [env.message.target for _, env in c.outbox() if isinstance(env.message, Probe)]
    assert node_id(2) in probed and node_id(1) not in probed[1:]


def test_helpers_that_nack_confirm_the_suspicion_and_spare_our_health() -> None:
    c = lone(0, [1, 2, 3, 4])
    for n in (2, 3, 4):
        c.heard(node_id(n), 0.9)
    c.handle_timer(1.0)  # 1 silent since it became a link: probed
    [(seq, probe)] = list(c._probes.items())
    c.handle_timer(probe.indirect_at)
    reqs = [(to, env) for to, env in c.outbox() if isinstance(env.message, ProbeReq)]
    assert len(reqs) == 3
    for to, env in reqs:
        helper = int.from_bytes(env.message.target, "big")  # type: ignore[attr-defined]
        assert helper == 1
        sender = next(n for n in (2, 3, 4) if addr(n) == to)
        c.receive(Envelope(sender=node_id(sender), msg_id=seq, message=Nack()), to, 1.7)
    c.handle_timer(probe.give_up_at)
    assert c.state_of(node_id(1)) is MemberState.SUSPECT
    assert len(c.members[node_id(1)].confirmers) == 4  # us and three helpers
    assert c.awareness.score == 0  # every helper answered: the problem is not us


def test_only_the_target_or_a_helper_asked_speaks_for_a_probe() -> None:
    """A member that saw a probe (it holds the swarm key: it can open one on
    the path) answers or nacks for it: neither counts. The target's own Ack,
    and a helper's we asked, do."""
    c = lone(0, [1, 2, 3, 4, 5])
    for n in (2, 3, 4, 5):
        c.heard(node_id(n), 0.9)
    c.handle_timer(1.0)  # 1 silent since it became a link: probed
    [(seq, probe)] = list(c._probes.items())
    c.receive(Envelope(sender=node_id(9), msg_id=seq, message=Ack(updates=())), addr(9), 1.1)
    assert seq in c._probes  # a stranger's Ack for node 1: nothing
    c.handle_timer(probe.indirect_at)
    asked = {to for to, e in c.outbox() if isinstance(e.message, ProbeReq)}
    outsider = next(n for n in (2, 3, 4, 5) if addr(n) not in asked)
    c.receive(Envelope(sender=node_id(outsider), msg_id=seq, message=Nack()), addr(outsider), 1.6)
    assert probe.nackers == set()  # a Nack from a helper not asked: no confirmation
    helper = next(n for n in (2, 3, 4, 5) if addr(n) in asked)
    c.receive(
        Envelope(sender=node_id(helper), msg_id=seq, message=Ack(updates=())), addr(helper), 1.7
    )
    assert seq not in c._probes and c.state_of(node_id(1)) is MemberState.ALIVE


def test_helpers_are_links_heard_lately_then_shortcuts_then_quiet_links() -> None:
    import random

    from hexamesh.comb.swim.probing import _Probe

    c = Swim(node_id(0), addr(0), SwimConfig(indirect_checks=2), random.Random(0), 0.0)
    for j in range(1, 6):
        c.add_member(node_id(j), addr(j), 0, 0.0)
    c.set_links([node_id(j) for j in (1, 2, 3, 5)], 0.0, spread=[node_id(4)])
    c.heard(node_id(2), 9.5)  # dances on
    c.heard(node_id(3), 7.0)  # quiet past quiet_after: should have danced, likely dead
    c.heard(node_id(5), 8.5)
    c.outbox()
    probe = _Probe(target=node_id(1), sent=9.5, indirect_at=10.0, give_up_at=10.5)
    assert c._ask_indirect(7, probe, 10.0) == 2
    asked = [to for to, e in c.outbox() if isinstance(e.message, ProbeReq)]
    assert asked == [addr(2), addr(4)]  # not 3 or 5: the shortcut 4 never dances to us


def test_a_node_tells_its_accuser_it_is_alive_even_off_its_links() -> None:
    c = lone(0, [1])
    c.receive(gossip_from(7, suspicion(of=0, by=7)), addr(7), 1.0)
    assert c.incarnation == 1
    direct = [
        u
        for to, env in c.outbox()
        if to == addr(7) and isinstance(env.message, Gossip)
        for u in env.message.updates
    ]
    assert any(u.node == node_id(0) and u.incarnation == 1 for u in direct)


def test_a_node_held_dead_at_an_old_incarnation_tells_the_holder_it_is_back() -> None:
    """A node that missed our refutation tells us its old verdict (as it does
    to a dead node that dances to it): we answer with our incarnation, once
    per probe interval, instead of leaving it to a push-pull."""
    c = lone(0, [1])
    c.receive(gossip_from(1, verdict(of=0, by=1)), addr(1), 1.0)
    assert c.incarnation == 1  # refuted
    c.outbox()

    def told(peer: int) -> list[tuple[MemberState, int]]:
        return [
            (u.state, u.incarnation)
            for to, env in c.outbox()
            if to == addr(peer)
            for u in env.message.updates  # type: ignore[attr-defined]
            if u.node == node_id(0)
        ]

    c.receive(gossip_from(7, verdict(of=0, by=7)), addr(7), 5.0)  # the old death, incarnation 0
    assert told(7) == [(MemberState.ALIVE, 1)]
    assert c.incarnation == 1  # nothing to refute again
    c.receive(gossip_from(7, verdict(of=0, by=7)), addr(7), 5.5)
    assert told(7) == []  # once per probe interval
    c.receive(gossip_from(7, verdict(of=0, by=7)), addr(7), 6.5)
    assert told(7) == [(MemberState.ALIVE, 1)]


def test_a_member_held_dead_is_tried_now_and_then_and_comes_back_if_alive() -> None:
    """Serf's reconnect: after a partition each side holds the other dead and
    hears nothing from it; one member held dead is told so every interval."""
    c = lone(0, [1])
    other = lone(8, [9])
    c.receive(gossip_from(1, verdict(of=8, by=1)), addr(1), 1.0)
    assert c.state_of(node_id(8)) is MemberState.DEAD
    c.outbox()
    interval = SwimConfig().reconnect_interval
    assert (c.next_timer() or 0.0) <= interval
    c.handle_timer(interval)
    [env] = [e for to, e in c.outbox() if to == addr(8)]
    # node 8 was only cut off: it refutes, and answers us directly
    other.receive(env, addr(0), interval)
    assert other.incarnation == 1
    back = [e for to, e in other.outbox() if to == addr(0)]
    assert back
    for e in back:
        c.receive(e, addr(8), interval + 0.01)
    assert c.state_of(node_id(8)) is MemberState.ALIVE
    c.handle_timer(2 * interval)
    assert not [e.message for to, e in c.outbox() if to == addr(8)]  # nobody held dead


def test_push_pull_exchanges_recent_news_only() -> None:
    from hexamesh.comb.swim import SYNC_ASK, Sync

    c = lone(0, [1, 2])

    c.receive(gossip_from(1, verdict(8, by=1)), addr(1), 10.0)
    c.receive(gossip_from(1, verdict(9, by=1)), addr(1), 60.0)
    ask = Envelope(
        sender=node_id(2), msg_id=5, message=Sync(updates=(), step=SYNC_ASK, fingerprint=0)
    )

    def answer(now: float) -> set[bytes]:
        """What ``c`` answers an asker that holds no news (nothing: no answer)."""
        c.outbox()
        c.receive(ask, addr(2), now)
        replies = [e.message for _, e in c.outbox() if isinstance(e.message, Sync)]
        return {u.node for reply in replies for u in reply.updates}

    age = SwimConfig().sync_news_age
    assert answer(10.0 + age) == {node_id(8), node_id(9)}
    assert answer(10.0 + age + 1.0) == {node_id(9)}  # the older death is not news any more
    assert answer(60.0 + age + 1.0) == set()
    assert c.state_of(node_id(8)) is MemberState.DEAD  # still held, just not exchanged


def test_the_piggyback_queue_is_bounded_in_a_mass_failure() -> None:
    from hexamesh.comb.swim.config import PIGGYBACK_QUEUE

    c = lone(0, [1, 2])
    deaths = [verdict(100 + j, by=1) for j in range(PIGGYBACK_QUEUE + 200)]
    for start in range(0, len(deaths), 30):
        c.receive(gossip_from(1, *deaths[start : start + 30]), addr(1), 1.0)
    assert all(c.state_of(d.node) is MemberState.DEAD for d in deaths)  # every death held
    assert len(c._queue) == PIGGYBACK_QUEUE  # but only so many wait to be piggybacked


def test_a_stale_tombstone_is_corrected_by_whoever_knows_the_return() -> None:
    """Node 8 died (incarnation 0) and came back (1). A node that missed the
    return spreads its death: every holder of the return answers with it, on a
    push-pull (request or reply) and on a flood (once per probe interval)."""
    from hexamesh.comb.swim import SYNC_ANSWER, SYNC_ASK, Sync

    c = lone(0, [1, 2])
    back = MemberUpdate(
        node=node_id(8),
        host="10.9.9.9",
        port=1,
        incarnation=1,
        state=MemberState.ALIVE,
        by=node_id(8),
    )
    c.receive(gossip_from(1, verdict(8, by=1)), addr(1), 1.0)
    c.receive(gossip_from(1, back), addr(1), 2.0)
    assert c.state_of(node_id(8)) is MemberState.ALIVE
    c.outbox()

    def sent_to(peer: int) -> list[MemberUpdate]:
        return [
            u
            for to, env in c.outbox()
            if to == addr(peer)
            for u in env.message.updates  # type: ignore[attr-defined]
            if u.node == node_id(8)
        ]

    stale = verdict(8, by=5)
    now = 200.0  # the return is long past sync_news_age: not news any more
    ask = Envelope(
        sender=node_id(2), msg_id=5, message=Sync(updates=(stale,), step=SYNC_ASK, fingerprint=0)
    )
    c.receive(ask, addr(2), now)
    assert [(u.state, u.incarnation) for u in sent_to(2)] == [(MemberState.ALIVE, 1)]
    reply = Envelope(
        sender=node_id(1),
        msg_id=6,
        message=Sync(updates=(stale,), step=SYNC_ANSWER, fingerprint=1),
    )
    c.receive(reply, addr(1), now)
    assert [(u.state, u.incarnation) for u in sent_to(1)] == [(MemberState.ALIVE, 1)]
    c.receive(gossip_from(3, stale), addr(3), now)
    assert [(u.state, u.incarnation) for u in sent_to(3)] == [(MemberState.ALIVE, 1)]
    c.receive(gossip_from(3, stale), addr(3), now + 0.5)
    assert sent_to(3) == []  # once per probe interval
    assert c.state_of(node_id(8)) is MemberState.ALIVE
    fresh = lone(4, [5])  # a node that knew nothing: the old news is all it has
    fresh.receive(gossip_from(5, stale), addr(5), now)
    assert fresh.state_of(node_id(8)) is MemberState.DEAD
    fresh.receive(
        Envelope(sender=node_id(0), msg_id=7, message=Gossip(updates=(back,))), addr(0), now
    )
    assert fresh.state_of(node_id(8)) is MemberState.ALIVE


def test_a_new_comb_link_gets_a_push_pull_once_the_flood_is_over() -> None:
    from hexamesh.comb.swim import SYNC_ASK, Sync

    c = lone(0, [1, 2])

    def syncs_at(now: float) -> list[tuple[Addr, int]]:
        c.handle_timer(now)
        return [(to, e.message.step) for to, e in c.outbox() if isinstance(e.message, Sync)]

    syncs_at(0.0)  # the first links' push-pull
    later = SwimConfig().new_link_sync
    c.set_links([node_id(j) for j in (1, 2, 3, 4)], 10.0)  # 3 and 4 are new
    c.set_links([node_id(j) for j in (1, 2, 3)], 10.5)  # 4 is gone again
    assert syncs_at(10.0 + later - 0.01) == []
    assert syncs_at(10.0 + later) == [(addr(3), SYNC_ASK)]
    assert syncs_at(14.0) == []  # once (the regular push-pull is 15-45 s after the first)


def test_a_node_swaps_news_with_a_link_as_soon_as_it_has_one() -> None:
    import random

    from hexamesh.comb.swim import SYNC_ASK, Sync

    c = Swim(node_id(0), addr(0), SwimConfig(), random.Random(0), 0.0)
    c.add_member(node_id(1), addr(1), 0, 0.0)

    def syncs_at(now: float) -> list[tuple[Addr, int]]:
        c.handle_timer(now)
        return [(to, e.message.step) for to, e in c.outbox() if isinstance(e.message, Sync)]

    assert syncs_at(1.0) == []  # no links yet
    c.set_links([node_id(1)], 2.0)
    assert syncs_at(2.0) == [(addr(1), SYNC_ASK)]
    c.set_links([node_id(1)], 3.0)  # links again: not a first link, no early sync
    assert syncs_at(3.0) == []


def test_a_relayed_suspicion_is_passed_on_with_its_accusers_not_as_ours() -> None:
    """Lifeguard counts independent accusers: a link that only heard of a
    suspicion must not become one more accuser at the other end of a push-pull."""
    a, b = lone(0, [1, 5]), lone(1, [0, 5])  # both watch 5
    a.receive(gossip_from(7, suspicion(of=5, by=7)), addr(7), 1.0)
    a._suspect(node_id(5), node_id(9), 1.2)  # another accuser a heard of (a nack, say)
    b._suspect(node_id(5), b.me, 1.5)  # b's own failed probe
    exchange(a, b, 2.0)
    assert b.members[node_id(5)].confirmers == {node_id(1), node_id(7), node_id(9)}
    assert a.members[node_id(5)].confirmers == {node_id(1), node_id(7), node_id(9)}


def test_a_node_that_left_does_not_refute_its_own_goodbye() -> None:
    """Its bye comes back to it from a link's flood (or from a node that holds it
    dead and hears its last dance): refuting it would undo the leave."""
    c = lone(0, [1, 2])
    c.leave(1.0)
    bye = [e.message for _, e in c.outbox()]
    assert len(bye) == 2 and all(m.updates[0].state is MemberState.DEAD for m in bye)  # type: ignore[attr-defined]
    c.receive(gossip_from(1, bye[0].updates[0]), addr(1), 1.1)  # type: ignore[attr-defined]
    assert c.incarnation == 1 and c.false_suspicions_refuted == 0
    assert not [e for _, e in c.outbox()]


def test_news_rides_probes_and_acks_only_until_its_flood_is_done() -> None:
    """Every link gets flooded news twice; after that, piggybacking it on each
    probe and ack for a dozen more sends only cost bytes (after a mass failure
    under loss, ~600 B per node per second for ten minutes)."""
    from hexamesh.comb.swim import Ack

    c = lone(0, [1, 2, 3])
    dead = verdict(9, by=1)

    def ack_to_probe(t: float) -> tuple[MemberUpdate, ...]:
        probe = Envelope(sender=node_id(2), msg_id=7, message=Probe(target=node_id(0), updates=()))
        c.receive(probe, addr(2), t)
        [ack] = [e.message for _, e in c.outbox() if isinstance(e.message, Ack)]
        return ack.updates

    c.receive(gossip_from(1, dead), addr(1), 1.0)
    assert dead in ack_to_probe(1.05)  # the flood has not gone yet
    c.handle_timer(1.1)  # round 1
    assert dead in ack_to_probe(1.2)
    c.handle_timer(1.6)  # round 2: done
    assert c.outbox()
    assert dead not in ack_to_probe(1.7)


def _lonely(config: SwimConfig | None = None) -> Swim:
    """A node with one link (node 2), stepped by hand."""
    swim = Swim(node_id(1), addr(1), config or SwimConfig(), random.Random(1), 0.0)
    swim.add_member(node_id(2), addr(2), 0, 0.0)
    swim.set_links([node_id(2)], 0.0)
    return swim


def _run(swim: Swim, until: float, *, heard: bytes | None = None) -> None:
    """Fire the core's timers up to ``until`` (the link dancing every second, if given)."""
    now = 0.0
    while now < until:
        due = swim.next_timer()
        now = min(until, now + 1.0, due if due is not None and due > now else now + 1.0)
        if heard is not None:
            swim.heard(heard, now)
        swim.handle_timer(now)
        swim.outbox()


def test_tombstones_and_quiet_members_are_forgotten_links_never() -> None:
    cfg = SwimConfig()
    swim = _lonely(cfg)
    dead, quiet = node_id(7), node_id(8)
    verdict = MemberUpdate(
        node=dead, host="10.0.0.7", port=7420, incarnation=0, state=MemberState.DEAD, by=node_id(2)
    )
    swim.receive(
        Envelope(sender=node_id(2), msg_id=1, message=Gossip(updates=(verdict,))), addr(2), 1.0
    )
    swim.add_member(quiet, ("10.0.0.8", 7420), 0, 1.0)  # a former shortcut, say
    assert swim.state_of(dead) is MemberState.DEAD and swim.state_of(quiet) is MemberState.ALIVE
    _run(swim, cfg.tombstone_ttl - cfg.reap_interval, heard=node_id(2))
    assert swim.state_of(dead) is MemberState.DEAD  # kept for its time
    _run(swim, cfg.tombstone_ttl + 2 * cfg.reap_interval + 1, heard=node_id(2))
    assert swim.state_of(dead) is None and swim.state_of(quiet) is None
    # the dead one's cell goes with it; the live one's stays
    assert [o for o in swim.orders() if isinstance(o, Forgotten)] == [Forgotten(dead)]
    assert swim.state_of(node_id(2)) is MemberState.ALIVE  # the link stays
    assert dead not in swim.dead and set(swim.members) == {node_id(2)}


def test_a_reaped_death_going_round_again_is_old_news_not_a_new_tombstone() -> None:
    """A death still relayed after we reaped it (by a node that reaped it
    later, or a late flood) must not become a stranger's fresh death, flooded
    again: under churn tombstones cycled for ever (a 1,000-node hour held 2.3x
    the entries at its end that it held ten minutes in)."""
    cfg = SwimConfig()
    swim = _lonely(cfg)
    swim.add_member(node_id(3), addr(3), 0, 0.0)
    swim.set_links([node_id(2), node_id(3)], 0.0)  # news from 2 floods to 3
    dead = node_id(7)
    verdict = MemberUpdate(
        node=dead, host="10.0.0.7", port=7420, incarnation=0, state=MemberState.DEAD, by=node_id(2)
    )

    def told(update: MemberUpdate, at: float) -> list[MemberUpdate]:
        news = Envelope(sender=node_id(2), msg_id=int(at), message=Gossip(updates=(update,)))
        swim.receive(news, addr(2), at)
        swim.handle_timer(at + 1.0)  # a flood round, if there is anything to flood
        return [
            u
            for _, env in swim.outbox()
            for u in getattr(env.message, "updates", ())
            if u.node == dead
        ]

    assert told(verdict, 1.0)  # news: kept and flooded
    end = cfg.tombstone_ttl + 2 * cfg.reap_interval + 1
    for now in range(2, int(end)):  # both links speak every second; timers fire
        swim.heard(node_id(2), now)
        swim.heard(node_id(3), now)
        swim.handle_timer(now)
        swim.outbox()
    assert swim.state_of(dead) is None  # reaped
    assert not told(verdict, end + 1) and swim.state_of(dead) is None  # old news
    back = replace(verdict, incarnation=1, state=MemberState.ALIVE, by=dead)
    told(back, end + 10)
    assert swim.state_of(dead) is MemberState.ALIVE  # a return is news


def test_a_push_pull_mends_what_is_held_and_teaches_no_stranger() -> None:
    """Deaths a link learned in its last sync_news_age reach us through a
    push-pull only for members we hold. Taken of strangers, each newcomer
    learned every recent death with a fresh age and flooded it back to nodes
    that had reaped it: under churn tombstones went round without end (400
    nodes x 25 min: the entries per node grew 467 -> 712; 463 -> 389 with this)."""
    from hexamesh.comb.swim import SYNC_ANSWER, Sync

    c = lone(0, [1, 2])  # holds 1..19; 30 is a stranger
    stranger = verdict(30, by=1)
    answer = Sync(updates=(verdict(8, by=1), stranger), step=SYNC_ANSWER, fingerprint=1)
    c.receive(Envelope(sender=node_id(1), msg_id=5, message=answer), addr(1), 5.0)
    c.handle_timer(6.0)  # a flood round, if there is anything to flood
    flooded = {u.node for _, e in c.outbox() for u in getattr(e.message, "updates", ())}
    assert c.state_of(node_id(8)) is MemberState.DEAD  # mended
    assert node_id(8) in flooded
    assert c.state_of(node_id(30)) is None and node_id(30) not in flooded  # not taught
    c.receive(gossip_from(1, stranger), addr(1), 7.0)
    assert c.state_of(node_id(30)) is MemberState.DEAD  # the flood still brings it


def test_a_refutation_is_passed_on_by_a_node_that_never_doubted_it() -> None:
    """After a partition heals, the side that held a node dead may hear its
    refutation only through the side that never doubted it. When those nodes
    passed on only news that changed what they held, the refutation stopped
    there and the dead were corrected by push-pulls and reconnects: views
    held live nodes dead for 30 s after the heal, not 5 s (400 nodes)."""
    c = lone(0, [1, 2])  # holds 8 alive, incarnation 0, and never doubted it
    back = replace(news_of(8, 8, MemberState.ALIVE), incarnation=1)
    c.receive(gossip_from(1, back), addr(1), 5.0)
    c.handle_timer(6.0)  # a flood round
    flooded = [(to, u) for to, e in c.outbox() for u in getattr(e.message, "updates", ())]
    assert (addr(2), back) in flooded  # on to the link that did not tell us
    assert c.events() == []  # nothing changed here: no event


def test_a_dead_link_is_kept_until_the_comb_relinks() -> None:
    cfg = SwimConfig()
    swim = _lonely(cfg)
    _run(swim, 2 * cfg.tombstone_ttl)  # the link never speaks: suspected, then dead
    assert swim.state_of(node_id(2)) is MemberState.DEAD  # still a link: not forgotten


def test_only_a_node_can_refute_a_death_for_itself() -> None:
    """A key holder relaying "node 2 is alive at incarnation 1" (to keep a
    dead node in the routes, or move its address) is refused unless node 2
    signed it; node 2's own refutation carries its proof, which relays keep."""
    from hexamesh.comb.advert import NodeKeySigner
    from tests.helpers import identity

    ids = [identity(i).node_id for i in range(4)]

    def made(i: int) -> Swim:
        s = Swim(
            ids[i], addr(i), SwimConfig(), random.Random(i), 0.0, signer=NodeKeySigner(identity(i))
        )
        for j in range(4):
            if j != i:
                s.add_member(ids[j], addr(j), 0, 0.0)
        s.set_links([ids[j] for j in range(4) if j != i], 0.0)
        s.events()
        s.outbox()
        return s

    def told(by: int, *updates: MemberUpdate) -> Envelope:
        return Envelope(sender=ids[by], msg_id=by, message=Gossip(updates=updates))

    c, two = made(0), made(2)
    dead = MemberUpdate(
        node=ids[2],
        host=addr(2)[0],
        port=addr(2)[1],
        incarnation=0,
        state=MemberState.DEAD,
        by=ids[1],
    )
    c.receive(told(1, dead), addr(1), 1.0)
    assert c.state_of(ids[2]) is MemberState.DEAD
    forged = replace(dead, incarnation=1, state=MemberState.ALIVE, by=ids[2])
    c.receive(told(3, forged), addr(3), 2.0)
    signed_by_three = NodeKeySigner(identity(3)).sign(b"anything")
    c.receive(told(3, replace(forged, proof=signed_by_three)), addr(3), 2.0)
    assert c.state_of(ids[2]) is MemberState.DEAD and c.unproven == 2
    two.receive(told(1, dead), addr(1), 1.0)  # node 2 hears it is dead: it refutes
    two.handle_timer(1.5)  # (the flood's round)
    refutation = next(
        u
        for _, env in two.outbox()
        for u in getattr(env.message, "updates", ())
        if u.node == ids[2] and u.incarnation == 1
    )
    assert refutation.proof
    moved = replace(refutation, host="10.6.6.6")  # node 2's proof, another address
    c.receive(told(3, moved), addr(3), 2.5)
    assert c.state_of(ids[2]) is MemberState.DEAD and c.unproven == 3
    c.receive(told(3, refutation), addr(3), 3.0)  # relayed by node 3: it is node 2's word
    assert c.state_of(ids[2]) is MemberState.ALIVE and c.unproven == 3
    # node 2's messages reach c from elsewhere (a NAT, a second interface):
    # what c passes on is still node 2's word as signed, address included
    c.reached_at(ids[2], ("10.9.9.9", 1))
    c.handle_timer(4.0)
    passed_on = [
        u for _, e in c.outbox() for u in getattr(e.message, "updates", ()) if u.node == ids[2]
    ]
    assert passed_on and all(u.proof == refutation.proof for u in passed_on)
    assert all((u.host, u.port) == addr(2) for u in passed_on)
    third = made(1)  # a third node takes what c passed on: its proof holds
    third.receive(told(0, passed_on[0]), addr(0), 5.0)
    assert third.unproven == 0 and third.members[ids[2]].incarnation == 1
    assert c.members[ids[2]].addr == ("10.9.9.9", 1)  # (where c reaches it, its own business)


def test_a_forged_return_does_not_end_the_memory_of_a_reaped_death() -> None:
    """A return of a member we reaped ends our memory of its death (old news
    of it is news again); a return only its node could make, relayed without
    its proof, must not: the old death would come round as new."""
    from hexamesh.comb.advert import NodeKeySigner
    from tests.helpers import identity

    c = Swim(
        identity(0).node_id,
        addr(0),
        SwimConfig(),
        random.Random(0),
        0.0,
        signer=NodeKeySigner(identity(0)),
    )
    gone = identity(2).node_id
    c._reaped[gone] = (0, 1.0)
    forged = MemberUpdate(
        node=gone, host=addr(2)[0], port=addr(2)[1], incarnation=1, state=MemberState.ALIVE, by=gone
    )
    c.receive(
        Envelope(sender=identity(3).node_id, msg_id=1, message=Gossip(updates=(forged,))),
        addr(3),
        2.0,
    )
    assert gone in c._reaped and gone not in c.members and c.unproven == 1
