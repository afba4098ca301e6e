import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh.comb.cells import choose_cell, comb_links, connected, link_graph
from hexamesh.hexgrid import ORIGIN, Hex, distance, neighbours, spiral


def nid(i: int) -> bytes:
    return i.to_bytes(20, "big")


def grow(n: int, rng: random.Random) -> dict[Hex, bytes]:
    owners: dict[Hex, bytes] = {}
    for i in range(n):
        rtt = {node: rng.random() for node in owners.values()}
        cell = choose_cell(owners, rtt)
        assert cell not in owners
        assert not owners or any(c in owners for c in neighbours(cell))  # always adjacent
        owners[cell] = nid(i)
    return owners


def grow_and_kill(
    n: int, rng: random.Random, kill: float
) -> tuple[dict[Hex, bytes], dict[Hex, bytes]]:
    """A comb of ``n`` joiners, then the ``kill`` fraction gone: (all, live)."""
    owners = grow(n, rng)
    victims = set(rng.sample(sorted(owners), int(kill * n)))
    return owners, {c: o for c, o in owners.items() if c not in victims}


def test_first_node_takes_the_centre_and_without_rtts_the_comb_is_the_spiral() -> None:
    assert choose_cell({}, {}) == ORIGIN
    owners: dict[Hex, bytes] = {}
    for i in range(37):
        owners[choose_cell(owners, {})] = nid(i)
    assert set(owners) == set(spiral(ORIGIN, 3))


def test_holes_are_filled_nearest_the_centre_first() -> None:
    owners = {c: nid(i) for i, c in enumerate(spiral(ORIGIN, 2))}
    del owners[Hex(1, 0)], owners[Hex(2, -1)]  # two dead nodes' cells
    assert choose_cell(owners, {}) == Hex(1, 0)


def test_without_holes_the_joiner_sits_next_to_its_closest_peer() -> None:
    owners = {c: nid(i) for i, c in enumerate(spiral(ORIGIN, 1))}
    far_east = owners[Hex(1, 0)]
    cell = choose_cell(owners, {far_east: 0.001})
    assert Hex(1, 0) in neighbours(cell) and distance(cell, ORIGIN) == 2


def test_rtts_apart_by_noise_only_leave_the_comb_compact() -> None:
    # Seven agents on one busy host: the centre and five of its ring are taken
    # (the free one is last in the spiral: not a hole yet), and the joiner
    # timed them all within a few ms of each other (noise). The free ring cell
    # is the one to take, not one in the second ring beside whichever owner
    # answered fastest.
    free, fastest = spiral(ORIGIN, 1)[-1], Hex(1, 0)
    assert fastest not in neighbours(free)
    owners = {c: nid(i) for i, c in enumerate(spiral(ORIGIN, 1)) if c != free}
    others = {n: 0.0031 for c, n in owners.items() if c != fastest}
    assert choose_cell(owners, {owners[fastest]: 0.0008, **others}) == free
    # Tens of ms apart is geography: the joiner sits next to its closest peer.
    others = {n: 0.040 for c, n in owners.items() if c != fastest}
    cell = choose_cell(owners, {owners[fastest]: 0.002, **others})
    assert fastest in neighbours(cell) and distance(cell, ORIGIN) == 2


@settings(max_examples=40)
@given(st.integers(1, 100), st.integers(0, 10_000), st.floats(0.0, 0.5))
def test_after_random_joins_and_kills_the_live_comb_stays_connected(
    n: int, seed: int, kill: float
) -> None:
    owners, live = grow_and_kill(n, random.Random(seed), kill)
    radius = max((distance(c, ORIGIN) for c in owners), default=0)
    for cell in live:
        links = comb_links(cell, live, max_distance=2 * radius + 1)
        assert len(links) <= 6
        assert live[cell] not in links.values()
    assert connected(link_graph(live, max_distance=2 * radius + 1))


def test_a_full_ring_links_to_its_six_neighbours() -> None:
    owners = {c: nid(i) for i, c in enumerate(spiral(ORIGIN, 1))}
    links = comb_links(ORIGIN, owners, max_distance=3)
    assert sorted(links.values()) == sorted(owners[c] for c in neighbours(ORIGIN))


@settings(max_examples=40)
@given(st.integers(1, 80), st.integers(0, 10_000), st.floats(0.0, 0.5))
def test_a_kept_free_set_gives_the_same_choice_as_the_whole_map(
    n: int, seed: int, kill: float
) -> None:
    rng = random.Random(seed)
    _, owners = grow_and_kill(n, rng, kill)  # with holes
    free = {c for cell in owners for c in neighbours(cell) if c not in owners}
    rtt = {node: rng.random() for node in owners.values()}
    # Ties in RTT too: the spiral order must break them the same way.
    rtt.update({node: 0.5 for node in rng.sample(sorted(rtt), len(rtt) // 3)})
    assert choose_cell(owners, rtt, free) == choose_cell(owners, rtt)
    partial = {node: t for node, t in rtt.items() if rng.random() < 0.5}  # some unmeasured
    assert choose_cell(owners, partial, free) == choose_cell(owners, partial)
