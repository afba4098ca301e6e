"""Choosing a cell, settling duplicate claims, and choosing links (pure functions).

Theory of operation
-------------------
*Choosing a cell.* The first node takes the centre ``0,0``. A joiner knows
which cells are taken (from the DHT and gossip) and its RTT to some owners.
A compact comb of ``n`` cells is ``spiral(0,0)[:n]``; a free cell inside that
spiral is a *hole* (a dead node's cell, or one nobody took). Holes are filled
first, nearest the centre first, so the comb stays compact. With no hole the
joiner takes a free cell next to the owner it measured the lowest RTT to, the
one nearest the centre among those, so hex distance tracks network distance.
RTTs within ``RTT_TIE_RATIO`` times the lowest plus ``RTT_TIE`` count as that
lowest: on one host or one LAN the differences are scheduling noise, and
following noise put a joiner in the second ring beside a free cell of the
first (seven agents started at once on a busy machine, 3 runs in 4).

*Duplicate claims.* If two live nodes end up claiming one cell, the older
claim keeps it (as old as its holders first saw it; a race within 2 s goes
to the lower sequence number, then node id) and the other chooses again. Both sides
apply the same rule to the same records (``dht.claim.holder_of``, which
placement slots share), so they agree without talking.

*Links.* A node links to the owners of its six adjacent cells. Where an
adjacent cell is empty (the edge, or a hole), it links to the nearest live
cell in that direction's 60-degree sector (``hexgrid.nearest_in_direction``),
so paths survive holes. One node may fill several directions; a node never
has more than six comb links.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from hexamesh.hexgrid import ORIGIN, Hex, nearest_in_direction, neighbours, spiral_index

__all__ = ["choose_cell", "comb_links", "connected", "link_graph"]

# RTTs this close to the lowest are the same distance (noise, not geography):
# a view request's round trip on a loaded host swings by a few ms, while
# sites worth keeping apart are tens of ms apart.
RTT_TIE = 0.002  # s
RTT_TIE_RATIO = 1.5


def choose_cell(
    owners: Mapping[Hex, bytes],
    rtt: Mapping[bytes, float],
    free: AbstractSet[Hex] | None = None,
) -> Hex:
    """The cell a joiner should claim (see the module docstring).

    ``free`` (the unowned cells next to an owned one), if the caller keeps it
    up to date, saves recomputing it from the whole map: with it a choice
    costs O(perimeter) instead of O(N), and ``rtt`` is asked only about
    owners on the perimeter.
    """
    if not owners:
        return ORIGIN
    n = len(owners)
    if free is None:
        free = {c for cell in owners for c in neighbours(cell) if c not in owners}
    holes = [c for c in free if spiral_index(c) < n]
    if holes:
        return min(holes, key=spiral_index)
    # Only owners next to a free cell can offer one; the nearest of them (and
    # those as near, give or take noise) offer theirs, the most central wins.
    edge = {nb: rtt.get(owners[nb], math.inf) for c in free for nb in neighbours(c) if nb in owners}
    near_enough = min(edge.values()) * RTT_TIE_RATIO + RTT_TIE  # inf if none measured: all tie
    options = {
        c
        for cell, t in edge.items()
        if t <= near_enough
        for c in neighbours(cell)
        if c not in owners
    }
    return min(options, key=spiral_index)


def comb_links(me: Hex, owners: Mapping[Hex, bytes], max_distance: int) -> dict[int, bytes]:
    """Direction -> linked node id; at most six entries, never ourselves.

    ``max_distance`` bounds how far a node looks past holes (a few rings is
    plenty in a compact comb; it keeps the cost O(max_distance^2)).
    """
    mine = owners.get(me)
    links: dict[int, bytes] = {}
    for direction in range(6):
        cell = nearest_in_direction(me, direction, owners.__contains__, max_distance)
        if cell is not None and owners[cell] != mine:
            links[direction] = owners[cell]
    return links


def link_graph(owners: Mapping[Hex, bytes], max_distance: int) -> dict[bytes, set[bytes]]:
    """Undirected comb graph: u-v if either links the other (for checks and simulations)."""
    graph: dict[bytes, set[bytes]] = {node: set() for node in owners.values()}
    for cell, node in owners.items():
        for other in comb_links(cell, owners, max_distance).values():
            graph[node].add(other)
            graph[other].add(node)
    return graph


def connected(graph: Mapping[bytes, set[bytes]]) -> bool:
    """Is an undirected graph one component (an empty one counts as connected)?"""
    if not graph:
        return True
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return len(seen) == len(graph)
