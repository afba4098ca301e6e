"""The honeycomb service on an in-memory network under a mock clock: cell
claims through the DHT settle on one owner, joins fill the centre and its ring."""

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from hexamesh.comb.core import COMB_MESSAGES, Comb, CombConfig, ViewReply
from hexamesh.comb.service import (
    CELL_TTL,
    EVENT_BUFFER,
    RTT_SAMPLES,
    SHORTCUT_RETRY,
    SHORTCUTS,
    Honeycomb,
    cell_key,
    fetch_view,
)
from hexamesh.comb.swim import Gossip, MembershipEvent, MemberState, MemberUpdate
from hexamesh.comb.waggle import Dance
from hexamesh.dht.core import DhtConfig, DhtCore
from hexamesh.dht.providers import provider_source
from hexamesh.dht.service import DHT_MESSAGES, Dht
from hexamesh.hexgrid import ORIGIN, Hex, spiral
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.memory import MemoryNetwork, open_memory_network
from hexamesh.net.mux import Mux
from hexamesh.peerauth import Authenticator
from hexamesh.wire import Codec, Envelope, KeyRing

RING = KeyRing(bytes(range(32)))


async def start_node(nursery: trio.Nursery, net: MemoryNetwork, i: int) -> Honeycomb:
    identity = Identity.generate()
    addr = (f"10.0.0.{i}", 7420)
    rng = random.Random(i)
    clock = trio.current_time
    dht_core = DhtCore(identity, addr, DhtConfig(), rng, clock())
    comb = Comb(Dance.first(identity.node_id, addr, 0, 0), CombConfig(), rng, clock(), placed=False)
    mux = Mux()
    mux.add(dht_core, *DHT_MESSAGES)
    mux.add(comb, *COMB_MESSAGES)
    driver = CoreDriver(
        mux,
        net.endpoint(addr),
        Codec(RING, Authenticator(identity)),
        node_id=identity.node_id,
        clock=clock,
    )
    await nursery.start(driver.run)
    dht = Dht(dht_core, driver, clock=clock)
    await nursery.start(dht.run)
    honeycomb = Honeycomb(comb, driver, dht, clock=clock, rng=rng)
    await nursery.start(honeycomb.run)
    return honeycomb


async def swarm(nursery: trio.Nursery, net: MemoryNetwork, n: int) -> list[Honeycomb]:
    nodes = [await start_node(nursery, net, i) for i in range(1, n + 1)]
    seed = nodes[0].comb.addr
    for node in nodes[1:]:
        assert await node.dht.bootstrap([seed])
    return nodes


async def joined(nursery: trio.Nursery, net: MemoryNetwork, n: int) -> list[Honeycomb]:
    """A swarm whose nodes joined the comb one after the other."""
    nodes = await swarm(nursery, net, n)
    await nodes[0].join([], founder=True)
    for h in nodes[1:]:
        await h.join([nodes[0].comb.addr], founder=False)
    return nodes


@asynccontextmanager
async def joined_swarm(
    seed: int, n: int
) -> AsyncIterator[tuple[MemoryNetwork, trio.Nursery, list[Honeycomb]]]:
    """``joined`` on a network with 2 ms each way; everything stops on exit."""
    async with (
        open_memory_network(random.Random(seed), delay=lambda r: 0.002) as net,
        trio.open_nursery() as nursery,
    ):
        yield net, nursery, await joined(nursery, net, n)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(4))
