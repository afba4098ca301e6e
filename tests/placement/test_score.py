"""How a scout ranks candidates: the pure rules, table-driven."""

import dataclasses
from typing import Any

import pytest

from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import ORIGIN, Hex
from hexamesh.placement.score import Weights, best, eligible, merit, quorum_of
from tests.placement.helpers import ballot

W = Weights()


def dance(i: int, cell: Hex = ORIGIN, **changes: Any) -> Dance:
    d = Dance.first(bytes([i]) * 20, ("10.0.0.1", 7420), cell.q, cell.r)
    return dataclasses.replace(d, **changes)


@pytest.mark.parametrize(("scouts", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (7, 4), (19, 10)])
def test_quorum_is_a_strict_majority(scouts: int, quorum: int) -> None:
    assert quorum_of(scouts) == quorum
    assert 2 * quorum_of(scouts) > scouts  # two disjoint quorums cannot exist


@pytest.mark.parametrize(
    ("changes", "need", "ok"),
    [
        ({}, 0, True),
        ({"status": "full"}, 0, False),  # no room for another model
        ({"status": "draining"}, 0, False),
        ({"models": ("tiny",)}, 0, False),  # serves it already
        ({"models": ("other",)}, 0, True),
        ({"gpu_total": 80, "gpu_used": 70}, 20, False),  # 10 free, 20 needed
        ({"gpu_total": 80, "gpu_used": 60}, 20, True),
        ({}, 20, True),  # reports no GPU memory: not judged on it
    ],
)
def test_eligible(changes: dict[str, Any], need: int, ok: bool) -> None:
    assert eligible(dance(1, **changes), ballot(mem_need=need)) is ok


def test_merit_prefers_idle_near_roomy_long_lived_nodes() -> None:
    base = dance(1, Hex(1, 0), load=0.5, uptime=60.0)
    assert merit(dance(1, Hex(1, 0), load=0.1, uptime=60.0), ORIGIN, W) > merit(base, ORIGIN, W)
    assert merit(dance(1, Hex(3, 0), load=0.5, uptime=60.0), ORIGIN, W) < merit(base, ORIGIN, W)
    assert merit(dance(1, Hex(1, 0), load=0.5, uptime=600.0), ORIGIN, W) > merit(base, ORIGIN, W)
    roomy = dance(1, Hex(1, 0), load=0.5, uptime=60.0, gpu_total=100, gpu_used=10)
    tight = dance(1, Hex(1, 0), load=0.5, uptime=60.0, gpu_total=100, gpu_used=90)
    assert merit(roomy, ORIGIN, W) > merit(base, ORIGIN, W) > merit(tight, ORIGIN, W)
    # Every share at its best sums to 1.
    top = dance(1, ORIGIN, load=0.0, uptime=1e6, gpu_total=100, gpu_used=0)
    assert merit(top, ORIGIN, W) == pytest.approx(1.0)


A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


@pytest.mark.parametrize(
    ("merits", "support", "current", "n", "chosen"),
    [
        ({A: 0.6, B: 0.5, C: 0.4}, {}, (), 1, [A]),  # by merit
        ({A: 0.6, B: 0.5, C: 0.4}, {}, (), 2, [A, B]),
        ({A: 0.6, B: 0.5, C: 0.4}, {B: 10}, (), 1, [B]),  # recruited: 0.5 + 0.3 x 10/19 > 0.6
        ({A: 0.6, B: 0.5, C: 0.4}, {B: 2}, (), 1, [A]),  # a few followers are not enough
        ({A: 0.52, B: 0.5}, {}, (B,), 1, [B]),  # keep what we approve unless clearly beaten
        ({A: 0.6, B: 0.5}, {}, (B,), 1, [A]),
        ({A: 0.5, B: 0.5}, {}, (), 1, [A]),  # ties to the lower id
        ({A: 0.6}, {}, (), 0, []),  # every replica placed: approve nobody
        ({}, {}, (), 2, []),
    ],
)
def test_best(
    merits: dict[bytes, float],
    support: dict[bytes, int],
    current: tuple[bytes, ...],
    n: int,
    chosen: list[bytes],
) -> None:
    assert best(merits, support, 19, current, n, W) == chosen


@pytest.mark.parametrize(
    "changes", [{"replicas": 0}, {"replicas": 9}, {"quorum": 0}, {"quorum": 20}, {"mem_need": -1}]
)
def test_a_ballot_out_of_bounds_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ballot(**changes)
