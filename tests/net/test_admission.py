"""Connections per source and in total (pure bookkeeping, a trio scope to evict)."""

from __future__ import annotations

import trio

from hexamesh.net.admission import Admission


def test_per_source_and_total_bounds() -> None:
    a = Admission(total=3, per_source=2)
    t1, t2 = a.admit("10.0.0.1"), a.admit("10.0.0.1")
    assert t1 is not None and t2 is not None
    assert a.admit("10.0.0.1") is None and a.stats.refused_source == 1
    t3 = a.admit("10.0.0.2")
    assert t3 is not None
    assert a.admit("10.0.0.3") is None and a.stats.refused_full == 1  # full, nobody idle
    t1.release()
    t1.release()  # twice: counted once
    assert a.open == 2 and a.held_by("10.0.0.1") == 1
    assert a.admit("10.0.0.3") is not None


async def test_at_the_bound_the_longest_idle_is_evicted() -> None:
    a = Admission(total=2, per_source=8)
    first, second = a.admit("10.0.0.1"), a.admit("10.0.0.2")
    assert first is not None and second is not None
    s1, s2 = trio.CancelScope(), trio.CancelScope()
    first.idle(s1)
    second.idle(s2)
    assert a.admit("10.0.0.3") is not None
    assert s1.cancel_called and not s2.cancel_called and a.stats.evicted == 1
    second.busy()  # a request began: no longer evictable
    assert a.admit("10.0.0.4") is None


def test_release_forgets_sources() -> None:
    a = Admission(total=10, per_source=1)
    for i in range(100):
        t = a.admit(f"10.0.{i // 250}.{i % 250}")
        assert t is not None
        t.release()
    assert a.open == 0 and a._by_source == {}
