"""The discrete-event simulator (ladder rung 3), driving real cores."""

import random

import pytest

from hexamesh.net.rtt import RttConfig, RttProbe
from hexamesh.net.sim import (
    SKB_OVERHEAD,
    ConstantLatency,
    GeoLatency,
    SimHost,
    SimNetwork,
    UniformLatency,
)
from hexamesh.peerauth import Proof
from hexamesh.wire import MAX_STREAM_FRAME, Codec, EncodeError, Envelope
from tests.helpers import Blob, RecordingCore


def addr(i: int) -> tuple[str, int]:
    return (f"10.0.{i // 256}.{i % 256}", 7420)


def recorders(net: SimNetwork, n: int) -> list[RecordingCore]:
    cores = [RecordingCore() for _ in range(n)]
    for i, core in enumerate(cores):
        net.add_host(addr(i), lambda host, c=core: c)
    return cores


def blob(data: bytes = b"x") -> Envelope:
    return Envelope(sender=bytes(20), msg_id=1, message=Blob(data=data))


def test_delivers_after_latency_and_counts() -> None:
    net = SimNetwork(latency=ConstantLatency(0.010))
    a, b = recorders(net, 2)
    a.send(addr(1), blob())
    net.interact(addr(0), lambda core, now: None)
    net.run(until=0.009)
    assert b.received == []
    net.run(until=0.010)
    [(env, sender, when)] = b.received
    assert env == blob() and sender == addr(0) and when == pytest.approx(0.010)
    h0, h1 = net.hosts[addr(0)], net.hosts[addr(1)]
    assert (h0.sent_msgs, h1.recv_msgs) == (1, 1)
    assert h0.sent_bytes == h1.recv_bytes > 0


def test_timers_fire_at_the_requested_time_and_can_be_moved() -> None:
    net = SimNetwork()
    [core] = recorders(net, 1)
    core.wake_at = 5.0
    net.interact(addr(0), lambda c, now: None)
    core.wake_at = 2.0  # moved earlier: only the new time fires
    net.interact(addr(0), lambda c, now: None)
    net.run(until=10.0)
    assert core.timers == [2.0]


def run_rtt_swarm(
    seed: int, n: int = 200, loss: float = 0.0
) -> tuple[list[float | None], dict[str, float]]:
    net = SimNetwork(seed=seed, latency=UniformLatency(0.001, 0.005), loss=loss)

    def factory(host: SimHost) -> RttProbe:
        return RttProbe(host.index.to_bytes(20, "big"), RttConfig(interval=1.0), host.rng)

    for i in range(n):
        net.add_host(addr(i), factory)
    for i in range(n):
        target = addr((i * 7 + 1) % n)
        net.interact(addr(i), lambda core, now, t=target: core.watch(t, now))
    net.run(until=10.0)
    probes = [net.hosts[addr(i)].core for i in range(n)]
    srtts = [p.srtt(addr((i * 7 + 1) % n)) for i, p in enumerate(probes) if isinstance(p, RttProbe)]
    return srtts, net.traffic()


def test_same_seed_replays_exactly_and_another_seed_differs() -> None:
    assert run_rtt_swarm(1) == run_rtt_swarm(1)
    assert run_rtt_swarm(1)[0] != run_rtt_swarm(2)[0]


def test_rtt_cores_measure_the_simulated_latency() -> None:
    srtts, traffic = run_rtt_swarm(3)
    assert all(s is not None and 0.002 <= s <= 0.010 for s in srtts)
    # 200 nodes x 10 probes (t=0..9) x (ping + pong)
    assert traffic["delivered"] == 200 * 10 * 2


def test_loss_is_applied_at_about_the_configured_rate() -> None:
    _, traffic = run_rtt_swarm(4, loss=0.2)
    rate = traffic["lost"] / traffic["sent_msgs"]
    assert 0.15 < rate < 0.25


def test_partition_cuts_traffic_both_ways_and_heal_restores_it() -> None:
    net = SimNetwork()
    a, b, c = recorders(net, 3)
    net.partition([addr(0)], [addr(1), addr(2)])
    a.send(addr(1), blob())
    b.send(addr(2), blob())
    b.send(addr(0), blob())
    for i in range(3):
        net.interact(addr(i), lambda core, now: None)
    net.run(until=1.0)
    assert (len(a.received), len(b.received), len(c.received)) == (0, 0, 1)
    assert net.partitioned == 2
    net.heal()
    a.send(addr(1), blob())
    net.interact(addr(0), lambda core, now: None)
    net.run(until=2.0)
    assert len(b.received) == 1


def test_partition_also_cuts_messages_already_in_flight() -> None:
    net = SimNetwork(latency=ConstantLatency(1.0))
    a, b = recorders(net, 2)
    a.send(addr(1), blob())
    net.interact(addr(0), lambda core, now: None)
    net.call_at(0.5, lambda: net.partition([addr(0)]))
    net.run(until=2.0)
    assert b.received == [] and net.partitioned == 1


def test_kill_drops_traffic_and_timers_restart_gives_a_fresh_core() -> None:
    made: list[RecordingCore] = []

    def factory(host: SimHost) -> RecordingCore:
        made.append(RecordingCore())
        return made[-1]

    net = SimNetwork()
    net.add_host(addr(0), factory)
    net.add_host(addr(1), factory)
    sender, victim = made
    victim.wake_at = 5.0
    net.interact(addr(1), lambda c, now: None)
    net.kill(addr(1))
    sender.send(addr(1), blob())
    net.interact(addr(0), lambda c, now: None)
    net.run(until=10.0)
    assert victim.received == [] and victim.timers == [] and net.to_dead == 1
    with pytest.raises(RuntimeError, match="dead"):
        net.interact(addr(1), lambda c, now: None)
    net.restart(addr(1))
    fresh = made[-1]
    assert fresh is not victim and net.hosts[addr(1)].core is fresh
    sender.send(addr(1), blob())
    net.interact(addr(0), lambda c, now: None)
    net.run(until=11.0)
    assert len(fresh.received) == 1


