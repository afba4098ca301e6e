"""Router: score order, saturation fallback, hop limit, no loops, priorities."""

from __future__ import annotations

import pytest

from hexamesh.serve.router import (
    MAX_FORWARDS,
    Candidate,
    Priority,
    RoutingPolicy,
    rank,
    score,
)

A, B, C, ME = b"a" * 20, b"b" * 20, b"c" * 20, b"m" * 20


@pytest.mark.parametrize(
    ("cand", "expected"),
    [
        (Candidate(node=ME, local=True, load=0.0), 1.0),
        (Candidate(node=A, load=0.0, distance=1), 0.4 + 0.3 + 0.15),
        (Candidate(node=A, load=0.5, distance=2), 0.2 + 0.3 + 0.1),
        (Candidate(node=A, in_view=False), 0.2 + 0.15 + 0.0),  # DHT-only: unknown load, half match
    ],
)
def test_score_is_the_designs_formula(cand: Candidate, expected: float) -> None:
    assert score(cand) == pytest.approx(expected)


def test_lighter_and_closer_wins() -> None:
    near_busy = Candidate(node=A, load=0.8, distance=1)
    far_idle = Candidate(node=B, load=0.0, distance=3)
    dht_only = Candidate(node=C, in_view=False)
    assert [c.node for c in rank([dht_only, near_busy, far_idle])] == [B, A, C]


def test_local_wins_a_tie() -> None:
    local = Candidate(node=ME, local=True, load=0.3)
    peer = Candidate(node=A, load=0.3, distance=0)  # same score as local
    assert score(local) == pytest.approx(score(peer))
    assert rank([peer, local])[0].local


def test_saturated_servers_are_the_least_loaded_fallback() -> None:
    full = Candidate(node=A, load=0.99, distance=1)
    fuller = Candidate(node=B, load=1.0, distance=1)
    ok = Candidate(node=C, load=0.7, distance=5)
    assert [c.node for c in rank([fuller, full, ok])] == [C, A, B]
    assert [c.node for c in rank([fuller, full])] == [A, B]


def test_no_loops_and_hop_limit() -> None:
    local = Candidate(node=ME, local=True, load=0.9)
    peers = [Candidate(node=A, load=0.0, distance=1), Candidate(node=B, load=0.0, distance=1)]
    assert [c.node for c in rank([local, *peers], path=[A])] == [B, ME]
    assert [c.node for c in rank([local, *peers], forwards=MAX_FORWARDS)] == [ME]
    assert rank(peers, forwards=MAX_FORWARDS) == []


def test_view_beats_dht_for_the_same_node() -> None:
    fresh = Candidate(node=A, load=0.1, distance=1)
    stale = Candidate(node=A, in_view=False)
    (only,) = rank([stale, fresh])
    assert only == fresh


def test_priorities() -> None:
    young = Candidate(node=A, load=0.1, distance=1, uptime=60)
    old = Candidate(node=B, load=0.2, distance=1, uptime=7200)
    assert rank([young, old])[0].node == A
    assert rank([young, old], priority=Priority.HIGH)[0].node == B
    busy = Candidate(node=C, load=0.7, distance=1)
    assert [c.node for c in rank([busy, young], priority=Priority.LOW)] == [A]
    # with no lightly loaded server, low takes the least loaded (and waits in its engine)
    busier = Candidate(node=B, load=0.9, distance=1)
    assert [c.node for c in rank([busier, busy], priority=Priority.LOW)] == [C, B]


def test_a_routing_policy_moves_the_choice() -> None:
    near_busy = Candidate(node=A, load=0.6, distance=0)
    far_idle = Candidate(node=B, load=0.0, distance=6)
    assert rank([near_busy, far_idle])[0].node == A  # proximity wins by default
    loady = RoutingPolicy(weight_load=0.8, weight_match=0.1, weight_proximity=0.1)
    assert rank([near_busy, far_idle], policy=loady)[0].node == B
    strict = RoutingPolicy(low_max_load=0.7)
    assert rank([near_busy], priority=Priority.LOW, policy=strict) == [near_busy]
    assert rank([near_busy, far_idle], policy=RoutingPolicy(saturated=0.5))[0].node == B


def test_doubtful_candidates_come_last_whatever_their_score() -> None:
    doubtful = Candidate(node=A, in_view=False, doubtful=True)
    busy = Candidate(node=B, load=1.0, distance=9)
    assert [c.node for c in rank([doubtful, busy])] == [B, A]
    assert [c.node for c in rank([doubtful])] == [A]  # but still tried
    assert rank([doubtful, Candidate(node=A, load=0.2, distance=1)])[0].doubtful is False


def test_ties_are_broken_per_ranking_node() -> None:
    # Nine DHT-only providers: same score, unknown load; nothing tells them apart.
    providers = [Candidate(node=bytes([i]) * 20, in_view=False) for i in range(9)]
    firsts = [rank(providers, ranker=bytes([r]) * 20)[0].node for r in range(100)]
    # The same ranker always picks the same one (the order is total and stable) ...
    assert rank(providers, ranker=b"x" * 20) == rank(providers[::-1], ranker=b"x" * 20)
    # ... but different rankers spread over the providers instead of all taking one.
    assert len(set(firsts)) >= 7
    assert max(firsts.count(n) for n in set(firsts)) <= 30
    # A tie-break only: a better score still wins for every ranker.
    better = Candidate(node=b"z" * 20, load=0.0, distance=3)
    assert all(rank([*providers, better], ranker=bytes([r]) * 20)[0] == better for r in range(20))


def test_requests_open_at_a_server_break_ties_before_its_stale_load() -> None:
    a = Candidate(node=A, load=0.2, distance=1)
    b = Candidate(node=B, load=0.2, distance=1)
    first = rank([a, b], ranker=ME)[0].node
    other = B if first == A else A
    assert rank([a, b], ranker=ME, inflight={first: 1})[0].node == other
    assert rank([a, b], ranker=ME, inflight={first: 1, other: 2})[0].node == first
    # a better score still wins whatever is open there
    idle = Candidate(node=A, load=0.0, distance=1)
    assert rank([idle, b], inflight={A: 5})[0].node == A
