"""Placement simulation: scout-voting elections on a comb over a lossy network.

    python -m simulations.placement --rings 4 --elections 40 --loss 0.05 --seed 1 --json

Every node runs the real cores (``Comb`` for links, SWIM and waggle; a
``Scouting`` for elections) behind one ``Mux`` on the discrete-event
simulator. What stands in for the rest of an agent: the DHT's slot records
(``placement:<model>:<epoch>:<slot>``, put-if-absent) are one table the
winners claim from after a DHT-like delay, and a winner's model shows in its
dance a second after it won (the engine loading it).

Each election: a random live node proposes a new model (1-3 replicas) and
the simulation runs to its deadline. Every third election, just after the
proposal goes out, a majority of its scouts other than the proposer are cut
off from everyone (a partition): no quorum can form, and nothing may move.
The partition heals before the next election.

Last line: one JSON object with ``placed`` (elections that placed every
replica they asked for, of those with a reachable quorum), ``proposer_heard_all``
(of those, how many proposers heard every winner), ``no_quorum_moved``
(cut-off elections that placed anything: must be 0), ``over_placed``
(elections with more winners than replicas: must be 0), ``time_to_quorum_s``
p50/p99 (proposal to the first slot taken), ``msgs_per_election`` (placement
datagrams sent, all nodes) and ``wall_s``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hexamesh.comb.core import COMB_MESSAGES, Comb, CombConfig
from hexamesh.hexgrid import ORIGIN, spiral
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.mux import Mux
from hexamesh.net.sim import SimHost, SimNetwork, UniformLatency
from hexamesh.placement.messages import PLACEMENT_MESSAGES, Ballot
from hexamesh.placement.order import sign_order
from hexamesh.placement.vote import PlacementConfig, Scouting, Won
from hexamesh.simulate.combmap import CombMap
from simulations.common import addr_of, emit, percentile

# The operator whose orders the simulated swarm obeys: a real key, so every
# scout and candidate verifies a real signature, as agents do.
OPERATOR = Identity.from_private_bytes(b"hexamesh simulated operator key!")

CLAIM_DELAY = (0.02, 0.2)  # s; a DHT read, put-if-absent and read-back, simulated
LOAD_DELAY = 1.0  # s from winning a slot to dancing the model


@dataclass
class Swarm:
    """A comb of ``spiral(ORIGIN, rings)`` cells, each node a Comb and a Scouting."""

    net: SimNetwork
    combs: dict[bytes, Comb] = field(default_factory=dict)
    scouting: dict[bytes, Scouting] = field(default_factory=dict)
    addrs: dict[bytes, Addr] = field(default_factory=dict)
    _node_at: dict[Addr, bytes] = field(default_factory=dict)
    slots: dict[tuple[str, int, int], bytes] = field(default_factory=dict)  # the DHT, abridged
    claimed_at: dict[tuple[str, int], float] = field(default_factory=dict)  # first slot taken
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def build(
        cls,
        rings: int,
        *,
        seed: int = 1,
        loss: float = 0.0,
        duplicate: float = 0.0,
        config: PlacementConfig | None = None,
        loads: Mapping[int, float] | None = None,
    ) -> Swarm:
        net = SimNetwork(seed=seed, latency=UniformLatency(0.001, 0.01), duplicate=duplicate)
        swarm = cls(net=net, rng=random.Random(seed))
        cmap = CombMap.filled(spiral(ORIGIN, rings))
        swarm.addrs = cmap.addrs
        swarm._node_at = {a: n for n, a in swarm.addrs.items()}
        for i, node in enumerate(cmap.owners.values()):
            load = (loads or {}).get(i, swarm.rng.random())

            def factory(host: SimHost, node: bytes = node, load: float = load) -> Mux:
                comb = cmap.core(node, CombConfig(), host.rng, net.now, load=load, knows_map=False)
                scout = Scouting(
                    node,
                    cmap.addrs[node],
                    comb.live_dances,
                    config or PlacementConfig(),
                    host.rng,
                    operators=frozenset({OPERATOR.public_key}),
                    is_member=comb.is_live_member,
                )
                swarm.combs[node], swarm.scouting[node] = comb, scout
                mux = Mux()
                mux.add(comb, *COMB_MESSAGES)
                mux.add(scout, *PLACEMENT_MESSAGES)
                return mux

            net.add_host(addr_of(i), factory)
        for node, a in swarm.addrs.items():  # once every node exists, as the DHT's records
            comb = swarm.combs[node]
            net.interact(a, lambda _, now, comb=comb: cmap.give_map(comb, now))
        net.loss = loss
        net.on_events = swarm._took
        return swarm

    def alive(self, node: bytes) -> bool:
        return self.net.hosts[self.addrs[node]].alive

    def propose(self, node: bytes, model: str, replicas: int, epoch: int) -> Ballot:
        out: list[Ballot] = []
        self.net.interact(
            self.addrs[node],
            lambda m, now: out.append(
                self.scouting[node].propose(
                    sign_order(OPERATOR, model, f"/models/{model}", now=now), replicas, epoch, now
                )
            ),
        )
        return out[0]

    def winners(self, model: str, epoch: int) -> dict[int, bytes]:
        return {s: n for (m, e, s), n in self.slots.items() if (m, e) == (model, epoch)}

    # -- what an agent's placement service does, abridged -----------------

    def _took(self, host: SimHost, events: Sequence[object]) -> None:
        """A core's events, as the agent's services take them: a won quorum
        starts a claim (the rest, membership news, nobody here reads)."""
        node = self._node_at[host.addr]
        for event in events:
            if isinstance(event, Won):
                at = self.net.now + self.rng.uniform(*CLAIM_DELAY)
                self.net.call_at(at, partial(self._claim, node, event.ballot))

    def _claim(self, node: bytes, ballot: Ballot) -> None:
        if not self.alive(node):
            return
        taken = self.winners(ballot.model, ballot.epoch)
        slot = next((s for s in range(ballot.replicas) if s not in taken), None)
        scout = self.scouting[node]
        if node in taken.values() or slot is None:
            self.net.interact(self.addrs[node], lambda m, now: scout.lost(ballot.key, now))
            return
        self.slots[(ballot.model, ballot.epoch, slot)] = node
        self.claimed_at.setdefault(ballot.key, self.net.now)
        self.net.interact(self.addrs[node], lambda m, now: scout.claimed(ballot.key, slot, now))

        def loaded() -> None:
            if self.alive(node):
                comb = self.combs[node]
                models = (*comb.waggle.dance.models, ballot.model)
                self.net.interact(
                    self.addrs[node], lambda m, now: comb.waggle.update(now, models=models)
                )

        self.net.call_at(self.net.now + LOAD_DELAY, loaded)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = PlacementConfig()
    swarm = Swarm.build(args.rings, seed=args.seed, loss=args.loss, duplicate=args.duplicate)
    net, rng = swarm.net, random.Random(args.seed)
    net.run(until=10.0)  # links, first probes, two-ring views
    nodes = list(swarm.combs)
    placed = reachable = cut_moved = cut = over = told = 0
    to_quorum: list[float] = []
    for k in range(args.elections):
        proposer = rng.choice(nodes)
        replicas = rng.randint(1, 3)
        model = f"m{k}"
        start = net.now
        ballot = swarm.propose(proposer, model, replicas, epoch=k + 1)
        cutoff = k % 3 == 2
        if cutoff:
            cut += 1
            electorate = swarm.scouting[proposer].electorate(model, k + 1)
            e_scouts = [n for n in electorate if n != proposer]
            # Cut off before any vote lands: the scouts left are one short of a quorum.
            victims = rng.sample(e_scouts, k=min(len(e_scouts), len(e_scouts) + 2 - ballot.quorum))
            rest = [swarm.addrs[n] for n in nodes if n not in victims]
            net.partition(rest, *[[swarm.addrs[v]] for v in victims])
        else:
            reachable += 1
        net.run(until=start + config.ttl + 0.5)
        won = swarm.winners(model, k + 1)
        if len(won) > replicas:
            over += 1
        if cutoff:
            cut_moved += bool(won)
            net.heal()
            net.run(until=net.now + 15.0)  # the comb forgives the cut-off nodes (refutations)
        else:
            placed += len(won) == replicas
            outcome = swarm.scouting[proposer].outcome(model, k + 1)
            told += outcome is not None and outcome.winners == won
            if len(won) != replicas:
                print(f"election {k}: {len(won)} of {replicas} placed", file=sys.stderr)
            if ballot.key in swarm.claimed_at:
                to_quorum.append(swarm.claimed_at[ballot.key] - start)
        net.run(until=net.now + 2.0)
    placement_msgs = sum(s.sent for s in swarm.scouting.values())
    return {
        "simulation": "placement",
        "nodes": len(nodes),
        "elections": args.elections,
        "loss": args.loss,
        "duplicate": args.duplicate,
        "seed": args.seed,
        "reachable": reachable,
        "placed": placed,
        "cut_off": cut,
        "no_quorum_moved": cut_moved,
        "over_placed": over,
        "proposer_heard_all": told,
        "time_to_quorum_s_p50": percentile(to_quorum, 0.5),
        "time_to_quorum_s_p99": percentile(to_quorum, 0.99),
        "msgs_per_election": round(placement_msgs / max(args.elections, 1), 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rings", type=int, default=4, help="comb radius (4: 61 nodes)")
    p.add_argument("--elections", type=int, default=40)
    p.add_argument("--loss", type=float, default=0.05)
    p.add_argument("--duplicate", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="only the JSON line")
    args = p.parse_args(argv)
    emit(run(args), quiet=args.json)


if __name__ == "__main__":
    main()
