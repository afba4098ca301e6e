import random
from dataclasses import replace

from hexamesh.comb.waggle import Dance, HopDance, Waggle, WaggleConfig, WaggleMsg


def dance(n: int, version: int = 1, load: float = 0.0) -> Dance:
    first = Dance.first(n.to_bytes(20, "big"), ("10.0.0.1", n), n, 0, models=("tiny",), load=load)
    return replace(first, version=version)


def waggle(n: int, links: list[int]) -> Waggle:
    w = Waggle(dance(n), WaggleConfig(), random.Random(n), 0.0)
    w.set_links({i.to_bytes(20, "big"): ("10.0.0.1", i) for i in links})
    return w


def deliver(src: Waggle, nodes: dict[int, Waggle], now: float) -> None:
    for (_, port), env in src.outbox():
        assert isinstance(env.message, WaggleMsg)
        nodes[port].receive(env.message, now)


def test_dances_travel_two_rings_and_no_further() -> None:
    # A line 1 - 2 - 3 - 4: 1's dance reaches 2 and 3, never 4.
    nodes = {1: waggle(1, [2]), 2: waggle(2, [1, 3]), 3: waggle(3, [2, 4]), 4: waggle(4, [3])}
    t = 0.0
    for _ in range(5):
        t += 1.0
        for n in (1, 2, 3, 4):
            nodes[n].handle_timer(t)
            deliver(nodes[n], nodes, t)
    one = (1).to_bytes(20, "big")
    assert one in nodes[2].view and one in nodes[3].view and one not in nodes[4].view


def test_older_versions_are_ignored() -> None:
    w = waggle(1, [])
    assert w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=5), hops=2),)), 1.0)
    assert not w.receive(WaggleMsg(dances=(HopDance(dance=dance(2, version=4), hops=2),)), 2.0)
    assert w.view[(2).to_bytes(20, "big")].dance.version == 5


def test_a_noticeable_change_is_danced_early_a_small_one_waits() -> None:
    w = waggle(1, [2])
    w.handle_timer(w.next_timer())
    w.outbox()
    regular = w.next_timer()
    w.update(regular - 0.9, load=0.05)  # small: wait for the heartbeat
    assert w.next_timer() == regular
    w.update(regular - 0.9, load=0.5)  # noticeable: soon, but not before min_interval
    assert w.next_timer() < regular
    assert w.dance.version == 3
