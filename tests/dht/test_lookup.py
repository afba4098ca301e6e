"""The lookup state machine, stepped by hand."""

from hexamesh.dht.contact import Contact
from hexamesh.dht.lookup import Lookup


def c(n: int) -> Contact:
    return Contact(id=n.to_bytes(20, "big"), host="10.0.0.1", port=n)


TARGET = (0).to_bytes(20, "big")
ME = (999).to_bytes(20, "big")


def test_keeps_alpha_in_flight_to_the_closest_and_finishes_when_k_closest_answered() -> None:
    lk = Lookup(TARGET, k=3, alpha=2, me=ME, seeds=[c(8), c(4), c(16), c(32)])
    first = lk.next_queries()
    assert [x.port for x in first] == [4, 8]  # nearest first, alpha at a time
    assert lk.next_queries() == []
    lk.on_reply(c(4).id, [c(1), c(2)])
    assert [x.port for x in lk.next_queries()] == [1]  # 8 still in flight
    lk.on_reply(c(1).id, [])
    assert [x.port for x in lk.next_queries()] == [2]
    lk.on_reply(c(8).id, [])
    lk.on_reply(c(2).id, [])
    assert lk.next_queries() == [] and lk.finished()
    assert [x.port for x in lk.result()] == [1, 2, 4]
    assert lk.hops() == 2  # 1 and 2 were learnt from 4's reply


def test_failures_are_struck_off_and_the_next_candidate_is_asked() -> None:
    lk = Lookup(TARGET, k=2, alpha=1, me=ME, seeds=[c(1), c(2), c(3)])
    assert [x.port for x in lk.next_queries()] == [1]
    lk.on_failure(c(1).id)
    lk.add([c(1)], hop=2)  # a struck contact is never re-added
    assert [x.port for x in lk.next_queries()] == [2]
    lk.on_reply(c(2).id, [c(1)])
    assert [x.port for x in lk.next_queries()] == [3]
    lk.on_reply(c(3).id, [])
    assert lk.finished() and [x.port for x in lk.result()] == [2, 3]
    assert lk.failures == 1 and lk.queries == 3


def test_never_adds_itself_and_ignores_unsolicited_replies() -> None:
    me = c(5)
    lk = Lookup(TARGET, k=3, alpha=3, me=me.id, seeds=[me, c(6)])
    assert [x.port for x in lk.next_queries()] == [6]
    lk.on_reply(c(7).id, [c(1)])  # never asked: ignored
    assert [x.port for x in lk.next_queries()] == []


def test_a_budget_stops_after_that_many_queries() -> None:
    lk = Lookup(TARGET, k=5, alpha=3, me=ME, seeds=[c(i) for i in range(1, 9)], max_queries=4)
    assert len(lk.next_queries()) == 3
    for i in (1, 2, 3):
        lk.on_reply(c(i).id, [])
    assert len(lk.next_queries()) == 1
    lk.on_reply(c(4).id, [])
    assert lk.next_queries() == [] and lk.finished() and lk.queries == 4
