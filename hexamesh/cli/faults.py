"""`hexamesh demo`, `chaos` and `simulate`: swarms to watch and to break."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from hexamesh.cli.common import _fail, app, console, err


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=1, max=32, help="Agents to start")] = 7,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the agents keep their data")] = Path(".demo"),
    engines: Annotated[
        int, typer.Option(min=0, help="Agents that run vLLM on the tiny model (0 = comb only)")
    ] = 2,
    model: Annotated[
        Path | None, typer.Option(help="Model dir for the engines \\[default: make the tiny model]")
    ] = None,
) -> None:
    """Start a local swarm on 127.0.0.1 (2 agents with vLLM), send a prompt to an
    agent without the model, show the streamed answer, who served it and the comb;
    Ctrl-C stops everything."""
    from hexamesh.demo import run_demo

    code = run_demo(
        console, agents=agents, duration=duration, workdir=workdir, engines=engines, model=model
    )
    raise typer.Exit(code=code)


@app.command()
def chaos(
    agents: Annotated[int, typer.Option(help="Agent processes to start")] = 7,
    kill: Annotated[int, typer.Option(help="Agents SIGKILLed at once each round")] = 2,
    rounds: Annotated[int, typer.Option(help="Kill rounds")] = 1,
    freeze: Annotated[
        bool,
        typer.Option(
            help="SIGSTOP the victims instead (a hung process: alive to TCP, silent), "
            "and SIGCONT them to bring them back"
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="Restart the victims after each round and time their return")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds a round may take")] = 60.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the choice of victims")] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the agents' data dirs and logs here \\[default: a temp dir]"),
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help="Only the JSON line")] = False,
) -> None:
    """Kill real agent processes on this machine and time how the swarm notices.

    Starts AGENTS agents on 127.0.0.1, SIGKILLs KILL of them (never the
    founder), or freezes them (--freeze), watches the survivors declare them
    dead (over the wire, every 0.25 s), then restarts (or thaws) them and
    watches them come back. Last line: one JSON object."""
    from hexamesh.chaos import ChaosConfig, run_chaos

    try:
        config = ChaosConfig(
            agents=agents,
            kill=kill,
            rounds=rounds,
            restart=restart,
            freeze=freeze,
            timeout=timeout,
            seed=seed,
        )
    except ValueError as e:
        raise _fail(str(e)) from None
    say = (lambda s: None) if json_only else (lambda s: err.print(s))
    try:
        result = run_chaos(config, workdir=workdir, progress=say)
    except (TimeoutError, RuntimeError) as e:  # the swarm never settled, or an agent exited
        raise _fail(f"chaos stopped: {e}") from None
    if not json_only:
        for key, value in result.items():
            if key != "per_round":
                err.print(f"{key:>20}: {value}")
    print(json.dumps(result))
    if any(result[k] for k in ("undetected", "false_positives", "not_back", "never_clean")):
        raise typer.Exit(code=1)


@app.command()
def simulate(
    nodes: Annotated[int, typer.Option(help="Agents in the simulated swarm")] = 200,
    servers: Annotated[float, typer.Option(help="Fraction of them serving the model")] = 0.1,
    minutes: Annotated[float, typer.Option(help="Simulated minutes of requests")] = 5.0,
    rate: Annotated[float, typer.Option(help="Requests per second, swarm-wide")] = 20.0,
    tokens: Annotated[int, typer.Option(help="Tokens generated per request")] = 128,
    loss: Annotated[float, typer.Option(help="Datagram loss probability")] = 0.01,
    kill: Annotated[float, typer.Option(help="Fraction of nodes SIGKILLed at once")] = 0.0,
    kill_at: Annotated[float, typer.Option(help="When, in s after the first request")] = 60.0,
    vanish: Annotated[
        bool,
        typer.Option(
            help="Killed and crashed nodes vanish (power or network lost: no TCP reset, "
            "their connections go silent) instead of their processes dying"
        ),
    ] = False,
    freeze: Annotated[
        bool,
        typer.Option(
            help="Killed and crashed nodes freeze (SIGSTOP, a hang: their connections stay "
            "up and go silent) and later thaw where they stopped, instead of dying"
        ),
    ] = False,
    restart_after: Annotated[
        float | None, typer.Option(help="Restart the killed after this many s \\[default: never]")
    ] = None,
    churn: Annotated[float, typer.Option(help="Crashes per node per minute")] = 0.0,
    churn_at: Annotated[
        float, typer.Option(help="When churn begins, s after the first request")
    ] = 60.0,
    downtime: Annotated[float, typer.Option(help="s a crashed node stays down")] = 30.0,
    partition_at: Annotated[
        float | None, typer.Option(help="Cut the comb in two halves at this s \\[default: never]")
    ] = None,
    heal_at: Annotated[float | None, typer.Option(help="Heal the cut at this s")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same run")] = 1,
    chat: Annotated[
        bool,
        typer.Option(
            help="Multi-turn conversations (--rate new ones per second, a 1,500-token system "
            "prompt each): run with prefix affinity and without, and print both"
        ),
    ] = False,
    turns: Annotated[int, typer.Option(help="With --chat: turns per conversation")] = 6,
    jobs: Annotated[
        float,
        typer.Option(
            help="Durable jobs per second besides the requests (taken over when their "
            "acceptor dies); reports jobs_accepted, jobs_done, jobs_lost"
        ),
    ] = 0.0,
    report: Annotated[
        Path | None, typer.Option(help="Write report.md, plots and summary.json here")
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help="Only the JSON line")] = False,
) -> None:
    """Run a whole swarm on simulated time and break it on purpose.

    Every node runs the real comb core (SWIM, waggle) on the network
    simulator; servers are vLLM stand-ins with measured service times; clients
    send requests to random live nodes, which route and fail over as the front
    door does. Faults: a mass SIGKILL (or machines vanishing, or agents
    freezing), churn, a partition, datagram loss. Last
    line: one JSON object. Exit 1 if a request hung (no outcome)."""
    from hexamesh.simulate.report import ReportError, write_report
    from hexamesh.simulate.swarm import Scenario, run_scenario
    from hexamesh.simulate.util import no_cycle_collector

    try:
        scenario = Scenario(
            nodes=nodes,
            servers=servers,
            minutes=minutes,
            rate=rate,
            tokens=tokens,
            loss=loss,
            kill=kill,
            kill_at=kill_at,
            vanish=vanish,
            freeze=freeze,
            restart_after=restart_after,
            churn=churn,
            churn_at=churn_at,
            downtime=downtime,
            partition_at=partition_at,
            heal_at=heal_at,
            seed=seed,
            chat=chat,
            turns=turns,
            jobs=jobs,
        )
    except ValueError as e:
        raise _fail(str(e)) from None

    def say(line: str) -> None:
        if not json_only:
            err.print(line)

    with no_cycle_collector():
        result, sim = run_scenario(scenario, progress=say)
        if chat:  # the same conversations without affinity, for the ratio
            say("again without prefix affinity")
            plain, _ = run_scenario(dataclasses.replace(scenario, affinity=False), progress=say)
            for key in ("ttft_ms_p50_later_turns", "prefix_hit_rate", "tokens_per_server_cv"):
                result[f"{key}_no_affinity"] = plain.get(key)
            aff, none = result["ttft_ms_p50_later_turns"], plain["ttft_ms_p50_later_turns"]
            result["ttft_ratio"] = round(aff / none, 3) if aff and none else None
    if report is not None:
        try:
            files = write_report(sim, result, report)
        except ReportError as e:
            raise _fail(str(e)) from None
        say(f"report: {files[-1]}")
    if not json_only:
        for key, value in result.items():
            err.print(f"{key:>24}: {value}")
    print(json.dumps(result))
    if result["hung"]:
        raise typer.Exit(code=1)
