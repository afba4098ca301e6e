import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hexamesh.hexgrid import (
    DIRECTIONS,
    ORIGIN,
    Hex,
    cube_round,
    direction_of,
    distance,
    nearest_in_direction,
    neighbour,
    neighbours,
    opposite,
    ring,
    spiral,
    spiral_index,
    to_cartesian,
)

coords = st.integers(-1000, 1000)
cells = st.builds(Hex, coords, coords)


@given(cells, cells)
def test_distance_is_symmetric_and_zero_only_on_itself(a: Hex, b: Hex) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)


@given(cells, cells, cells)
def test_distance_obeys_the_triangle_inequality(a: Hex, b: Hex, c: Hex) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(cells)
def test_every_neighbour_is_at_distance_one_and_all_six_differ(c: Hex) -> None:
    ns = neighbours(c)
    assert len(set(ns)) == 6
    assert all(distance(c, n) == 1 for n in ns)


@given(cells, st.integers(0, 5))
def test_opposite_direction_leads_back(c: Hex, d: int) -> None:
    assert neighbour(neighbour(c, d), opposite(d)) == c


@given(cells, st.integers(1, 25))
def test_ring_has_6k_distinct_cells_all_at_distance_k(c: Hex, k: int) -> None:
    cells_ = ring(c, k)
    assert len(cells_) == 6 * k
    assert len(set(cells_)) == 6 * k
    assert all(distance(c, x) == k for x in cells_)


@given(cells, st.integers(0, 20))
def test_spiral_has_3r_r_plus_1_plus_1_distinct_cells(c: Hex, r: int) -> None:
    cells_ = spiral(c, r)
    assert len(cells_) == 3 * r * (r + 1) + 1
    assert len(set(cells_)) == len(cells_)
    assert cells_[0] == c
    assert [distance(c, x) for x in cells_] == sorted(distance(c, x) for x in cells_)


@given(st.integers(0, 8).flatmap(lambda r: st.sampled_from(spiral(ORIGIN, r))))
def test_spiral_index_is_the_position_in_the_spiral(c: Hex) -> None:
    assert spiral(ORIGIN, 8)[spiral_index(c)] == c


@given(cells, st.integers(0, 6).flatmap(lambda r: st.sampled_from(spiral(ORIGIN, r))))
def test_spiral_index_around_any_centre(centre: Hex, offset: Hex) -> None:
    assert spiral(centre, 6)[spiral_index(centre + offset, centre)] == centre + offset


def test_directions_have_the_documented_order() -> None:
    assert (Hex(1, 0), Hex(1, -1), Hex(0, -1), Hex(-1, 0), Hex(-1, 1), Hex(0, 1)) == DIRECTIONS
    assert ring(ORIGIN, 1) == [Hex(-1, 1), Hex(0, 1), Hex(1, 0), Hex(1, -1), Hex(0, -1), Hex(-1, 0)]


@pytest.mark.parametrize(
    ("q", "r", "expected"),
    [
        (0.0, 0.0, Hex(0, 0)),
        (0.2, 0.2, Hex(0, 0)),
        (0.6, 0.0, Hex(1, 0)),
        (0.6, 0.3, Hex(1, 0)),  # q rounds worst and is fixed up from r and s
        (0.4, 0.4, Hex(0, 1)),  # s rounds worst: r is fixed up
        (-1.6, 0.7, Hex(-2, 1)),
        (2.2, -1.1, Hex(2, -1)),
    ],
)
def test_cube_round_table(q: float, r: float, expected: Hex) -> None:
    assert cube_round(q, r) == expected


@given(cells)
def test_cube_round_of_an_exact_cell_is_that_cell(c: Hex) -> None:
    assert cube_round(float(c.q), float(c.r)) == c


@given(cells, st.floats(-0.3, 0.3), st.floats(-0.3, 0.3))
def test_cube_round_stays_within_one_step(c: Hex, dq: float, dr: float) -> None:
    assert distance(cube_round(c.q + dq, c.r + dr), c) <= 1


