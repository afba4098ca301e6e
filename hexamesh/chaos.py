"""Chaos on one machine: real agent processes, SIGKILLed or frozen, watched over the wire.

``hexamesh chaos`` starts a swarm of agent processes on 127.0.0.1 (as the
demo does), waits until every agent holds every other alive, then runs
rounds: SIGKILL ``kill`` random agents at once (never the founder, which is
everyone's seed), or with ``freeze`` SIGSTOP them (a hung process: its
sockets stay open and its kernel answers TCP, but it says nothing), and
watch the survivors. Each survivor is asked what it
sees every ``POLL`` seconds over the sealed wire (``ViewReq``, as ``hexamesh
peers`` does), which is finer than the agents' once-a-second ``agent.json``.

Per round it measures, from the kill: when the first survivor declared each
victim dead and when every survivor had; whether any survivor was declared
dead by anyone (a false positive); then, with ``restart``, it starts the
victims again from their data dirs (same node ids, a higher incarnation), or
SIGCONTs the frozen ones (they wake up holding everyone alive, are told they
were declared dead, and refute), and measures when every survivor holds them
alive again. The result is a dict;
the CLI prints it as one JSON object on the last line.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from hexamesh.comb.core import ViewReply
from hexamesh.comb.service import fetch_view
from hexamesh.demo import AgentProcess, joining, start_agent, start_local_swarm, wait_until
from hexamesh.net.base import parse_addr
from hexamesh.simulate.util import percentile
from hexamesh.swarmkey import load_key_file
from hexamesh.wire import KeyRing

__all__ = ["ChaosConfig", "run_chaos"]

POLL = 0.25  # s between looks; each look asks every agent for its whole view, which on a
# small machine loads the agents it measures (at 0.1 s and 19 agents: 190 views a second)
VIEW_TIMEOUT = 0.5  # s for one survivor to answer a look (a busy one is asked again next poll)
SETTLE_TIMEOUT = 60.0  # s for a fresh swarm to see itself whole


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    agents: int = 7  # processes (a centre and its ring)
    kill: int = 2  # SIGKILLed at once each round
    rounds: int = 1
    restart: bool = True  # bring the victims back after each round and time their return
    freeze: bool = False  # SIGSTOP the victims (and SIGCONT to bring them back) instead
    timeout: float = 60.0  # s a round may take to converge before it is reported unfinished
    seed: int | None = None  # victims' choice; None: random

    def __post_init__(self) -> None:
        if self.agents < 3:
            raise ValueError("chaos needs at least 3 agents")
        if not 1 <= self.kill <= self.agents - 2:
            raise ValueError(
                f"kill must be in 1..{self.agents - 2} (the founder and one more stay)"
            )
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")


async def _look(ring: KeyRing, addrs: dict[str, str]) -> dict[str, ViewReply | None]:
    """Every survivor's view at once (node id -> view, None if it did not answer)."""
    out: dict[str, ViewReply | None] = {}

    async def one(node: str, addr: str) -> None:
        try:
            out[node] = await fetch_view(ring, parse_addr(addr), timeout=VIEW_TIMEOUT)
        except TimeoutError:
            out[node] = None

    async with trio.open_nursery() as nursery:
        for node, addr in addrs.items():
            nursery.start_soon(one, node, addr)
    return out


def _dead(view: ViewReply) -> set[str]:
    return {n.hex() for n in view.dead}


def _wrongly_dead(survivors: set[str], view: ViewReply) -> set[str]:
    return _dead(view) & survivors


async def _watch(
    ring: KeyRing,
    survivors: dict[str, str],
    done: Callable[[str, ViewReply], bool],
    targets: list[str],
    start: float,
    timeout: float,
    false_positive: Callable[[ViewReply], set[str]] = lambda v: set(),
) -> tuple[dict[str, float], dict[str, float], set[str]]:
    """Poll the survivors until each target is ``done`` in every view.

    Returns (target -> first time one survivor had it, target -> time all had
    it, "holder>node" for each node a survivor held wrongly); times are seconds
    from ``start``."""
    first: dict[str, float] = {}
    every: dict[str, float] = {}
    wrong: set[str] = set()
    while len(every) < len(targets) and time.monotonic() - start < timeout:
        views = await _look(ring, survivors)
        now = round(time.monotonic() - start, 2)  # after the look: up to a poll late
        answered = [v for v in views.values() if v is not None]
        for holder, view in views.items():
            if view is not None:
                wrong |= {f"{holder[:8]}>{n[:8]}" for n in false_positive(view)}
        for t in targets:
            holders = sum(done(t, v) for v in answered)
            if holders and t not in first:
                first[t] = now
            if holders == len(survivors) and t not in every:
                every[t] = now
        await trio.sleep(POLL)
    return first, every, wrong


def unwatched(statuses: list[dict[str, Any]]) -> list[int]:
    """The agents (by index into ``statuses``, as in agent.json) that no other
    agent links to: nobody probes them, so their death would go unnoticed."""
    linked = {n for s in statuses for n in s.get("neighbours") or ()}
    return [i for i, s in enumerate(statuses) if s.get("node_id") not in linked]