async def test_racing_claims_on_one_cell_leave_exactly_one_owner(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    cell = Hex(1, -1)
    async with (
        open_memory_network(random.Random(seed), delay=lambda r: r.uniform(0.001, 0.02)) as net,
        trio.open_nursery() as nursery,
    ):
        nodes = await swarm(nursery, net, 8)
        claimants = rng.sample(nodes, n)
        won: dict[bytes, bool] = {}

        async def claim(h: Honeycomb, delay: float) -> None:
            await trio.sleep(delay)
            won[h.node] = await h.claim(cell)

        async with trio.open_nursery() as racing:
            for h in claimants:
                racing.start_soon(claim, h, rng.uniform(0.0, 0.03))
        assert sorted(won.values()) == [False] * (n - 1) + [True]
        winner = next(node for node, ok in won.items() if ok)
        # Everyone who reads every replica now, claimant or not, settles on the winner.
        for h in nodes:
            records = await h.dht.get(cell_key(cell), every_replica=True)
            best = min(records, key=lambda r: (r.seq, r.publisher_id))  # the older claim
            assert best.publisher_id == winner
        # Once the losers' released records are gone and the winner renewed its lease,
        # any plain read anywhere finds the winner alone.
        await trio.sleep(CELL_TTL / 2 + 1)
        for h in nodes:
            assert {r.publisher_id for r in await h.dht.get(cell_key(cell))} == {winner}
        nursery.cancel_scope.cancel()


async def test_joins_fill_the_centre_and_its_ring_one_owner_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_network(random.Random(7), delay=lambda r: r.uniform(0.001, 0.005)) as net,
        trio.open_nursery() as nursery,
    ):
        nodes = await swarm(nursery, net, 7)
        assert await nodes[0].join([], founder=True) == ORIGIN
        seed = nodes[0].comb.addr
        async with trio.open_nursery() as joining:  # all at once: claims race
            for h in nodes[1:]:
                joining.start_soon(lambda h=h: h.join([seed], founder=False))
        await trio.sleep(10)  # dances carry cells; contests settle
        cells = [h.cell for h in nodes]
        assert None not in cells
        assert len(set(cells)) == 7  # every cell has one owner
        compact = sorted(spiral(ORIGIN, 1))  # the centre and its ring
        assert sorted(c for c in cells if c is not None) == compact
        centre = next(h for h in nodes if h.cell == ORIGIN)
        assert len(centre.neighbours()) == 6
        # The centre's view holds every other node's dance.
        assert all(centre.state_of(h.node) is not None for h in nodes if h is not centre)
        nursery.cancel_scope.cancel()


