"""SimEngine: processor sharing on a measured throughput curve."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh.simulate.engine import TINY_CPU, EngineProfile, SimEngine, SimRequest

P = TINY_CPU


def run_all(engine: SimEngine) -> list[SimRequest]:
    done: list[SimRequest] = []
    while (t := engine.next_event()) is not None:
        done += engine.advance(t)
    return done


def test_one_request_alone_runs_at_one_streams_rate() -> None:
    engine = SimEngine(P)
    req = SimRequest(key=1, prompt_tokens=10, tokens=128, arrived=0.0)
    engine.submit(req, 0.0)
    (done,) = run_all(engine)
    assert done is req
    assert req.first_token == pytest.approx(P.ttft_s)
    assert req.finished == pytest.approx(P.ttft_s + 127 / 592.0)
    assert engine.generated == pytest.approx(128)


def test_sixteen_streams_share_the_measured_total() -> None:
    engine = SimEngine(P)
    reqs = [SimRequest(key=i, prompt_tokens=10, tokens=128, arrived=0.0) for i in range(16)]
    for r in reqs:
        engine.submit(r, 0.0)
    assert len(run_all(engine)) == 16
    # Every stream at 5,410 / 16 tokens/s: slower each, faster together.
    assert max(r.finished or 0 for r in reqs) == pytest.approx(P.ttft_s + 127 * 16 / 5410.0)


def test_past_max_num_seqs_requests_wait_in_order_and_load_shows_it() -> None:
    engine = SimEngine(P)
    reqs = [SimRequest(key=i, prompt_tokens=10, tokens=64, arrived=0.0) for i in range(40)]
    for r in reqs:
        engine.submit(r, 0.0)
    load = engine.load()
    assert (load.running, load.waiting) == (P.max_num_seqs, 8)
    assert load.load == 1.0  # the batch is full
    run_all(engine)
    first_batch_end = max(r.finished or 0 for r in reqs[: P.max_num_seqs])
    assert all((r.started or 0) >= first_batch_end - 1e-9 for r in reqs[P.max_num_seqs :])
    assert engine.load().load == 0.0


def test_cancel_frees_the_slot_and_the_batch_speeds_up() -> None:
    engine = SimEngine(P)
    a = SimRequest(key=1, prompt_tokens=10, tokens=1000, arrived=0.0)
    b = SimRequest(key=2, prompt_tokens=10, tokens=1000, arrived=0.0)
    engine.submit(a, 0.0)
    engine.submit(b, 0.0)
    engine.advance(0.5)
    assert engine.cancel(2, 0.5) is b
    assert engine.cancel(2, 0.5) is None
    (done,) = run_all(engine)
    assert done is a
    rate_two = P.total_tok_s(2) / 2
    expected = 0.5 + (1000 - 1 - rate_two * (0.5 - P.ttft_s)) / 592.0
    assert a.finished == pytest.approx(expected)


def test_the_batch_cannot_change_behind_the_clock() -> None:
    engine = SimEngine(P)
    engine.submit(SimRequest(key=1, prompt_tokens=1, tokens=500, arrived=0.0), 0.0)
    with pytest.raises(RuntimeError, match="advance"):
        engine.submit(SimRequest(key=2, prompt_tokens=1, tokens=5, arrived=0.3), 0.3)
    with pytest.raises(ValueError, match="at least one token"):
        engine.submit(SimRequest(key=3, prompt_tokens=1, tokens=0, arrived=0.0), 0.0)


def test_profile_curve_interpolates_and_stays_flat_past_the_last_point() -> None:
    assert P.total_tok_s(0) == 0.0
    assert P.total_tok_s(1) == 592.0 and P.total_tok_s(16) == 5410.0
    assert 1280.0 < P.total_tok_s(8) < 5410.0
    assert P.total_tok_s(64) == 5410.0
    rates = [P.total_tok_s(n) for n in range(1, 33)]
    assert rates == sorted(rates)
    with pytest.raises(ValueError):
        EngineProfile(
            name="x",
            points=((4, 1.0), (1, 2.0)),
            ttft_s=0,
            max_num_seqs=1,
            startup_s=0,
            kv_tokens=1,
        )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 2), st.integers(1, 300)),
        min_size=1,
        max_size=60,
    )
)
def test_every_request_finishes_and_none_beats_running_alone(
    arrivals: list[tuple[float, int]],
) -> None:
    engine = SimEngine(P)
    reqs = []
    done: list[SimRequest] = []
    for key, (at, tokens) in enumerate(sorted(arrivals)):
        done += engine.advance(at)
        req = SimRequest(key=key, prompt_tokens=8, tokens=tokens, arrived=at)
        engine.submit(req, at)
        reqs.append(req)
    done += run_all(engine)
    assert sorted(r.key for r in done) == list(range(len(reqs)))
    assert engine.generated == pytest.approx(sum(r.tokens for r in reqs))
    for r in reqs:
        assert r.finished is not None
        assert r.finished >= r.arrived + P.ttft_s + (r.tokens - 1) / 592.0 - 1e-6


def test_a_conversations_next_turn_finds_its_prefix_cached() -> None:
    engine = SimEngine(TINY_CPU)
    first = SimRequest(key=1, prompt_tokens=1600, tokens=10, arrived=0.0, prefix=7)
    engine.submit(first, 0.0)
    while first.finished is None:
        engine.advance(engine.next_event() or 0.0)
    assert first.cached == 0 and first.first_token is not None
    cold = first.first_token - 0.0
    assert cold == pytest.approx(TINY_CPU.ttft_s + (1600 - 32) / TINY_CPU.prefill_tok_s)
    now = first.finished
    second = SimRequest(key=2, prompt_tokens=1710, tokens=10, arrived=now, prefix=7)
    engine.submit(second, now)
    engine.advance(now + 1.0)
    assert second.cached == 1610  # its last prompt and answer
    assert second.first_token is not None
    assert second.first_token - now == pytest.approx(
        TINY_CPU.ttft_s + (100 - 32) / TINY_CPU.prefill_tok_s
    )
    assert engine.prefix_hits == 1610 and engine.prefix_queries == 3310
    for key in range(20, 60):  # others fill the cache: the oldest prefix goes
        engine._keep(SimRequest(key=key, prompt_tokens=1000, tokens=0, arrived=now, prefix=key))
    assert 7 not in engine.prefixes
    assert sum(engine.prefixes.values()) <= TINY_CPU.kv_tokens
