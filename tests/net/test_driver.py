"""The trio driver on the in-memory terrible network (ladder rung 2: mock clock)."""

import random

import pytest
import trio
import trio.testing

from hexamesh.net.driver import CoreDriver, StreamHello
from hexamesh.net.memory import MemoryNetwork, open_memory_network
from hexamesh.net.rtt import RttConfig, RttProbe, RttSample
from hexamesh.wire import MAX_DATAGRAM, Envelope, KeyRing
from tests.helpers import Blob, RecordingCore, Stepped, codec
from tests.helpers import nid as node_id

A, B = ("10.0.0.1", 7420), ("10.0.0.2", 7420)


async def start(
    nursery: trio.Nursery, net: MemoryNetwork, addr: tuple[str, int], core: object, n: int
) -> CoreDriver:
    driver = CoreDriver(core, net.endpoint(addr), codec(n), node_id=node_id(n))  # type: ignore[arg-type]
    await nursery.start(driver.run)
    return driver


async def test_rtt_probes_over_a_delayed_lossy_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_network(random.Random(1), delay=lambda r: 0.010, loss=0.2) as net,
        trio.open_nursery() as nursery,
    ):
        a = RttProbe(node_id(1), RttConfig(interval=1.0, timeout=0.5), random.Random(1))
        b = RttProbe(node_id(2), RttConfig(), random.Random(2))
        da = await start(nursery, net, A, a, 1)
        await start(nursery, net, B, b, 2)
        heard = da.subscribe(RttSample)
        a.watch(B, trio.current_time())
        da.poke()
        await trio.sleep(100)
        samples = []
        while sample := heard.receive_nowait() if heard.statistics().current_buffer_used else None:
            samples.append(sample)
        assert a.srtt(B) == pytest.approx(0.020)
        answered = [s for s in samples if s.rtt is not None]
        # 100 probes, each needing 2 datagrams through 20% loss: ~64% answered.
        assert 45 <= len(answered) <= 80
        assert len(samples) - len(answered) == a.lost
        nursery.cancel_scope.cancel()


async def test_bad_datagrams_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        driver = await start(nursery, net, B, core, 2)
        attacker = net.endpoint(A)
        other_swarm = codec(1, KeyRing(bytes([9]) * 32))
        one = codec(1)
        good = Envelope(sender=node_id(1), msg_id=7, message=Blob(data=b"hi"))
        await attacker.send(B, other_swarm.seal(good))
        await attacker.send(B, b"garbage")
        await attacker.send(B, bytes(MAX_DATAGRAM + 1))
        await attacker.send(
            B, one.seal(Envelope(sender=node_id(1), msg_id=0, message=StreamHello(port=1)))
        )
        as_three = Envelope(sender=node_id(3), msg_id=8, message=Blob(data=b"hi"))
        await attacker.send(B, one.seal(as_three))  # node 1 speaking as node 3
        await attacker.send(B, one.seal(good))
        await trio.sleep(1)
        assert [env for env, _, _ in core.received] == [good]
        assert core.received[0][1] == A
        assert driver.stats.malformed == 5 and driver.stats.received == 1
        # the operator hears of it (a wrong swarm key), once a minute per sender
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and "another swarm's key" in warned[0].getMessage()
        await attacker.send(B, other_swarm.seal(good))
        await trio.sleep(1)
        assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
        await trio.sleep(60)
        await attacker.send(B, other_swarm.seal(good))
        await trio.sleep(1)
        assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2
        nursery.cancel_scope.cancel()


async def test_large_envelopes_travel_over_a_stream_attributed_to_the_datagram_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_network(random.Random(1), loss=1.0) as net,
        trio.open_nursery() as nursery,
    ):
        sender, receiver = RecordingCore(), RecordingCore()
        ds = await start(nursery, net, A, sender, 1)
        await start(nursery, net, B, receiver, 2)
        big = Envelope(sender=node_id(1), msg_id=3, message=Blob(data=bytes(50_000)))
        sender.send(B, big)
        ds.poke()
        await trio.sleep(1)
        assert [(env, addr) for env, addr, _ in receiver.received] == [(big, A)]
        assert ds.stats.streams_sent == 1
        nursery.cancel_scope.cancel()


