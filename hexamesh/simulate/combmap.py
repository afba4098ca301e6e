"""The comb every simulation builds: nodes on the cells of one map, each a
real ``Comb`` core that is given the map (the DHT's cell records, abridged).

``hexamesh simulate`` (serving under faults), ``simulations.comb`` (joins,
kills, churn) and ``simulations.placement`` (elections) all start from it:
node ``i`` is ``node_id(i)`` at ``addr_of(i)``; a node placed later (a join,
a new identity under churn) is given the same map, which every core holds
by reference, so a change is seen by the next ``give_map``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hexamesh.comb.advert import StandInSigner
from hexamesh.comb.core import Comb, CombConfig
from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import ORIGIN, Hex, spiral
from hexamesh.net.base import Addr
from hexamesh.simulate.util import addr_of

__all__ = ["SHORTCUTS", "CombMap", "node_id", "spiral_cells"]

SHORTCUTS = 2  # random shortcuts per node, beside its six comb links (docs/comb.md)

STAND_IN = StandInSigner()


def node_id(i: int) -> bytes:
    """Node ``i``'s id in every simulation (never all zeros)."""
    return (i + 1).to_bytes(20, "big")


def spiral_cells(n: int) -> list[Hex]:
    """The ``n`` cells nearest the origin, in the order the spiral fills them."""
    radius = 0
    while 3 * radius * (radius + 1) + 1 < n:
        radius += 1
    return spiral(ORIGIN, radius)[:n]


@dataclass
class CombMap:
    """Who holds which cell, where each node listens, and its shortcuts."""

    owners: dict[Hex, bytes] = field(default_factory=dict)  # cell -> node
    cells: dict[bytes, Hex] = field(default_factory=dict)  # node -> its cell
    addrs: dict[bytes, Addr] = field(default_factory=dict)
    shortcuts: dict[bytes, list[bytes]] = field(default_factory=dict)  # none: the core chooses

    @classmethod
    def filled(cls, cells: list[Hex]) -> CombMap:
        """Node ``i`` on ``cells[i]``, at ``addr_of(i)``."""
        cmap = cls()
        for i, cell in enumerate(cells):
            cmap.place(node_id(i), cell, addr_of(i))
        return cmap

    def place(self, node: bytes, cell: Hex, addr: Addr) -> None:
        self.owners[cell] = node
        self.cells[node] = cell
        self.addrs[node] = addr

    def draw_shortcuts(self, node: bytes, rng: random.Random) -> None:
        """``SHORTCUTS`` random others of those placed so far (in placing order)."""
        others = [n for n in self.owners.values() if n != node]
        self.shortcuts[node] = rng.sample(others, min(SHORTCUTS, len(others)))

    def core(
        self,
        node: bytes,
        config: CombConfig,
        rng: random.Random,
        now: float,
        *,
        load: float = 0.0,
        knows_map: bool = True,
    ) -> Comb:
        """``node``'s comb core at its cell; given the map at once unless
        ``knows_map`` is false (the caller gives it later, e.g. once every
        host of a static comb exists)."""
        cell = self.cells[node]
        core = Comb(
            Dance.first(node, self.addrs[node], cell.q, cell.r, load=load),
            config,
            rng,
            now,
            signer=STAND_IN,  # adverts proven as the agent's are, without the cryptography
        )
        if knows_map:
            self.give_map(core, now)
        return core

    def give_map(self, core: Comb, now: float) -> None:
        """Tell ``core`` the map as it is now (it relinks if its neighbourhood changed)."""
        core.set_map(self.owners, self.addrs, now, self.shortcuts.get(core.node))
