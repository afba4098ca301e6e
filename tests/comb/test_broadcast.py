from typing import Any

from hypothesis import given
from hypothesis import strategies as st

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


class _SortEveryTime:
    """The queue's rule written plainly (sort all items for every take), to
    check the kept-in-order queue against."""

    def __init__(self, limit: int, max_items: int) -> None:
        self.limit, self.max_items = limit, max_items
        self.items: dict[int, list[int]] = {}  # key -> [value, size, transmits, serial]
        self.serial = 0

    def queue(self, key: int, value: int, size: int) -> None:
        self.serial += 1
        self.items[key] = [value, size, 0, self.serial]
        if len(self.items) > self.max_items:
            worst = max(self.items, key=lambda k: (self.items[k][2], -self.items[k][3]))
            del self.items[worst]

    def take(self, budget: int, overhead: int) -> list[int]:
        out = []
        for key in sorted(self.items, key=lambda k: (self.items[k][2], -self.items[k][3])):
            item = self.items[key]
            if item[1] + overhead > budget:
                continue
            budget -= item[1] + overhead
            out.append(item[0])
            item[2] += 1
            if item[2] >= self.limit:
                del self.items[key]
        return out


@given(
    st.integers(1, 4),
    st.integers(1, 8),
    st.lists(
        st.one_of(
            st.tuples(st.just("queue"), st.integers(0, 12), st.integers(1, 40)),
            st.tuples(st.just("take"), st.integers(0, 120), st.integers(0, 5)),
        ),
        max_size=60,
    ),
)
def test_takes_what_sorting_every_item_would(limit: int, max_items: int, ops: list[Any]) -> None:
    q: BroadcastQueue[int] = BroadcastQueue(lambda: limit, max_items=max_items)
    model = _SortEveryTime(limit, max_items)
    for n, (op, a, b) in enumerate(ops):
        if op == "queue":
            q.queue(a, n, b)
            model.queue(a, n, b)
        else:
            assert q.take(a, overhead=b) == model.take(a, b)
        assert len(q) == len(model.items)


def test_discard_drops_the_news_only_if_it_was_not_replaced() -> None:
    q: BroadcastQueue[str] = BroadcastQueue(lambda: 5)
    q.queue("a", "a-dead", 10)
    q.queue("b", "b-suspect", 10)
    q.queue("b", "b-dead", 10)
    q.discard("a", "a-dead")
    q.discard("b", "b-suspect")  # replaced since: stays
    assert len(q) == 1 and q.take(100) == ["b-dead"]
    q.discard("b", "b-dead")
    assert len(q) == 0 and q.take(100) == []