@given(cells, st.integers(0, 5), st.integers(1, 10))
def test_cells_straight_along_a_direction_belong_to_it(c: Hex, d: int, k: int) -> None:
    assert direction_of(c, c + DIRECTIONS[d].scale(k)) == d


@given(cells, st.integers(1, 6))
def test_every_ring_cell_has_exactly_one_sector(c: Hex, k: int) -> None:
    sectors = [direction_of(c, x) for x in ring(c, k)]
    # Each of the six sectors gets a fair share of the ring: k cells.
    assert sorted(sectors.count(d) for d in range(6)) == [k] * 6


def test_nearest_in_direction_prefers_adjacent_then_skips_holes() -> None:
    live = {Hex(1, 0), Hex(3, 0), Hex(1, 1), Hex(2, -1)}  # (2,-1) lies on the NE boundary
    assert nearest_in_direction(ORIGIN, 0, live.__contains__, 5) == Hex(1, 0)
    live.discard(Hex(1, 0))  # a hole next door: take the closest further out
    assert nearest_in_direction(ORIGIN, 0, live.__contains__, 5) == Hex(1, 1)
    assert nearest_in_direction(ORIGIN, 1, live.__contains__, 5) == Hex(2, -1)
    live.discard(Hex(1, 1))
    assert nearest_in_direction(ORIGIN, 0, live.__contains__, 5) == Hex(3, 0)
    assert nearest_in_direction(ORIGIN, 0, live.__contains__, 2) is None
    assert nearest_in_direction(ORIGIN, 3, live.__contains__, 5) is None


@given(
    st.sets(st.builds(Hex, st.integers(-4, 4), st.integers(-4, 4)), max_size=30), st.integers(0, 5)
)
def test_nearest_in_direction_is_live_in_sector_and_nearest(live: set[Hex], d: int) -> None:
    live.discard(ORIGIN)
    found = nearest_in_direction(ORIGIN, d, live.__contains__, 8)
    in_sector = [c for c in live if direction_of(ORIGIN, c) == d]
    if found is None:
        assert not in_sector
    else:
        assert found in live and direction_of(ORIGIN, found) == d
        assert distance(ORIGIN, found) == min(distance(ORIGIN, c) for c in in_sector)


def _nearest_by_walking(origin: Hex, d: int, live: set[Hex], max_distance: int) -> Hex | None:
    """The docstring's rule, walked literally: ring by ring, the live cells of
    the sector, closest in angle first, ties by coordinates."""
    for k in range(1, max_distance + 1):
        found = [c for c in ring(origin, k) if c in live and direction_of(origin, c) == d]
        if found:
            off = [abs(_bearing_deg(c - origin) - 60.0 * d) % 360 for c in found]
            keyed = [(round(min(o, 360.0 - o), 9), c) for o, c in zip(off, found, strict=True)]
            return min(keyed)[1]
    return None


def _bearing_deg(offset: Hex) -> float:
    x, y = to_cartesian(offset)  # screen y points down: negate it to turn counter-clockwise
    return round(math.degrees(math.atan2(-y, x)), 6) % 360.0


@given(
    cells,
    st.sets(st.builds(Hex, st.integers(-5, 5), st.integers(-5, 5)), max_size=40),
    st.integers(0, 5),
)
def test_nearest_in_direction_picks_what_the_walk_picks(
    origin: Hex, offsets: set[Hex], d: int
) -> None:
    live = {origin + o for o in offsets if o != ORIGIN}
    assert nearest_in_direction(origin, d, live.__contains__, 6) == _nearest_by_walking(
        origin, d, live, 6
    )


def test_str_and_parse_round_trip() -> None:
    assert str(Hex(-2, 3)) == "-2,3"
    assert Hex.parse("-2,3") == Hex(-2, 3)
    with pytest.raises(ValueError):
        Hex.parse("12")
