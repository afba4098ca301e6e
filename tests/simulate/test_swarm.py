"""The swarm simulation: real comb cores, modelled servers, faults on purpose."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import pytest

from hexamesh.serve.relay import CONNECT_TIMEOUT, DIAL_STAGGER
from hexamesh.serve.shun import SHUN_PERIOD
from hexamesh.simulate.engine import TINY_CPU
from hexamesh.simulate.swarm import (
    KEEPALIVE_GIVE_UP,
    VERDICT_POLL,
    Scenario,
    SwarmSim,
    run_scenario,
)

ALONE = TINY_CPU.ttft_s + 127 / 592.0  # one 128-token request on an idle server


def without_wall(summary: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in summary.items() if k != "wall_s"}


def test_a_healthy_swarm_serves_everything_with_no_failover() -> None:
    out, sim = run_scenario(Scenario(nodes=61, minutes=0.5, rate=10, loss=0.0))
    assert out["requests"] == len(sim.reqs) > 200
    assert out["ok"] == out["requests"] and out["ok_frac"] == 1.0
    assert out["failovers"] == out["continuations"] == out["hung"] == 0
    # a trip to a server and back, never faster than the engine alone
    assert out["latency_s_p50"] >= round(ALONE, 2)
    assert out["ttft_s_p50"] >= round(TINY_CPU.ttft_s, 2)
    assert out["view_stale_max"] == out["view_wrong_max"] == 0


def test_same_seed_same_run() -> None:
    scenario = Scenario(nodes=37, minutes=0.4, kill=0.2, kill_at=5, seed=3)
    first, _ = run_scenario(scenario)
    second, _ = run_scenario(scenario)
    assert without_wall(first) == without_wall(second)
    other, _ = run_scenario(Scenario(nodes=37, minutes=0.4, kill=0.2, kill_at=5, seed=4))
    assert without_wall(other) != without_wall(first)


def test_a_mass_kill_costs_clients_nothing_but_their_entry_points() -> None:
    scenario = Scenario(nodes=127, servers=0.1, minutes=1.0, rate=20, kill=0.3, kill_at=20)
    out, sim = run_scenario(scenario)
    assert out["hung"] == 0 and all(r.outcome for r in sim.reqs)
    assert out["first_choice_dead"] > 0  # the kill did hit routing ...
    assert out["failovers"] > 0
    # ... and every request whose entry survived was served: DHT providers back up thin views.
    assert out["failed_no_server"] == out["failed_all_tried"] == 0
    assert out["ok"] + out["failed_entry_died"] == out["requests"]
    assert out["view_clean_s"] is not None and out["view_clean_s"] <= 15


def test_churn_crashes_nodes_and_brings_them_back() -> None:
    scenario = Scenario(nodes=61, minutes=1.0, rate=10, churn=0.5, churn_at=10, downtime=5)
    out, sim = run_scenario(scenario)
    crashes = [t for t, what in sim.faults if what.startswith("churn")]
    assert len(crashes) > 10 and min(crashes) >= sim.start + 10
    # every node crashed more than `downtime` before the last look is back
    down = {int(what.split()[-1]) for t, what in sim.faults if t > sim.net.now - 5}
    assert all(sim.alive(i) for i in range(61) if i not in down)
    assert out["latency_s_p99_before"] is not None  # a baseline before the churn
    assert out["hung"] == 0 and out["ok_frac"] > 0.95


def test_a_server_killed_mid_stream_is_continued_elsewhere() -> None:
    # Long answers (1,000 tokens: ~1.7 s alone), so kills land mid-stream.
    scenario = Scenario(nodes=61, servers=0.2, minutes=0.5, rate=4, tokens=1000)
    sim = SwarmSim(scenario)
    killed = sorted(sim.servers)[:4]
    for k, server in enumerate(killed):
        sim.net.call_at(sim.start + 5 + 4 * k, partial(sim.kill, server, "test"))
    out = sim.run()
    continued = [r for r in sim.reqs if r.continuations]
    assert continued, "no kill landed mid-stream"
    assert all(r.outcome in ("ok", "entry_died") for r in continued)
    # The continuation asked only for what the client had not had yet.
    assert all(r.tokens_left < scenario.tokens for r in continued)
    assert out["hung"] == 0


def test_with_every_server_dead_requests_fail_cleanly() -> None:
    sim = SwarmSim(Scenario(nodes=61, servers=0.1, minutes=0.5, rate=10))
    kill_at = sim.start + 5
    for server in sorted(sim.servers):
        sim.net.call_at(kill_at, partial(sim.kill, server, "test"))
    out = sim.run()
    late = [r for r in sim.reqs if r.arrived > kill_at + 1]
    assert late and all(r.outcome in ("no_server", "all_failed") for r in late)
    assert all(r.done is not None and r.done - r.arrived < 1.0 for r in late)  # no waiting
    assert out["hung"] == 0


def mass_fault(**changes: Any) -> Scenario:
    """91 nodes, 15 % of them servers, 512-token requests; 30 % struck 10 s in, no loss."""
    base: dict[str, Any] = dict(
        nodes=91, servers=0.15, rate=20, tokens=512, kill=0.3, kill_at=10, loss=0.0
    )
    return Scenario(**{**base, **changes})


def deaf_run(scenario: Scenario) -> dict[str, Any]:
    """The same run with front doors deaf to the comb's death verdicts."""
    sim = SwarmSim(scenario)
    sim._held_dead = lambda entry, node: False  # type: ignore[method-assign]
    return sim.run()