def sleeper(net: SimNetwork) -> tuple[RecordingCore, RecordingCore]:
    """Host 0 sends; host 1 wants to be woken at 5 s."""
    [sender] = recorders(net, 1)
    sleeping = RecordingCore()
    net.add_host(addr(1), lambda host: sleeping)
    sleeping.wake_at = 5.0
    net.interact(addr(1), lambda c, now: None)
    return sender, sleeping


def test_thaw_resumes_the_same_core_its_overdue_timer_fires_at_once() -> None:
    net = SimNetwork()
    sender, frozen = sleeper(net)
    net.kill(addr(1))  # stopped with nothing held (``freeze`` keeps a socket buffer: below)
    sender.send(addr(1), blob())
    net.interact(addr(0), lambda c, now: None)
    net.run(until=8.0)
    assert frozen.received == [] and frozen.timers == []
    net.thaw(addr(1))  # SIGCONT at 8 s
    assert net.hosts[addr(1)].core is frozen
    net.run(until=8.0)
    assert frozen.timers == [8.0]  # late, not lost
    sender.send(addr(1), blob(b"after"))
    net.interact(addr(0), lambda c, now: None)
    net.run(until=9.0)
    assert [env.message for env, _, _ in frozen.received] == [blob(b"after").message]


def test_a_frozen_host_gets_what_its_socket_buffer_held_before_its_overdue_timer() -> None:
    net = SimNetwork()
    sender, frozen = sleeper(net)
    size = Codec.sealed_size(blob(b"0"), Proof.SIGNED)  # it never heard the frozen one
    room = 3 * (size + SKB_OVERHEAD)  # three datagrams fit
    net.freeze(addr(1), buffer=room)
    for i in range(5):
        sender.send(addr(1), blob(str(i).encode()))
    net.interact(addr(0), lambda c, now: None)
    net.run(until=8.0)
    assert frozen.received == [] and frozen.timers == []  # stopped
    assert (net.held, net.buffer_full, net.to_dead) == (3, 2, 0)
    assert net.hosts[addr(0)].dropped_msgs == 2
    net.thaw(addr(1))  # SIGCONT at 8 s
    net.run(until=8.0)
    # The first three, in the order they came, at the thaw; then the late timer.
    assert [env.message for env, _, _ in frozen.received] == [
        blob(str(i).encode()).message for i in range(3)
    ]
    assert frozen.log == [("receive", 8.0)] * 3 + [("timer", 8.0)]


def test_a_restarted_process_does_not_get_the_old_socket_buffer() -> None:
    net = SimNetwork()
    [sender] = recorders(net, 1)
    made: list[RecordingCore] = []

    def make(host: object) -> RecordingCore:
        made.append(RecordingCore())
        return made[-1]

    net.add_host(addr(1), make)
    net.freeze(addr(1))
    sender.send(addr(1), blob())
    net.interact(addr(0), lambda c, now: None)
    net.run(until=1.0)
    assert net.held == 1
    net.restart(addr(1))
    net.run(until=2.0)
    assert made[-1].received == [] and made[0].received == []


def test_duplication() -> None:
    net = SimNetwork(duplicate=1.0)
    a, b = recorders(net, 2)
    a.send(addr(1), blob())
    net.interact(addr(0), lambda c, now: None)
    net.run(until=1.0)
    assert len(b.received) == 2 and net.duplicated == 1


def test_link_loss_is_directional() -> None:
    net = SimNetwork()
    a, b = recorders(net, 2)
    net.set_link_loss(addr(0), addr(1), 1.0)
    a.send(addr(1), blob())
    b.send(addr(0), blob())
    net.interact(addr(0), lambda c, now: None)
    net.interact(addr(1), lambda c, now: None)
    net.run(until=1.0)
    assert (len(a.received), len(b.received)) == (1, 0)


def test_large_envelopes_go_reliably_as_streams_and_too_large_ones_fail_loudly() -> None:
    net = SimNetwork(loss=1.0, latency=ConstantLatency(0.001), stream_bandwidth=1e6)
    a, b = recorders(net, 2)
    a.send(addr(1), blob(bytes(20_000)))
    net.interact(addr(0), lambda c, now: None)
    net.run(until=1.0)
    [(_, _, when)] = b.received  # no loss on a stream
    assert when == pytest.approx(0.001 + net.hosts[addr(0)].sent_bytes / 1e6)
    assert net.streamed == 1
    # Bigger than any stream frame (field limits are checked on decode only).
    a.send(addr(1), blob(bytes(MAX_STREAM_FRAME + 1)))
    with pytest.raises(EncodeError):
        net.interact(addr(0), lambda c, now: None)


def test_geo_latency_grows_with_distance() -> None:
    net = SimNetwork(latency=GeoLatency(base=0.001, per_unit=0.1, jitter=0.0))
    near = net.add_host(addr(0), lambda h: RecordingCore(), position=(0.0, 0.0))
    close = net.add_host(addr(1), lambda h: RecordingCore(), position=(0.1, 0.0))
    far = net.add_host(addr(2), lambda h: RecordingCore(), position=(1.0, 0.0))
    rng = random.Random(0)
    assert net.latency(near, close, rng) == pytest.approx(0.011)
    assert net.latency(near, far, rng) == pytest.approx(0.101)
