"""The RTT probe, stepped by hand (ladder rung 1: pure, exact times)."""

import random

import pytest

from hexamesh.net.rtt import Observation, Ping, Pong, RttConfig, RttProbe, RttSample
from hexamesh.wire import Envelope

A, B = ("10.0.0.1", 1), ("10.0.0.2", 1)


def probe(**cfg: float) -> RttProbe:
    return RttProbe(b"a" * 20, RttConfig(**cfg), random.Random(1))  # type: ignore[arg-type]


def test_answers_a_ping_with_a_pong_carrying_the_same_id() -> None:
    p = probe()
    p.receive(Envelope(sender=b"b" * 20, msg_id=42, message=Ping(host="10.0.0.1", port=1)), B, 0.0)
    [(addr, env)] = p.outbox()
    assert addr == B and env.msg_id == 42
    assert env.message == Pong(host=B[0], port=B[1])  # where the ping came from
    assert p.outbox() == []


def test_pings_and_answered_pongs_say_where_the_peer_reaches_us() -> None:
    p = probe()
    # B pinged us at A: how B reaches us
    p.receive(Envelope(sender=b"b" * 20, msg_id=1, message=Ping(host=A[0], port=A[1])), B, 0.0)
    msg_id = p.ping(B, 1.0)
    [(_, sent)] = [m for m in p.outbox() if isinstance(m[1].message, Ping)]
    assert sent.message == Ping(host=B[0], port=B[1])  # where we sent it
    seen = Pong(host="192.0.2.7", port=7420)
    p.receive(Envelope(sender=b"b" * 20, msg_id=msg_id, message=seen), B, 1.1)
    # an unsolicited pong says nothing: anyone may send one
    p.receive(Envelope(sender=b"c" * 20, msg_id=99, message=seen), ("10.0.0.3", 1), 1.2)
    got = [(o.reporter, o.seen) for o in p.events() if isinstance(o, Observation)]
    assert got == [(B[0], A), (B[0], ("192.0.2.7", 7420))]
    assert p.events() == []


def test_watch_probes_every_interval_and_smooths_rtt() -> None:
    p = probe(interval=1.0, timeout=0.5)
    p.watch(B, now=0.0)
    assert p.next_timer() == 0.0
    p.handle_timer(0.0)
    [(_, ping)] = p.outbox()
    assert p.next_timer() == 0.5  # the pong deadline comes before the next probe
    pong = Pong(host=A[0], port=A[1])
    p.receive(Envelope(sender=b"b" * 20, msg_id=ping.msg_id, message=pong), B, 0.100)
    assert p.srtt(B) == pytest.approx(0.100)
    assert p.next_timer() == 1.0
    p.handle_timer(1.0)
    [(_, ping2)] = p.outbox()
    p.receive(Envelope(sender=b"b" * 20, msg_id=ping2.msg_id, message=pong), B, 1.020)
    assert p.srtt(B) == pytest.approx(0.100 + (0.020 - 0.100) / 8)  # RFC 6298 smoothing
    samples = [s.rtt for s in p.events() if isinstance(s, RttSample)]
    assert samples == pytest.approx([0.100, 0.020])


def test_lost_probe_is_reported_once_and_late_pong_ignored() -> None:
    p = probe(interval=10.0, timeout=0.5)
    msg_id = p.ping(B, 0.0)
    p.handle_timer(0.5)
    [sample] = p.events()
    assert isinstance(sample, RttSample) and sample.rtt is None and p.lost == 1
    p.receive(Envelope(sender=b"b" * 20, msg_id=msg_id, message=Pong(host=A[0], port=1)), B, 0.9)
    assert p.events() == [] and p.srtt(B) is None


def test_limits_on_watched_and_outstanding() -> None:
    p = probe(max_watched=1, max_outstanding=2)
    p.watch(A, 0.0)
    with pytest.raises(ValueError, match="already watching 1"):
        p.watch(B, 0.0)
    for _ in range(5):
        p.ping(B, 0.0)
    assert len(p._outstanding) == 2
    for _ in range(5):  # undrained events are bounded too
        p.receive(Envelope(sender=b"b" * 20, msg_id=1, message=Ping(host=A[0], port=1)), B, 0.0)
    assert len(p.events()) == 2
