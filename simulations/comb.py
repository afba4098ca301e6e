"""Honeycomb simulation: join, settle, kill a fraction at once, watch the comb heal.

    python -m simulations.comb --nodes 1000 --kill 0.3 --loss 0.05 --minutes 10 --seed 1 --json

Runs the real ``Comb`` cores (SWIM + waggle over comb links and shortcuts) on
the discrete-event simulator. What the simulation does *for* the nodes, until
it assigns cells with ``cells.choose_cell`` as each node joins (RTT from the
latency model: what the agent's DHT cell claims do, without the DHT traffic)
and hands each node the cell map and two random shortcuts (standing in for
picks from its Kademlia table). When a node learns a link died, its core
relinks around it from the map minus the nodes it knows are dead.

Phases: joins 5 ms apart; settle 30 s; measure the steady-state traffic for
30 s; kill the fraction at once (no goodbye) and switch on the loss; run the
remaining minutes. Latency: hosts in a unit square, one-way
``0.5 ms + 50 ms x distance`` times jitter in [1, 1.2].

Churn (``--churn F``): from the kill on, a fraction F of the nodes per
minute crash (one at a time, evenly spaced) and as many new identities join
(a cell chosen as any joiner chooses; a crashed node's cell lease runs out
after ``CELL_TTL``, when joiners may take it). Per node, the state it holds
(members including tombstones, the cells it learned, its dance view) is
measured 10 simulated minutes after the kill and at the end:
``state_entries_p99_start`` and ``_end``, which must stay flat (tombstones and
quiet members are reaped, ``SwimConfig.tombstone_ttl``). Churned nodes are
expected deaths: ``churn_deaths_undetected`` counts those nobody declared.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hexamesh.comb.cells import choose_cell, connected, link_graph
from hexamesh.comb.core import Comb, CombConfig
from hexamesh.comb.swim import MembershipEvent, MemberState
from hexamesh.hexgrid import ORIGIN, Hex, distance, spiral
from hexamesh.hexgrid import neighbours as hex_neighbours
from hexamesh.net.sim import GeoLatency, SimHost, SimNetwork
from hexamesh.simulate.combmap import CombMap, node_id
from simulations.common import addr_of, emit, no_cycle_collector, percentile

WAVE = 10.0  # s after the kill counted as the death wave (detection and spread end within it)
CELL_TTL = 60.0  # s; a crashed node's cell lease runs out (comb.service.CELL_TTL)
STATE_AFTER = 600.0  # s after the kill: the first measurement of the state nodes hold


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()

    def progress(what: str) -> None:  # long runs: where it is, on stderr
        print(f"[{time.perf_counter() - t0:7.1f} s wall] {what}", file=sys.stderr, flush=True)

    geo = GeoLatency(base=0.0005, per_unit=0.05, jitter=0.2)
    net = SimNetwork(seed=args.seed, latency=geo, measure_bytes=True)
    rng = random.Random(args.seed)
    config = CombConfig()
    ids = [node_id(i) for i in range(args.nodes)]
    index = {ids[i]: i for i in range(args.nodes)}
    cmap = CombMap()  # filled as nodes join
    owners, cell_of = cmap.owners, cmap.cells
    positions = [(rng.random(), rng.random()) for _ in range(args.nodes)]

    def comb(i: int) -> Comb:
        core = net.hosts[addr_of(i)].core
        assert isinstance(core, Comb)
        return core

    def refresh(i: int) -> None:
        net.interact(addr_of(i), cmap.give_map)

    free: set[Hex] = set()  # unowned cells next to an owned one, kept as nodes join

    class Rtt(Mapping[bytes, float]):
        """RTT from a joiner to an owner, computed when ``choose_cell`` asks."""

        def __init__(self, i: int) -> None:
            self.x, self.y = positions[i]

        def __getitem__(self, node: bytes) -> float:
            ox, oy = positions[index[node]]
            return 2 * (0.0005 + 0.05 * math.hypot(self.x - ox, self.y - oy))

        def __iter__(self) -> Iterator[bytes]:
            return iter(owners.values())

        def __len__(self) -> int:
            return len(owners)

    def newcomer() -> int:
        """A new identity, at a new address and place (churn); its index."""
        i = len(ids)
        ids.append(node_id(i))
        index[ids[i]] = i
        positions.append((rng.random(), rng.random()))
        return i

    def join(i: int) -> None:
        node = ids[i]
        cell = choose_cell(owners, Rtt(i), free)
        cmap.place(node, cell, addr_of(i))
        free.discard(cell)
        free.update(c for c in hex_neighbours(cell) if c not in owners)
        cmap.draw_shortcuts(node, rng)

        def factory(host: SimHost) -> Comb:  # given the map by refresh, just below
            return cmap.core(node, config, host.rng, net.now, knows_map=False)

        net.add_host(addr_of(i), factory, position=positions[i])
        refresh(i)
        # Neighbours within reach re-link (the map changed near them).
        near = [owners[c] for c in spiral(cell, config.look_past_holes)[1:] if c in owners]
        for other in sorted(near, key=index.__getitem__):  # in join order, as before
            if net.hosts[addr_of(index[other])].alive:  # (a crashed one's lease lasts a while)
                refresh(index[other])

    for i in range(args.nodes):
        net.call_at(i * args.join_spacing, lambda i=i: join(i))

    # Loads change: each node re-dances with a new load every ~5 s; remember when
    # each version was made, to measure how stale the views are against the truth.
    made_at: dict[tuple[bytes, int], float] = {}

    def wobble(i: int) -> None:
        host = net.hosts[addr_of(i)]
        if host.alive:

            def change(c: Comb, now: float) -> None:
                load = min(1.0, max(0.0, c.waggle.dance.load + rng.uniform(-0.3, 0.3)))
                c.waggle.update(now, load=load)
                made_at[(ids[i], c.waggle.dance.version)] = now

            net.interact(addr_of(i), change)
            net.call_at(net.now + rng.uniform(4.0, 6.0), lambda: wobble(i))

    for i in range(args.nodes):
        net.call_at(i * args.join_spacing + rng.uniform(1.0, 6.0), lambda i=i: wobble(i))
    settle_end = args.nodes * args.join_spacing + 30.0
    net.run(until=settle_end)
    progress(f"joined and settled at t={net.now:.0f} s")
    for i in range(args.nodes):
        comb(i).events()
    everyone = range(args.nodes)
    sent0 = _sent(net, everyone)
    window = 30.0
    net.run(until=settle_end + window)
    msgs_per_node_s, bytes_per_node_s = _per_node_s(sent0, _sent(net, everyone), window)

    # Kill at once, switch on loss.
    t_kill = net.now
    victims = set(rng.sample(range(args.nodes), int(args.kill * args.nodes)))
    for v in victims:
        net.kill(addr_of(v))
    net.loss = args.loss
    progress(
        f"steady state: {msgs_per_node_s:.2f} msgs, {bytes_per_node_s:.0f} B per node per s; "
        f"killed {len(victims)} at t={t_kill:.0f} s"
    )
    victim_ids = {ids[v] for v in victims}
    live = [i for i in range(args.nodes) if i not in victims]
    churned: dict[bytes, float] = {}  # crashed by churn (expected deaths) -> when
    churn_seen: dict[bytes, float] = {}  # churned node -> when first declared dead
    map_start = 0

    def churn() -> None:
        """One node crashes, one new identity joins; the crashed cell frees later."""
        if net.now >= end:
            return
        v = rng.choice(live)
        live.remove(v)
        net.kill(addr_of(v))
        churned[ids[v]] = net.now
        cell = cell_of[ids[v]]

        def lease_ends() -> None:
            if owners.get(cell) == ids[v]:
                del owners[cell]
                if any(c in owners for c in hex_neighbours(cell)):
                    free.add(cell)

        net.call_at(net.now + CELL_TTL, lease_ends)
        j = newcomer()
        join(j)
        live.append(j)
        net.call_at(net.now + rng.uniform(4.0, 6.0), lambda: wobble(j))
        net.call_at(net.now + 60.0 / (args.churn * args.nodes), churn)

    end = t_kill + args.minutes * 60.0
    if args.churn > 0:
        net.call_at(t_kill + 60.0 / (args.churn * args.nodes), churn)
    state_start: list[int] = []
    first_dead: dict[bytes, float] = {}
    known_dead: dict[bytes, set[int]] = {v: set() for v in victim_ids}
    all_dead_at: dict[bytes, float] = {}
    false_positives: set[bytes] = set()
    staleness: list[float] = []
    # The traffic once the comb has healed: the last 30 s, if the run is long enough.
    late_from = end - window
    measure_late = late_from >= t_kill + window
    late0: dict[int, tuple[int, int]] | None = None
    # The death wave's traffic: the survivors' first WAVE seconds after the kill.
    wave0 = _sent(net, live)
    wave: tuple[float | None, float | None] = (None, None)  # None: the run ended sooner
    step = 0.5
    t = t_kill
    while t < end:
        t = min(end, t + step)
        net.run(until=t)
        if t - step < t_kill + WAVE <= t:
            msgs, sent_bytes = _per_node_s(wave0, _sent(net, live), t - t_kill)
            wave = (round(msgs, 2), round(sent_bytes, 1))
        if measure_late and late0 is None and t >= late_from:
            late0 = _sent(net, live)
        for i in live:
            for e in comb(i).events():
                if not isinstance(e, MembershipEvent) or e.state is not MemberState.DEAD:
                    continue
                if e.node in victim_ids:
                    first_dead.setdefault(e.node, e.at - t_kill)
                    known_dead[e.node].add(i)
                    if len(known_dead[e.node]) == len(live):
                        all_dead_at.setdefault(e.node, e.at - t_kill)
                elif e.node in churned:
                    churn_seen.setdefault(e.node, e.at)
                else:
                    false_positives.add(e.node)
        if not state_start and t >= t_kill + STATE_AFTER:
            state_start = [_state_entries(comb(i)) for i in live]
            map_start = len(owners)
        if int(t / step) % 20 == 0:  # every 10 s: how old is what nodes hold about their 2 rings?
            progress(f"t={t:.0f} s: {len(first_dead)} of {len(victim_ids)} victims detected")
            for i in rng.sample(live, min(50, len(live))):
                c = comb(i)
                # Two rings = two comb-link hops (what waggle promises; the same
                # cells as two hex rings where the comb has no holes).
                ring1 = set(c.comb_links.values()) - victim_ids
                ring2 = {p for n in ring1 for p in comb(index[n]).comb_links.values()}
                for peer in sorted((ring1 | ring2) - {ids[i]}):
                    if peer in victim_ids:
                        continue
                    seen = c.waggle.view.get(peer)
                    truth = comb(index[peer]).waggle.dance
                    if seen is None:
                        staleness.append(float("inf"))
                    elif seen.dance.version >= truth.version:
                        staleness.append(0.0)  # current
                    else:  # stale since the next version after the one held was made
                        staleness.append(
                            net.now - made_at.get((peer, seen.dance.version + 1), net.now)
                        )

    state_end = [_state_entries(comb(i)) for i in live]
    late: tuple[float | None, float | None] = (None, None)
    if late0 is not None:
        msgs, sent_bytes = _per_node_s(late0, _sent(net, live), net.now - late_from)
        late = (round(msgs, 2), round(sent_bytes, 1))
    live_owners = {c: n for c, n in owners.items() if n not in victim_ids}
    links = [len(comb(i).comb_links) for i in live]
    graph: dict[bytes, set[bytes]] = {ids[i]: set() for i in live}
    for i in live:
        for other in comb(i).comb_links.values():
            if other in graph:
                graph[ids[i]].add(other)
                graph[other].add(ids[i])
    radius = max(distance(c, ORIGIN) for c in live_owners)
    holes = sum(1 for c in spiral(ORIGIN, radius) if c not in live_owners)
    detect_all = list(all_dead_at.values()) + [float("inf")] * (len(victim_ids) - len(all_dead_at))
    finite_stale = [s for s in staleness if s != float("inf")]
    return {
        "simulation": "comb",
        "nodes": args.nodes,
        "kill": args.kill,
        "loss": args.loss,
        "minutes": args.minutes,
        "seed": args.seed,
        "detect_first_s_p50": percentile(list(first_dead.values()), 0.5),
        "detect_first_s_p99": percentile(
            list(first_dead.values()) + [float("inf")] * (len(victim_ids) - len(first_dead)), 0.99
        ),
        "detect_all_s_p99": percentile(detect_all, 0.99),
        "spread_s_p99": percentile(
            [all_dead_at[v] - first_dead[v] for v in all_dead_at if v in first_dead], 0.99
        ),
        "undetected": len(victim_ids) - len(first_dead),
        "false_positives": len(false_positives),
        "msgs_per_node_s": round(msgs_per_node_s, 2),
        "bytes_per_node_s": round(bytes_per_node_s, 1),
        # The same after the kill, over the last 30 s of a run of at least a minute.
        "msgs_per_node_s_late": late[0],
        "bytes_per_node_s_late": late[1],
        # The survivors' sending in the first WAVE seconds after the kill.
        "msgs_per_node_s_wave": wave[0],
        "bytes_per_node_s_wave": wave[1],
        "view_staleness_s_p99": percentile(finite_stale, 0.99),
        "view_missing": len(staleness) - len(finite_stale),
        "links_mean": round(sum(links) / len(links), 2),
        "links_max": max(links),
        "holes": holes,
        "connected": connected(graph),
        "connected_by_map": connected(link_graph(live_owners, config.look_past_holes)),
        # Members (tombstones included), learned cells and dances each node holds,
        # STATE_AFTER after the kill and at the end; the map the simulation keeps
        # for all (what the DHT holds: leases run out)
        "state_entries_p99_start": percentile([float(x) for x in state_start], 0.99),
        "state_entries_p99_end": percentile([float(x) for x in state_end], 0.99),
        "map_cells_start": map_start if state_start else None,
        "map_cells_end": len(owners),
        "churned": len(churned),
        # a churned node nobody declared dead (those killed in the last 30 s may be
        # on their way: not counted)
        "churn_deaths_undetected": len(
            {n for n, at in churned.items() if n not in churn_seen and at < end - 30.0}
        ),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _state_entries(c: Comb) -> int:
    """What one node holds per other node: members (tombstones too), the dead
    it reaped lately (``_reaped``), cells, dances."""
    return len(c.swim.members) + len(c.swim._reaped) + len(c._cell_of) + len(c.waggle.view)


def _sent(net: SimNetwork, hosts: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Messages and bytes each of ``hosts`` has sent so far."""
    counted = {i: net.hosts[addr_of(i)] for i in hosts}
    return {i: (h.sent_msgs, h.sent_bytes) for i, h in counted.items()}


def _per_node_s(
    before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]], seconds: float
) -> tuple[float, float]:
    """Messages and bytes sent per host per second between two ``_sent``
    counts, over the hosts counted both times (churn replaces some between)."""
    both = before.keys() & after.keys()
    msgs = sum(after[i][0] - before[i][0] for i in both)
    sent_bytes = sum(after[i][1] - before[i][1] for i in both)
    return msgs / len(both) / seconds, sent_bytes / len(both) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--kill", type=float, default=0.3)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--join-spacing", type=float, default=0.005)
    parser.add_argument(
        "--churn", type=float, default=0.0, help="nodes per minute that crash and are replaced"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with no_cycle_collector():
        result = run(args)
    emit(result, quiet=args.json)
    return 0


if __name__ == "__main__":
    code = main()
    # The swarm is one reference cycle (hosts hold core factories that hold the
    # network): only the interpreter's last collection frees it, which walks
    # every object the run made (4.5 s after 2,000 nodes x 0.3 min, 12 s after
    # 3,000 x 2.5). The process is done: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
