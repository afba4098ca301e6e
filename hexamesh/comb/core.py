"""One node's place in the honeycomb: its links, failure detection and waggle (sans-IO).

``Comb`` composes the two protocol pieces over the same links:

* :class:`~hexamesh.comb.swim.Swim` watches the links and spreads membership
  news mesh-wide (links and shortcuts carry it);
* :class:`~hexamesh.comb.waggle.Waggle` pushes this node's dance to its links
  every heartbeat and relays its neighbours' dances one ring further.

Every waggle push from a link counts as proof of life for SWIM, so in steady
state a node sends one push per comb link per heartbeat and no probes at all;
SWIM probes only links that went quiet. The links come from the cell map
(``set_map``): the six comb links of ``cells.comb_links`` (watched, and
danced to) plus a few shortcuts chosen by the caller from its Kademlia table
(told membership news only, which brings a flood across the comb to O(log N)
hops). When a link dies the core relinks around it on its own.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from hexamesh.comb.cells import comb_links
from hexamesh.comb.swim import SWIM_MESSAGES, MembershipEvent, MemberState, Swim, SwimConfig
from hexamesh.comb.waggle import Dance, Waggle, WaggleConfig, WaggleMsg
from hexamesh.hexgrid import Hex
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope

__all__ = ["COMB_MESSAGES", "Comb", "CombConfig"]

COMB_MESSAGES = (*SWIM_MESSAGES, WaggleMsg)


@dataclass(frozen=True, kw_only=True)
class CombConfig:
    # Comb links are few and watched by several neighbours, whose independent
    # suspicions confirm each other: a short minimum suspicion is safe here.
    swim: SwimConfig = field(
        default_factory=lambda: SwimConfig(suspicion_mult=0.5, suspicion_max_mult=4.0)
    )
    waggle: WaggleConfig = field(default_factory=WaggleConfig)
    look_past_holes: int = 4  # rings a node looks across holes for a link in each direction


class Comb:
    def __init__(self, dance: Dance, config: CombConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self.node = dance.node
        self.cell = Hex(dance.q, dance.r)
        addr = (dance.host, dance.port)
        self.swim = Swim(dance.node, addr, config.swim, rng, now)
        self.waggle = Waggle(dance, config.waggle, rng, now)
        self.comb_links: dict[int, bytes] = {}
        self.shortcuts: list[bytes] = []
        self._owners: Mapping[Hex, bytes] = {}
        self._addrs: Mapping[bytes, Addr] = {}

    def set_map(
        self,
        owners: Mapping[Hex, bytes],
        addrs: Mapping[bytes, Addr],
        now: float,
        shortcuts: list[bytes] | None = None,
    ) -> None:
        """Who owns which cell (and the shortcuts to keep); links follow from it.

        The mappings are kept (not copied): the owner of the map may update
        them and call ``relink``. Links are recomputed by the core itself when
        a link dies or a dead node comes back.
        """
        self._owners = owners
        self._addrs = addrs
        if shortcuts is not None:
            self.shortcuts = [s for s in shortcuts if s != self.node]
        self.relink(now)

    def relink(self, now: float) -> None:
        """Recompute the links from the map, skipping nodes we know are dead."""
        live = {
            c: n for c, n in self._owners.items() if self.swim.state_of(n) is not MemberState.DEAD
        }
        live[self.cell] = self.node
        self.comb_links = comb_links(self.cell, live, self.config.look_past_holes)
        self.shortcuts = [
            s for s in self.shortcuts if self.swim.state_of(s) is not MemberState.DEAD
        ]
        addrs = self._addrs
        for node in [*self.comb_links.values(), *self.shortcuts]:
            if self.swim.state_of(node) is None and node in addrs:
                self.swim.add_member(node, addrs[node], 0, now)
        watched = list(self.comb_links.values())
        self.swim.set_links(watched, now, spread=self.shortcuts)
        # Dances go to comb links only: shortcuts carry membership news, not load.
        self.waggle.set_links({n: addrs[n] for n in watched if n in addrs})
        self.swim.relink_needed = False

    # -- the view ---------------------------------------------------------

    def neighbours(self) -> list[bytes]:
        return list(dict.fromkeys(self.comb_links.values()))

    def state_of(self, node: bytes) -> Dance | None:
        seen = self.waggle.view.get(node)
        return seen.dance if seen else None

    def peers_with(self, model: str) -> list[Dance]:
        """Live peers in our neighbourhood view that hold ``model``, least loaded first."""
        out = [
            s.dance
            for n, s in self.waggle.view.items()
            if model in s.dance.models and self.swim.state_of(n) is not MemberState.DEAD
        ]
        return sorted(out, key=lambda d: d.load)

    def events(self) -> list[MembershipEvent]:
        return self.swim.events()

    # -- the Core interface -----------------------------------------------

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        if isinstance(env.message, WaggleMsg):
            self.swim.heard(env.sender, now)
            self.waggle.receive(env.message, now, sender)
        else:
            self.swim.receive(env, sender, now)
            if self.swim.relink_needed:
                self.relink(now)

    def handle_timer(self, now: float) -> None:
        due = self.swim.next_timer()
        if due is not None and due <= now:
            self.swim.handle_timer(now)
            if self.swim.relink_needed:
                self.relink(now)
        if self.waggle.next_timer() <= now:
            self.waggle.handle_timer(now)

    def next_timer(self) -> float | None:
        swim = self.swim.next_timer()
        wag = self.waggle.next_timer()
        return wag if swim is None else min(swim, wag)

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        return [*self.swim.outbox(), *self.waggle.outbox()]