async def test_a_stream_without_hello_or_that_stalls_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        driver = await start(nursery, net, B, core, 2)
        rogue = net.endpoint(A)
        s1 = await rogue.open_stream(B)
        await s1.send_frame(
            codec(1).seal(Envelope(sender=node_id(1), msg_id=1, message=Blob(data=b"x")))
        )
        s2 = await rogue.open_stream(B)  # says nothing: times out
        await trio.sleep(10)
        assert core.received == []
        assert driver.stats.stream_errors == 2
        await s1.aclose()
        await s2.aclose()
        nursery.cancel_scope.cancel()


async def test_streams_are_refused_across_a_partition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        sender, receiver = RecordingCore(), RecordingCore()
        ds = await start(nursery, net, A, sender, 1)
        await start(nursery, net, B, receiver, 2)
        net.partition([A], [B])
        sender.send(B, Envelope(sender=node_id(1), msg_id=3, message=Blob(data=bytes(5000))))
        sender.send(B, Envelope(sender=node_id(1), msg_id=4, message=Blob(data=b"small")))
        ds.poke()
        await trio.sleep(10)
        assert receiver.received == []
        assert ds.stats.stream_errors == 1 and net.partitioned == 1
        nursery.cancel_scope.cancel()


class ExplodingCore(RecordingCore):
    def receive(self, env: Envelope, sender: tuple[str, int], now: float) -> None:
        super().receive(env, sender, now)
        raise RuntimeError("bug")


async def test_a_core_bug_is_logged_and_counted_not_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = ExplodingCore()
        driver = await start(nursery, net, B, core, 2)
        peer, one = net.endpoint(A), codec(1)
        for i in range(3):
            await peer.send(
                B, one.seal(Envelope(sender=node_id(1), msg_id=i, message=Blob(data=b"")))
            )
        await trio.sleep(1)
        assert len(core.received) == 3 and driver.stats.core_errors == 3
        nursery.cancel_scope.cancel()


async def test_timers_fire_on_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        t0 = trio.current_time()
        core.wake_at = t0 + 3.0
        await start(nursery, net, A, core, 1)
        await trio.sleep(5)
        assert core.timers == [t0 + 3.0]
        nursery.cancel_scope.cancel()


async def test_events_reach_their_subscriber_after_every_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the core hands out after a poke, a timer or a message reaches the
    service that subscribed to its type, over a channel: nobody polls the core."""
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        driver = await start(nursery, net, B, core, 2)
        steps = driver.subscribe(Stepped)
        notes = driver.subscribe(str)
        core.emit("after a poke")
        t0 = trio.current_time()
        core.wake_at = t0 + 1.0
        driver.poke()
        assert notes.receive_nowait() == "after a poke"
        with trio.fail_after(2):
            assert await steps.receive() == Stepped("timer", t0 + 1.0)
        sender = net.endpoint(A)
        await sender.send(
            B, codec(1).seal(Envelope(sender=node_id(1), msg_id=1, message=Blob(data=b"x")))
        )
        with trio.fail_after(1):
            assert (await steps.receive()).what == "receive"
        core.emit(3)  # a type nobody subscribed to: counted, dropped
        driver.poke()
        assert driver.stats.events == 3 and driver.stats.events_unrouted == 1
        nursery.cancel_scope.cancel()


async def test_a_lagging_subscriber_loses_events_counted_and_may_resubscribe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        driver = await start(nursery, net, B, core, 2)
        notes = driver.subscribe(str, buffer=2)
        with pytest.raises(ValueError, match="subscriber already"):
            driver.subscribe(str)
        for i in range(5):
            core.emit(f"note {i}")
        driver.poke()
        assert [notes.receive_nowait(), notes.receive_nowait()] == ["note 0", "note 1"]
        assert driver.stats.events_dropped == 3
        notes.close()  # ends the subscription
        core.emit("unheard")
        driver.poke()
        again = driver.subscribe(str)
        core.emit("heard")
        driver.poke()
        assert again.receive_nowait() == "heard"
        nursery.cancel_scope.cancel()


async def test_full_send_queue_drops_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    from hexamesh.net.driver import DriverConfig

    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RecordingCore()
        driver = CoreDriver(
            core, net.endpoint(A), codec(1), node_id=node_id(1), config=DriverConfig(send_queue=4)
        )
        await nursery.start(driver.run)
        for i in range(10):
            core.send(B, Envelope(sender=node_id(1), msg_id=i, message=Blob(data=b"")))
        driver.poke()
        # The idle sender task takes one at once; four more fit in the queue.
        assert driver.stats.sent in (4, 5)
        assert driver.stats.send_dropped == 10 - driver.stats.sent
        nursery.cancel_scope.cancel()