def test_requests_to_vanished_servers_move_on_at_the_verdict() -> None:
    """Machines that vanish send no reset: their requests go silent. The entry
    moves on when its comb declares the server dead (seconds), before TCP
    keepalive would have given up; the rest of the run is served."""
    scenario = mass_fault(minutes=0.5, vanish=True)
    out, _ = run_scenario(scenario)
    assert out["silent"] > 0
    assert out["silent_cut_by_verdict"] == out["silent"]
    assert out["silent_wait_s_max"] < KEEPALIVE_GIVE_UP
    assert out["continuations"] > 0 and out["hung"] == 0
    assert out["failed_all_tried"] == 0 and out["failed_no_server"] == 0
    # without the verdicts (a front door deaf to the comb) they wait out keepalive
    out = deaf_run(scenario)
    assert out["silent"] > 0 and out["silent_cut_by_verdict"] == 0
    assert out["silent_wait_s_max"] >= KEEPALIVE_GIVE_UP


def test_frozen_servers_are_cut_at_the_verdict_and_thaw_back() -> None:
    """Frozen agents (SIGSTOP, a hang) keep their connections up: only the
    verdict ends the wait before the relay's own timeouts (60-120 s). Thawed
    20 s later they refute their deaths and are everyone's peers again."""
    scenario = mass_fault(minutes=1.0, freeze=True, restart_after=20)
    out, sim = run_scenario(scenario)
    assert sim.faults[1][1].startswith("thawed")
    assert out["silent"] > 0 and out["silent_cut_by_verdict"] == out["silent"]
    assert out["silent_wait_s_max"] < 10
    assert out["continuations"] > 0 and out["hung"] == 0
    assert out["failed_all_tried"] == 0 and out["failed_no_server"] == 0
    assert out["view_wrong_max"] > 0  # the thawed were held dead for a while ...
    assert out["view_clean_s"] is not None and out["view_clean_s"] < 20 + 15  # ... not for long
    # A front door deaf to the comb waits until the thaw, and the streams go on there.
    out = deaf_run(scenario)
    assert out["silent"] > 0 and out["silent_resumed"] == out["silent"]
    assert out["silent_wait_s_max"] == pytest.approx(20.0, abs=VERDICT_POLL + 1e-6)
    assert out["hung"] == 0


