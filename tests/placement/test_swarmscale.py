"""Swarmscale's thresholds, sustain, hysteresis and cooldown, step by step."""

import pytest

from hexamesh.placement.swarmscale import Reading, Scale, ScaleConfig, Swarmscale

C = ScaleConfig()


def reading(
    load: float = 0.5, queue: int = 0, ttft: float | None = None, replicas: int = 2
) -> Reading:
    return Reading(load=load, queue=queue, ttft=ttft, replicas=replicas)


def run(
    s: Swarmscale, r: Reading, start: float, until: float, step: float = 1.0
) -> list[tuple[float, Scale]]:
    out, t = [], start
    while t <= until:
        d = s.observe("tiny", r, t)
        if d is not Scale.HOLD:
            out.append((t, d))
        t += step
    return out  # type: ignore[return-value]  # (Literal members of Scale)


@pytest.mark.parametrize(
    "hot",
    [reading(load=0.81), reading(queue=101), reading(ttft=5.5)],
    ids=["load", "queue", "ttft"],
)
def test_a_sustained_hot_reading_adds_one_replica_then_cools_down(hot: Reading) -> None:
    s = Swarmscale(C)
    # Hot from t=0: the vote at t=sustain; still hot, the next when the cooldown ends.
    assert run(s, hot, 0.0, 100.0) == [(10.0, Scale.ADD), (70.0, Scale.ADD)]


@pytest.mark.parametrize(
    "calm", [reading(load=0.8), reading(queue=100), reading(ttft=5.0), reading(ttft=None)]
)
def test_at_the_thresholds_nothing_happens(calm: Reading) -> None:
    assert run(Swarmscale(C), calm, 0.0, 1000.0) == []


def test_a_burst_shorter_than_sustain_is_not_demand() -> None:
    s = Swarmscale(C)
    assert run(s, reading(load=0.95), 0.0, 9.0) == []
    assert run(s, reading(load=0.5), 10.0, 10.0) == []  # it ended: the clock restarts
    assert run(s, reading(load=0.95), 11.0, 20.0) == []
    assert run(s, reading(load=0.95), 21.0, 21.0) == [(21.0, Scale.ADD)]


def test_a_long_cold_spell_drops_one_replica_but_never_the_last() -> None:
    s = Swarmscale(C)
    cold = reading(load=0.1, queue=3)
    assert run(s, cold, 0.0, 299.0) == []
    assert run(s, cold, 300.0, 300.0) == [(300.0, Scale.DROP)]
    assert run(s, cold, 301.0, 600.0) == []  # 300 s cold again, counted from the drop
    assert run(s, cold, 601.0, 601.0) == [(601.0, Scale.DROP)]
    alone = Swarmscale(C)
    assert run(alone, reading(load=0.0, replicas=1), 0.0, 2000.0) == []
    queued = Swarmscale(C)
    assert run(queued, reading(load=0.1, queue=10), 0.0, 2000.0) == []  # requests still wait


def test_between_the_thresholds_the_cold_clock_restarts() -> None:
    s = Swarmscale(C)
    assert run(s, reading(load=0.1), 0.0, 250.0) == []
    assert run(s, reading(load=0.5), 251.0, 251.0) == []
    assert run(s, reading(load=0.1), 252.0, 551.0) == []
    assert run(s, reading(load=0.1), 552.0, 552.0) == [(552.0, Scale.DROP)]
    s.forget("tiny")
    assert run(s, reading(load=0.1), 553.0, 553.0) == []
