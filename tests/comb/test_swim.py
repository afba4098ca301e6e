"""SWIM on the discrete-event simulator: detection, dissemination, no false alarms."""

from hexamesh.comb.swim import Gossip, MemberState, MemberUpdate, Swim, SwimConfig
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
            core.set_links([node_id((i + o) % n) for o in OFFSETS])
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
    net.interact(
        addr(9),
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
    c.set_links([node_id(0), node_id(1), node_id(99), node_id(1)])
    assert c.links == [node_id(1)]


def test_push_pull_repairs_a_missed_death_and_answers_with_its_own_news() -> None:
    from hexamesh.comb.swim import Sync

    net = swarm(10)
    net.run(until=2.0)
    c = core(net, 0)
    dead = MemberUpdate(
        node=node_id(5),
        host=addr(5)[0],
        port=addr(5)[1],
        incarnation=0,
        state=MemberState.DEAD,
        by=node_id(4),
    )
    c.receive(
        Envelope(sender=node_id(4), msg_id=77, message=Sync(updates=(dead,), reply=False)),
        addr(4),
        2.0,
    )
    assert c.state_of(node_id(5)) is MemberState.DEAD
    replies = [(a, e) for a, e in c.outbox() if isinstance(e.message, Sync)]
    [(to, env)] = replies
    assert to == addr(4) and env.msg_id == 77 and env.message.reply  # type: ignore[attr-defined]
    assert any(u.node == node_id(5) and u.state is MemberState.DEAD for u in env.message.updates)  # type: ignore[attr-defined]