def test_a_partition_costs_a_dial_stagger_and_heals() -> None:
    scenario = Scenario(
        nodes=91, servers=0.15, minutes=1.0, rate=10, partition_at=10, heal_at=30, loss=0.0
    )
    out, sim = run_scenario(scenario)
    cut = sim.start + 10
    early = [r for r in sim.reqs if cut <= r.arrived < cut + 2 and r.first_dead]
    assert early, "nobody tried a server across the cut"
    # a server across the cut is passed over after the dial stagger, not its timeout
    assert all(
        DIAL_STAGGER <= (r.done or 0) - r.arrived < CONNECT_TIMEOUT
        for r in early
        if r.outcome == "ok"
    )
    assert out["view_wrong_max"] > 0  # each side held the other dead ...
    assert out["view_clean_s"] is not None  # ... and took it back after the heal
    assert out["hung"] == 0


def test_an_entry_pays_for_a_server_across_the_cut_once() -> None:
    # Few servers: most entries know them from the DHT only, and nobody on this
    # side ever declares those across the cut dead (their watchers are there).
    scenario = Scenario(
        nodes=169, servers=0.03, minutes=0.75, rate=20, partition_at=5, heal_at=40, loss=0.0
    )
    out, sim = run_scenario(scenario)
    paid: dict[tuple[int, bytes], float] = {}
    again = 0
    for r in sorted(sim.reqs, key=lambda r: r.arrived):
        if r.first_dead and not r.attempts.tries[0].doubtful:
            key = (r.entry, r.attempts.tries[0].node)
            gap = r.arrived - paid.get(key, -1e9)
            if gap < CONNECT_TIMEOUT + 0.5:
                continue  # sent before the first one timed out: nothing known yet
            paid[key] = r.arrived
            again += gap < SHUN_PERIOD
    assert paid, "nobody tried a server across the cut"
    assert again == 0  # once timed out, shunned: tried last while anything else is left
    assert out["hung"] == 0


def test_requests_spread_over_servers_nobody_sees() -> None:
    # Few servers: most entries know them from the DHT only (unknown load).
    out, sim = run_scenario(Scenario(nodes=217, servers=0.04, minutes=0.5, rate=30, loss=0.0))
    tokens = sorted(e.generated for e in sim.engines.values())
    assert tokens[-1] < 3 * tokens[0], tokens  # by node id, one server took half
    assert out["tokens_per_server_cv"] < 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nodes": 1}, "nodes"),
        ({"servers": 0.0}, "servers"),
        ({"loss": 1.0}, "loss"),
        ({"heal_at": 5.0}, "heal_at"),
        ({"tokens": 0}, "tokens"),
        ({"vanish": True, "freeze": True}, "vanish or freeze"),
    ],
)
def test_bad_scenarios_are_refused(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario(**changes)  # type: ignore[arg-type]


def test_conversations_come_back_to_their_server_with_affinity() -> None:
    chat = Scenario(nodes=37, servers=0.2, minutes=0.5, rate=2, turns=4, loss=0.0, chat=True)
    out, sim = run_scenario(chat)
    assert out["hung"] == 0 and out["conversations"] > 20
    assert out["ok"] == out["requests"]
    assert max(r.turn for r in sim.reqs) == 3  # every conversation went on, turn by turn
    assert out["prefix_hit_rate"] > 0.6
    plain, _ = run_scenario(dataclasses.replace(chat, affinity=False))
    assert abs(plain["conversations"] - out["conversations"]) <= 0.1 * out["conversations"]
    assert out["prefix_hit_rate"] >= plain["prefix_hit_rate"]


def test_jobs_survive_the_death_of_their_acceptors() -> None:
    """A third of the nodes SIGKILLed mid-run: jobs whose acceptor died are
    taken over by a holder of their record, and none is lost."""
    scenario = Scenario(
        nodes=61,
        servers=0.15,
        minutes=1.0,
        rate=2,
        jobs=4,
        tokens=2000,
        kill=0.3,
        kill_at=20,
        seed=2,
    )
    out, sim = run_scenario(scenario)
    assert out["jobs_accepted"] > 100
    assert out["jobs_taken_over"] > 0  # some acceptors died with jobs under way
    assert out["jobs_lost"] == 0
    assert out["jobs_done"] + out["jobs_failed"] == out["jobs_accepted"]
    taken = [j for j in sim.jobs if j.takeovers]
    assert all(sim.alive(j.runner) or j.state != "running" for j in taken)
