"""Axial hex coordinates for the honeycomb (pure functions, no I/O).

Theory of operation
-------------------
Every node owns one cell of a pointy-top hexagonal grid, addressed in *axial*
coordinates ``(q, r)``; the implied third cube coordinate is ``s = -q - r``
(Red Blob Games, "Hexagonal Grids", sections "Coordinate systems" and
"Distances"). In cube form the grid is the plane ``q + r + s = 0`` of Z^3, which
makes distance, rings and rounding simple integer arithmetic.

The six directions have a fixed order that the rest of the system relies on
(link slot ``i`` of a node points in ``DIRECTIONS[i]``)::

    index  name  (dq, dr)
    0      E     (+1,  0)
    1      NE    (+1, -1)
    2      NW    ( 0, -1)
    3      W     (-1,  0)
    4      SW    (-1, +1)
    5      SE    ( 0, +1)

Direction ``i`` and ``(i + 3) % 6`` are opposite. Rings and spirals walk in this
order too, so their output is deterministic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DIRECTIONS",
    "DIRECTION_NAMES",
    "Hex",
    "cube_round",
    "direction_of",
    "distance",
    "nearest_in_direction",
    "neighbour",
    "neighbours",
    "opposite",
    "ring",
    "spiral",
    "spiral_index",
    "to_cartesian",
]


@dataclass(frozen=True, slots=True, order=True)
class Hex:
    """One cell in axial coordinates."""

    q: int
    r: int

    @property
    def s(self) -> int:
        return -self.q - self.r

    def __add__(self, other: Hex) -> Hex:
        return Hex(self.q + other.q, self.r + other.r)

    def __sub__(self, other: Hex) -> Hex:
        return Hex(self.q - other.q, self.r - other.r)

    def scale(self, k: int) -> Hex:
        return Hex(self.q * k, self.r * k)

    def __str__(self) -> str:
        # Also the suffix of the DHT key "cell:<q>,<r>".
        return f"{self.q},{self.r}"

    @classmethod
    def parse(cls, text: str) -> Hex:
        """Inverse of ``str(hex)``: ``"-2,3"`` -> ``Hex(-2, 3)``."""
        q, sep, r = text.partition(",")
        if not sep:
            raise ValueError(f"not a hex cell 'q,r': {text!r}")
        return cls(int(q), int(r))


ORIGIN = Hex(0, 0)
DIRECTIONS: tuple[Hex, ...] = (
    Hex(1, 0),
    Hex(1, -1),
    Hex(0, -1),
    Hex(-1, 0),
    Hex(-1, 1),
    Hex(0, 1),
)
DIRECTION_NAMES: tuple[str, ...] = ("E", "NE", "NW", "W", "SW", "SE")

_SQRT3 = math.sqrt(3.0)


def opposite(direction: int) -> int:
    """Index of the direction pointing the other way."""
    return (direction + 3) % 6


def neighbour(cell: Hex, direction: int) -> Hex:
    return cell + DIRECTIONS[direction]


def neighbours(cell: Hex) -> tuple[Hex, ...]:
    """The six adjacent cells, in ``DIRECTIONS`` order."""
    return tuple(cell + d for d in DIRECTIONS)


def distance(a: Hex, b: Hex) -> int:
    """Number of steps between two cells (cube distance / Manhattan on the plane)."""
    dq = a.q - b.q
    dr = a.r - b.r
    return (abs(dq) + abs(dr) + abs(dq + dr)) // 2


def ring(center: Hex, k: int) -> list[Hex]:
    """The 6k cells at distance exactly k (just ``[center]`` for k = 0).

    Starts at ``center + SW * k`` and walks the six sides in ``DIRECTIONS`` order,
    which is the standard ring walk (Red Blob, "Rings").
    """
    if k < 0:
        raise ValueError(f"ring radius must be >= 0, got {k}")
    if k == 0:
        return [center]
    cells: list[Hex] = []
    cell = center + DIRECTIONS[4].scale(k)
    for side in range(6):
        step = DIRECTIONS[side]
        for _ in range(k):
            cells.append(cell)
            cell = cell + step
    return cells


def spiral(center: Hex, radius: int) -> list[Hex]:
    """All 3R(R+1)+1 cells within ``radius``, centre first, then ring by ring.

    This is the order in which joiners fill the comb ("holes nearest the centre
    first"), so it must stay stable.
    """
    if radius < 0:
        raise ValueError(f"spiral radius must be >= 0, got {radius}")
    cells = [center]
    for k in range(1, radius + 1):
        cells.extend(ring(center, k))
    return cells


def spiral_index(cell: Hex, center: Hex = ORIGIN) -> int:
    """Position of ``cell`` in ``spiral(center, ...)``; a total order "centre first".

    Arithmetic, not a walk: side ``s`` of ring k starts at the corner
    ``center + DIRECTIONS[(s + 4) % 6] * k`` and steps k times along
    ``DIRECTIONS[s]`` (the walk of ``ring``), so the side is the one whose
    corner the cell lies a whole number of steps from. Joins ask this of
    every free cell on the comb's edge, so it must not cost O(k).
    """
    k = distance(cell, center)
    if k == 0:
        return 0
    before = 3 * (k - 1) * k + 1  # cells in the spiral of radius k - 1
    dq, dr = cell.q - center.q, cell.r - center.r
    for side in range(6):
        corner, step = DIRECTIONS[(side + 4) % 6], DIRECTIONS[side]
        oq, or_ = dq - corner.q * k, dr - corner.r * k
        # Every step changes q or r by exactly one, so j is whichever moves.
        j = oq * step.q if step.q else or_ * step.r
        if 0 <= j < k and oq == step.q * j and or_ == step.r * j:
            return before + side * k + j
    raise AssertionError(f"{cell} is on no side of ring {k}")  # unreachable


def to_cartesian(cell: Hex) -> tuple[float, float]:
    """Centre of a pointy-top cell of unit size, y pointing down (screen order)."""
    return (_SQRT3 * (cell.q + cell.r / 2.0), 1.5 * cell.r)


def cube_round(q: float, r: float) -> Hex:
    """Nearest cell to fractional axial coordinates (Red Blob, "Rounding").

    Round all three cube coordinates, then fix the one with the largest rounding
    error so that q + r + s = 0 still holds.
    """
    s = -q - r
    rq, rr, rs = round(q), round(r), round(s)
    dq, dr, ds = abs(rq - q), abs(rr - r), abs(rs - s)
    if dq > dr and dq > ds:
        rq = -rr - rs
    elif dr > ds:
        rr = -rq - rs
    return Hex(int(rq), int(rr))


def _bearing(offset: Hex) -> float:
    """Angle of an offset in degrees [0, 360), 0 = E, increasing through NE, NW, ..."""
    x, y = to_cartesian(offset)
    # y points down on screen, so negate it to turn counter-clockwise; round so
    # cells exactly on a sector boundary land on it, not a hair either side.
    return round(math.degrees(math.atan2(-y, x)), 6) % 360.0


def direction_of(origin: Hex, cell: Hex) -> int:
    """The direction whose 60-degree sector contains ``cell`` as seen from ``origin``.

    Direction i points at bearing 60*i degrees and its sector is the half-open
    interval [60i - 30, 60i + 30). Half-open sectors give every cell other
    than ``origin`` exactly one direction, and each ring k exactly k cells per
    direction.
    """
    if cell == origin:
        raise ValueError("a cell has no direction from itself")
    return int(((_bearing(cell - origin) + 30.0) % 360.0) // 60.0) % 6


def _angle_off(origin: Hex, cell: Hex, direction: int) -> float:
    off = abs(_bearing(cell - origin) - 60.0 * direction) % 360.0
    return min(off, 360.0 - off)


@functools.cache
def _sector_order(direction: int, k: int) -> tuple[Hex, ...]:
    """Offsets of ring k in ``direction``'s sector, best first: closest in angle
    to the direction, ties by coordinates. The same for every origin (a sum
    keeps the order of coordinates), so computed once per (direction, k)
    instead of per relink: the bearings cost trigonometry."""
    cells = [c for c in ring(ORIGIN, k) if direction_of(ORIGIN, c) == direction]
    return tuple(sorted(cells, key=lambda c: (round(_angle_off(ORIGIN, c, direction), 9), c)))


def nearest_in_direction(
    origin: Hex,
    direction: int,
    is_live: Callable[[Hex], bool],
    max_distance: int,
) -> Hex | None:
    """The nearest live cell in the sector of ``direction``, or None.

    This is how a node replaces a missing neighbour: when the adjacent cell is a
    hole (edge of the comb, or a dead node), link to the closest living cell
    further out in the same direction, so paths survive holes. Candidates are
    taken ring by ring (smallest hex distance first); within a ring the one
    closest in angle to the direction wins, ties broken by coordinates, so the
    answer is deterministic.
    """
    if not 0 <= direction < 6:
        raise ValueError(f"direction must be in 0..5, got {direction}")
    q, r = origin.q, origin.r
    for k in range(1, max_distance + 1):
        for offset in _sector_order(direction, k):
            cell = Hex(q + offset.q, r + offset.r)
            if is_live(cell):
                return cell
    return None