async def test_a_joiner_keeps_the_lowest_of_its_rtt_samples(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined_swarm(4, 3) as (net, nursery, nodes):
        await trio.sleep(5)  # dances tell the seed of the others' cells
        joiner = await start_node(nursery, net, 9)
        assert await joiner.dht.bootstrap([nodes[0].comb.addr])
        # The first answer from nodes[1] comes late (a host busy for 30 ms).
        late = nodes[1].comb.addr
        ask = joiner.ask_view
        asked: list[Addr] = []

        async def noisy(addr: Addr, timeout: float = 2.0) -> tuple[ViewReply, float]:
            reply, took = await ask(addr, timeout)
            asked.append(addr)
            return reply, took + (0.030 if asked.count(addr) == 1 and addr == late else 0.0)

        joiner.ask_view = noisy  # type: ignore[method-assign]
        rtt: dict[bytes, float] = {}
        await joiner._survey([nodes[0].comb.addr], rtt)
        assert set(rtt) == {h.node for h in nodes}
        assert all(asked.count(h.comb.addr) == RTT_SAMPLES for h in nodes)
        assert max(rtt.values()) < 0.010  # 2 ms each way, not the late 34 ms


async def test_shortcut_redraws_back_off_while_there_is_nothing_to_draw(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined_swarm(6, 3) as (net, nursery, nodes):  # each links to both others
        centre = nodes[0]
        draws: list[float] = []
        draw = centre.draw_shortcuts

        def counted() -> None:
            draws.append(trio.current_time())
            draw()

        centre.draw_shortcuts = counted  # type: ignore[method-assign]
        await trio.sleep(120)
        assert centre.comb.shortcuts == []
        assert len(draws) <= 8  # 1, 2, 4 ... 60 s apart, not one a second
        # Joiners bring candidates: the wait starts over and shortcuts are drawn.
        for i in range(4, 16):
            joiner = await start_node(nursery, net, i)
            assert await joiner.dht.bootstrap([centre.comb.addr])
            await joiner.join([centre.comb.addr], founder=False)
        await trio.sleep(5)
        assert len(centre.comb.shortcuts) == SHORTCUTS
        assert not set(centre.comb.shortcuts) & set(centre.neighbours())
        # A lost slot (here: a shortcut declared dead) is filled again at once,
        # not at the next upkeep 30 s later.
        lost = centre.comb.shortcuts[0]
        host, port = centre.comb.addrs[lost]
        incarnation = centre.comb.swim.members[lost].incarnation
        verdict = MemberUpdate(
            node=lost, host=host, port=port, incarnation=incarnation, state=MemberState.DEAD,
            by=nodes[1].node,
        )  # fmt: skip
        news = Envelope(sender=nodes[1].node, msg_id=1, message=Gossip(updates=(verdict,)))
        centre.comb.receive(news, nodes[1].comb.addr, trio.current_time())
        centre.driver.poke()
        assert lost not in centre.comb.shortcuts
        with trio.fail_after(SHORTCUT_RETRY / 2):  # at once, not at a retry or a refresh
            while len(centre.comb.shortcuts) < SHORTCUTS:
                await trio.sleep(0.01)
        assert lost not in centre.comb.shortcuts  # the DHT still holds it: not drawn again


async def test_a_graceful_leave_is_known_at_once_and_frees_the_cell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined_swarm(3, 3) as (_, nursery, nodes):
        await trio.sleep(3)
        leaver = nodes[2]
        events = nodes[0].subscribe()
        got: list[tuple[MembershipEvent, float]] = []

        async def receive() -> None:
            event = await events.receive()
            got.append((event, trio.current_time()))

        nursery.start_soon(receive)
        await leaver.leave()
        await trio.sleep(0.5)  # no suspicion timeout: it said goodbye
        [(event, received_at)] = got
        assert event.node == leaver.node and event.state.name == "DEAD"
        assert received_at - event.at < 0.001  # handed over as the core made it, no polling
        await trio.sleep(2)
        assert await nodes[1].dht.get(cell_key(leaver.comb.cell)) == []


async def test_a_lagging_subscriber_drops_what_its_buffer_does_not_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A mass failure hands out more deaths at once than a channel holds: a
    subscriber that cannot miss any (the front door's) asks for a buffer as big
    as the burst it must survive."""
    async with joined_swarm(2, 1) as (_, _, nodes):
        node = nodes[0]
        channel = node.subscribe()
        big = node.subscribe(EVENT_BUFFER + 44)
        burst = [
            MembershipEvent(
                node=i.to_bytes(20, "big"),
                addr=("10.0.0.1", i),
                state=MemberState.DEAD,
                incarnation=0,
                at=0.0,
            )
            for i in range(EVENT_BUFFER + 44)
        ]
        for event in burst:
            node._publish(event)
        assert [big.receive_nowait() for _ in burst] == burst
        assert node.events_dropped == 44
        assert [channel.receive_nowait() for _ in range(EVENT_BUFFER)] == burst[:EVENT_BUFFER]


async def test_models_are_danced_to_neighbours_and_announced_in_the_dht(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with joined_swarm(5, 4) as (_, _, nodes):
        await nodes[2].set_models({"tiny": "/m/tiny"})
        await trio.sleep(2)
        assert [d.node for d in nodes[0].peers_with("tiny")] == [nodes[2].node]
        providers = await nodes[3].dht.providers("tiny")
        assert [r.publisher_id for r in providers] == [nodes[2].node]
        assert [provider_source(r.value) for r in providers] == ["/m/tiny"]  # what it loaded


async def test_fetch_view_from_nobody_is_a_plain_timeout_error() -> None:
    """Raised out of its nursery, so callers can catch it (``hexamesh peers``
    printed a traceback of the group for an agent that was down)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never read: no reply, no ICMP
        with pytest.raises(TimeoutError, match="no view"):
            await fetch_view(KeyRing.generate(), silent.getsockname(), timeout=0.2)
