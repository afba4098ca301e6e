"""DHT simulation: join a large network, store, kill a fraction at once, look up.

    python -m simulations.dht --nodes 10000 --lookups 2000 --kill 0.3 --loss 0.05 --seed 1 --json

Runs the real ``DhtCore`` on the discrete-event ``SimNetwork`` (no sockets,
no encryption; byte counting off for speed). Phases:

1. *join*: nodes join one at a time, each bootstrapping from a random earlier
   node (``join_spacing`` apart in simulated time), then the network settles;
2. *store*: ``--lookups`` records ``job:<i>`` are published by random nodes;
3. *kill*: ``--kill`` of the nodes die at the same instant (never the ones
   that will look up), and ``--loss`` datagram loss is switched on;
4. *look up*: each record is fetched by a random live node.

Latency model: hosts sit at random points of a unit square; one-way delay is
``0.5 ms + 50 ms x distance``, times a jitter factor in [1, 1.2] (``GeoLatency``),
so RTTs range from ~1 ms to ~170 ms. RPC timeout 1 s.

Also, before any kill, ``--oracle`` FIND_NODE lookups of random ids are
compared with the true k closest nodes (a global oracle).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from hexamesh.dht.core import DhtConfig, DhtCore, Found, Got, Grew, Stored
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.sim import GeoLatency, SimHost, SimNetwork
from simulations.common import addr_of, emit, percentile


class Swarm:
    """N DHT cores on one simulated network."""

    def __init__(self, nodes: int, seed: int, config: DhtConfig) -> None:
        self.net = SimNetwork(
            seed=seed,
            latency=GeoLatency(base=0.0005, per_unit=0.05, jitter=0.2),
            measure_bytes=False,
        )
        self.rng = random.Random(seed)
        self.config = config
        self.addrs = [addr_of(i) for i in range(nodes)]
        self.identities = [
            Identity.from_private_bytes(self.rng.randbytes(32)) for _ in range(nodes)
        ]
        self.joined: list[bool] = [False] * nodes

    def core(self, i: int) -> DhtCore:
        core = self.net.hosts[self.addrs[i]].core
        assert isinstance(core, DhtCore)
        return core

    def add(self, i: int) -> None:
        def factory(host: SimHost) -> DhtCore:
            return DhtCore(self.identities[i], host.addr, self.config, host.rng, self.net.now)

        self.net.add_host(self.addrs[i], factory)

    def join_all(self, spacing: float) -> None:
        self.add(0)
        self.joined[0] = True
        for i in range(1, len(self.addrs)):
            seed_addr = self.addrs[self.rng.randrange(i)]

            def join(i: int = i, seed_addr: Addr = seed_addr) -> None:
                self.add(i)
                self.net.interact(self.addrs[i], lambda core, now: core.bootstrap([seed_addr], now))

            self.net.call_at(self.net.now + i * spacing, join)
        self.net.run(until=self.net.now + len(self.addrs) * spacing + 30.0)
        for i in range(1, len(self.addrs)):  # a bootstrap ends with a Found
            self.joined[i] = any(isinstance(e, Found) for e in self.ended(i))

    def ended(self, i: int) -> list[Found | Got | Stored]:
        """The operations of node ``i`` that ended since the last call."""
        return [e for e in self.core(i).events() if not isinstance(e, Grew)]

    def live(self) -> list[int]:
        return [i for i, a in enumerate(self.addrs) if self.net.hosts[a].alive]


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    config = DhtConfig()
    swarm = Swarm(args.nodes, args.seed, config)
    net, rng = swarm.net, swarm.rng
    swarm.join_all(args.join_spacing)
    t_join = time.perf_counter() - t0
    joined = sum(swarm.joined)

    # Oracle check: FIND_NODE results against the true k closest (no kill, no loss yet).
    ids = [ident.node_id for ident in swarm.identities]
    oracle_hits = 0
    asked: dict[tuple[int, int], bytes] = {}  # (asker, operation) -> target
    for _ in range(args.oracle):
        target = rng.randbytes(20)
        asker = rng.randrange(args.nodes)

        def look(core: DhtCore, now: float, t: bytes = target, me: int = asker) -> None:
            asked[(me, core.lookup(t, now))] = t

        net.interact(swarm.addrs[asker], look)
        net.run(until=net.now + 0.01)
    net.run(until=net.now + 30.0)
    oracle_results = [
        (asked[(me, e.op)], me, e.contacts)
        for me in sorted({me for me, _ in asked})
        for e in swarm.ended(me)
        if isinstance(e, Found) and (me, e.op) in asked
    ]
    for target, me, contacts in oracle_results:
        t = int.from_bytes(target, "big")
        # The asker looks for the k closest *other* nodes.
        others = [node_id for j, node_id in enumerate(ids) if j != me]
        truth = sorted(others, key=lambda i: int.from_bytes(i, "big") ^ t)[: config.k]
        oracle_hits += [c.id for c in contacts] == truth

    # Store one record per lookup, from random publishers.
    stored: list[int] = []
    values: dict[str, bytes] = {}
    publishers = rng.sample(range(args.nodes), min(args.lookups, args.nodes))
    for n in range(args.lookups):
        key, value = f"job:{n}", f"value-{n}".encode()
        values[key] = value
        pub = publishers[n % len(publishers)]
        net.interact(
            swarm.addrs[pub], lambda core, now, k=key, v=value: core.publish(k, v, 3600.0, now)
        )
        net.run(until=net.now + 0.005)
    net.run(until=net.now + 30.0)
    for pub in sorted(set(publishers)):
        stored += [e.count for e in swarm.ended(pub) if isinstance(e, Stored)]

    # Kill a fraction at once (never a future asker), then switch loss on.
    askers = [rng.randrange(args.nodes) for _ in range(args.lookups)]
    protected = set(askers)
    candidates = [i for i in range(args.nodes) if i not in protected]
    victims = rng.sample(candidates, min(len(candidates), int(args.kill * args.nodes)))
    for i in victims:
        net.kill(swarm.addrs[i])
    net.loss = args.loss
    sent_before = net.traffic()["sent_msgs"]

    hops: list[int] = []
    durations: list[float] = []
    found_ok = 0
    finished = 0

    getting: dict[tuple[int, int], str] = {}  # (asker, operation) -> key
    for n, asker in enumerate(askers):

        def get(core: DhtCore, now: float, key: str = f"job:{n}", me: int = asker) -> None:
            getting[(me, core.get(key, now))] = key

        net.interact(swarm.addrs[asker], get)
        net.run(until=net.now + 0.005)
    net.run(until=net.now + 60.0)
    for asker in sorted(set(askers)):
        for e in swarm.ended(asker):
            if not isinstance(e, Got) or (asker, e.op) not in getting:
                continue
            finished += 1
            hops.append(e.stats.hops)
            durations.append(e.stats.duration * 1000)
            if any(r.value == values[getting[(asker, e.op)]] for r in e.records):
                found_ok += 1
    lookup_msgs = net.traffic()["sent_msgs"] - sent_before

    return {
        "simulation": "dht",
        "nodes": args.nodes,
        "joined": joined,
        "seed": args.seed,
        "kill": args.kill,
        "loss": args.loss,
        "k": config.k,
        "alpha": config.alpha,
        "lookups": args.lookups,
        "finished": finished,
        "success_rate": round(found_ok / max(args.lookups, 1), 4),
        "hops_p50": percentile([float(h) for h in hops], 0.5),
        "hops_p99": percentile([float(h) for h in hops], 0.99),
        "hops_max": max(hops, default=0),
        "lookup_ms_p50": percentile(durations, 0.5),
        "lookup_ms_p99": percentile(durations, 0.99),
        "msgs_per_lookup": round(lookup_msgs / max(args.lookups, 1), 1),
        "replicas_p50": percentile([float(c) for c in stored], 0.5),
        "oracle_lookups": args.oracle,
        "oracle_match_rate": round(oracle_hits / max(args.oracle, 1), 4),
        "join_wall_s": round(t_join, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "sim_events": net.events,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--kill", type=float, default=0.0, help="fraction killed at once")
    parser.add_argument("--loss", type=float, default=0.0, help="datagram loss after the kill")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--oracle", type=int, default=100, help="FIND_NODE lookups checked against the truth"
    )
    parser.add_argument("--join-spacing", type=float, default=0.01, help="s between joins")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, quiet=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