def run_chaos(
    config: ChaosConfig,
    *,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the rounds; every agent is stopped on the way out."""
    t_begin = time.monotonic()
    rng = random.Random(config.seed)
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="hexamesh-chaos-")) if workdir is None else workdir
    procs: list[AgentProcess] = []
    try:
        # No engines: chaos is about membership (`--max-models 0`).
        procs = start_local_swarm(work, config.agents, "--max-models", "0")
        ring = load_key_file(work / "agent0" / "swarm.key")
        ids = [p.wait_ready()["node_id"] for p in procs]

        def unsettled() -> dict[int, str]:
            # Settled: placed, linked, every link held alive, and linked to by
            # someone (watched: a node killed before any neighbour heard of its
            # cell is never declared dead). (Members beyond the links are not all
            # known to everyone: a death still reaches them, as news of a
            # stranger is kept as a tombstone and spread.)
            out = {}
            statuses = [p.status() or {} for p in procs]
            for i in unwatched(statuses):
                out[i] = "linked to by nobody"
            for i, s in enumerate(statuses):
                if not s.get("cell"):
                    out[i] = "no cell"
                elif not set(s.get("neighbours") or [None]) <= set(s.get("alive", [])):
                    out[i] = "a link not held alive"
                elif s.get("dead"):
                    out[i] = f"holds {len(s['dead'])} dead"
            return out

        def settle() -> None:
            wait_until(
                "the comb to settle",
                lambda: not unsettled(),
                SETTLE_TIMEOUT,
                procs=procs,
                show=unsettled,
            )

        settle()
        progress(f"{config.agents} agents up and linked after {time.monotonic() - t_begin:.1f} s")
        seed_flags = joining(procs[0].status()["address"], work / "agent0" / "swarm.key")  # type: ignore[index]
        rounds: list[dict[str, Any]] = []
        for k in range(config.rounds):
            if k:
                settle()  # the restarted agents too: placed, linked and linked to
            victims = rng.sample(range(1, config.agents), config.kill)
            victim_ids = [ids[i] for i in victims]
            survivors = {
                ids[i]: procs[i].status()["address"]  # type: ignore[index]
                for i in range(config.agents)
                if i not in victims
            }
            start = time.monotonic()
            if config.freeze:
                for i in victims:
                    os.kill(procs[i].proc.pid, signal.SIGSTOP)
            else:
                for i in victims:
                    procs[i].proc.kill()
                for i in victims:
                    procs[i].proc.wait()
            first, every, wrong = trio.run(
                _watch,
                ring,
                survivors,
                lambda t, v: t in _dead(v),
                victim_ids,
                start,
                config.timeout,
                partial(_wrongly_dead, set(survivors)),
            )
            result: dict[str, Any] = {
                "round": k + 1,
                "victims": [t[:8] for t in victim_ids],
                "killed": len(victims),
                "how": "SIGSTOP" if config.freeze else "SIGKILL",
                "detect_first_s": [first.get(t) for t in victim_ids],
                "detect_all_s": [every.get(t) for t in victim_ids],
                "undetected": sum(t not in every for t in victim_ids),
                "false_positives": len({w.split(">")[1] for w in wrong}),
                "held_dead_wrongly": sorted(wrong),  # "survivor>node", short ids
            }
            progress(f"round {k + 1}: {result['how']} {len(victims)}, {result}")
            if config.restart:
                start = time.monotonic()
                for i in victims:
                    if config.freeze:
                        os.kill(procs[i].proc.pid, signal.SIGCONT)
                    else:
                        procs[i] = start_agent(work / f"agent{i}", *seed_flags, "--max-models", "0")
                _, back, _ = trio.run(
                    _watch,
                    ring,
                    survivors,
                    # Every survivor held it dead: it is back where that is undone (a
                    # higher incarnation believed). Its new cell may not be known to
                    # survivors beyond its neighbourhood, so cells are not the test.
                    lambda t, v: t not in _dead(v),
                    victim_ids,
                    start,
                    config.timeout,
                )
                result["rejoin_all_s"] = [back.get(t) for t in victim_ids]
                result["not_back"] = sum(t not in back for t in victim_ids)
                progress(f"round {k + 1}: restarted, back after {result['rejoin_all_s']}")
                # Everyone (the returned too) must end up holding nobody dead: a
                # returning node must not keep an old death it heard while rejoining.
                everyone = {ids[i]: procs[i].wait_ready()["address"] for i in range(config.agents)}
                _, clean, seen = trio.run(
                    _watch,
                    ring,
                    everyone,
                    lambda t, v: not _dead(v) & set(ids),
                    ["all"],
                    start,
                    config.timeout,
                    partial(_wrongly_dead, set(ids)),
                )
                result["all_clean_s"] = clean.get("all")
                result["held_dead_at_timeout"] = [] if clean else sorted(seen)
            rounds.append(result)
        first_all = [x for r in rounds for x in r["detect_first_s"] if x is not None]
        every_all = [x for r in rounds for x in r["detect_all_s"] if x is not None]
        back_all = [x for r in rounds for x in r.get("rejoin_all_s", []) if x is not None]
        return {
            "simulation": "chaos",
            "agents": config.agents,
            "kill": config.kill,
            "freeze": config.freeze,
            "rounds": config.rounds,
            "detect_first_s_p50": percentile(first_all, 0.5),
            "detect_first_s_max": max(first_all, default=None),
            "detect_all_s_p50": percentile(every_all, 0.5),
            "detect_all_s_max": max(every_all, default=None),
            "undetected": sum(r["undetected"] for r in rounds),
            "false_positives": sum(r["false_positives"] for r in rounds),
            "rejoin_all_s_max": max(back_all, default=None) if config.restart else None,
            "not_back": sum(r.get("not_back", 0) for r in rounds),
            "never_clean": sum(r.get("all_clean_s", 0) is None for r in rounds),
            "per_round": rounds,
            "wall_s": round(time.monotonic() - t_begin, 1),
        }
    finally:
        for p in procs:
            if p.proc.poll() is None:
                os.kill(p.proc.pid, signal.SIGCONT)  # a frozen one cannot take SIGTERM
            p.stop()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
