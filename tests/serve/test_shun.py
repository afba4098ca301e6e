"""Shunned: servers that failed lately are tried last, for a while."""

from __future__ import annotations

from hexamesh.serve.router import Candidate, rank
from hexamesh.serve.shun import Shunned

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


def test_a_failed_server_goes_last_until_the_period_ends() -> None:
    shunned = Shunned(period=30.0)
    cands = [Candidate(node=A, load=0.0, distance=1), Candidate(node=B, load=0.5, distance=3)]
    assert rank(shunned.apply(cands, 0.0))[0].node == A
    shunned.failed(A, 10.0)
    assert [c.node for c in rank(shunned.apply(cands, 20.0))] == [B, A]  # still tried, last
    assert rank(shunned.apply(cands, 40.0))[0].node == A  # forgiven
    assert not shunned.is_shunned(A, 40.0)


def test_a_success_clears_the_mark_and_marks_are_bounded() -> None:
    shunned = Shunned(period=30.0, max_entries=2)
    shunned.failed(A, 0.0)
    shunned.served(A)
    assert not shunned.is_shunned(A, 1.0)
    for node in (A, B, C):
        shunned.failed(node, 1.0)
    assert [shunned.is_shunned(n, 2.0) for n in (A, B, C)] == [False, True, True]  # oldest went
    shunned.failed(B, 3.0)  # failing again renews and makes it the newest
    shunned.failed(A, 3.0)
    assert [shunned.is_shunned(n, 4.0) for n in (A, B, C)] == [True, True, False]  # C evicted
