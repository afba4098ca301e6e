from hexamesh.comb.broadcast import BroadcastQueue


def test_fewest_transmits_first_then_newest() -> None:
    q: BroadcastQueue[str] = BroadcastQueue(lambda: 3)
    q.queue("a", "a1", 10)
    q.queue("b", "b1", 10)
    assert q.take(100) == ["b1", "a1"]  # both at 0 sends: newest first
    q.queue("c", "c1", 10)
    assert q.take(100) == ["c1", "b1", "a1"]  # c has 0 sends, the others 1


def test_newer_news_about_a_node_replaces_the_old() -> None:
    q: BroadcastQueue[str] = BroadcastQueue(lambda: 3)
    q.queue("n1", "suspect", 10)
    q.take(100)
    q.queue("n1", "alive", 10)
    assert len(q) == 1 and q.take(100) == ["alive"]


def test_items_leave_after_the_retransmit_limit() -> None:
    q: BroadcastQueue[str] = BroadcastQueue(lambda: 2)
    q.queue("a", "a", 1)
    assert q.take(10) == ["a"] and q.take(10) == ["a"] and q.take(10) == []
    assert len(q) == 0


def test_byte_budget_skips_what_does_not_fit() -> None:
    q: BroadcastQueue[str] = BroadcastQueue(lambda: 5)
    q.queue("big", "big", 90)
    q.queue("small", "small", 5)
    assert q.take(50, overhead=2) == ["small"]
    assert q.take(100, overhead=2) == ["big", "small"]  # big has been sent 0 times, small once


def test_bounded() -> None:
    q: BroadcastQueue[int] = BroadcastQueue(lambda: 5, max_items=3)
    for i in range(10):
        q.queue(i, i, 1)
    assert len(q) == 3
    assert sorted(q.take(100)) == [7, 8, 9]
