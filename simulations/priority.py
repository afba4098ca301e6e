"""Priorities under a flood: does a high request overtake queued low ones?

    python -m simulations.priority --json [--flood 32] [--high 12] [--max-num-seqs 8]

One agent serves the tiny model with real vLLM (CPU), its batch held to
``--max-num-seqs`` slots so that a flood makes a queue. Twice, with the
agent's priority scheduling on (vLLM ``--scheduling-policy priority``, each
request's priority passed through) and then off (first come, first served),
it measures the time to first token of ``--high`` high-priority streams
(``x-hexamesh-priority: high``, one at a time) on the idle agent, then
while ``--flood`` closed-loop low-priority streams keep the engine full;
then the flood stops taking new streams and every low stream sent must end
whole (no starvation).

Prints ``high_ttft_ms_p50_idle``, ``high_ttft_ms_p50_flood``,
``high_ttft_ratio`` (flood / idle), ``low_sent``, ``low_completed`` with
priorities, and the same ratio (``high_ttft_ratio_fcfs``) without. Target:
``high_ttft_ratio <= 2`` and ``low_completed == low_sent``. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import trio

from hexamesh.demo import LOOPBACK, start_agent, wait_until
from simulations.common import emit, percentile
from simulations.loadgen import LeanClient, LoadError, workload

READY_TIMEOUT = 600.0  # s for vLLM to start
FILL = 4.0  # s the flood runs before the high requests come
HIGH_GAP = 0.3  # s between two high requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: make the tiny model)")
    parser.add_argument("--flood", type=int, default=32, help="low-priority streams at once")
    parser.add_argument("--high", type=int, default=12, help="high-priority requests timed")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="the engine's batch slots")
    parser.add_argument("--low-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--workdir", type=Path, help="keep the agents' data and logs here")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hexamesh-priority-") as tmp:
        work = args.workdir or Path(tmp)
        model = args.model
        if model is None:
            from hexamesh.engine.tiny import make_tiny_model

            model = make_tiny_model(work / "tiny")
        for scheduling in (True, False):
            run = _run(work / ("priority" if scheduling else "fcfs"), model, scheduling, args)
            if scheduling:
                result |= run
            else:
                result["high_ttft_ms_p50_flood_fcfs"] = run["high_ttft_ms_p50_flood"]
                result["high_ttft_ratio_fcfs"] = run["high_ttft_ratio"]
    result |= {"flood": args.flood, "max_num_seqs": args.max_num_seqs}
    emit(result, quiet=args.json)


def _run(work: Path, model: Path, scheduling: bool, args: Any) -> dict[str, Any]:
    agent = start_agent(
        work,
        *LOOPBACK,
        "--model",
        f"tiny={model}",
        f"--engine-arg=--max-num-seqs={args.max_num_seqs}",
        "--policy-priority-scheduling" if scheduling else "--no-policy-priority-scheduling",
    )
    try:
        agent.wait_ready()

        def ready() -> bool:
            st = agent.status() or {}
            return (st.get("models", {}).get("tiny") or {}).get("state") == "ready"

        wait_until("vLLM to be ready", ready, READY_TIMEOUT, interval=0.5)
        api = str(agent.status()["api"]).removesuffix("/v1")  # type: ignore[index]
        return trio.run(_measure, api, args)
    finally:
        agent.stop(grace=30)


async def _high_ttfts(api: str, n: int) -> list[float]:
    out = []
    async with LeanClient(api, headers=(("x-hexamesh-priority", "high"),)) as client:
        for _ in range(n):
            got = await client.stream(**workload(8))
            if got.ttft_s is not None:
                out.append(got.ttft_s * 1000)
            await trio.sleep(HIGH_GAP)
    return out


async def _flood(api: str, streams: int, tokens: int, stop: Any, counts: Any) -> None:
    """``streams`` closed-loop low-priority streams until ``stop`` is set;
    each worker ends the stream it is in, then stops. ``counts``: (sent, whole)."""

    async def worker() -> None:
        async with LeanClient(api, headers=(("x-hexamesh-priority", "low"),)) as client:
            while not stop.is_set():
                with counts.get_lock():
                    counts[0] += 1
                try:
                    got = await client.stream(**workload(tokens))
                except LoadError:
                    continue
                if got.tokens == tokens:
                    with counts.get_lock():
                        counts[1] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(worker)


def _flood_process(api: str, streams: int, tokens: int, stop: Any, counts: Any) -> None:
    trio.run(_flood, api, streams, tokens, stop, counts)


async def _measure(api: str, args: Any) -> dict[str, Any]:
    await _high_ttfts(api, 3)  # warm: the first requests compile and cache
    idle = await _high_ttfts(api, args.high)
    # The flood runs in its own process: in ours, parsing its streams would
    # delay our reading of the high requests' first tokens.
    ctx = multiprocessing.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("i", [0, 0])
    flood = ctx.Process(
        target=_flood_process, args=(api, args.flood, args.low_tokens, stop, counts)
    )
    flood.start()
    try:
        await trio.sleep(FILL)
        flooded = await _high_ttfts(api, args.high)
    finally:
        stop.set()
        await trio.to_thread.run_sync(flood.join, 300)
    sent, completed = counts[0], counts[1]
    p50_idle, p50_flood = percentile(idle, 0.5) or 0.0, percentile(flooded, 0.5) or 0.0
    return {
        "high_ttft_ms_p50_idle": round(p50_idle, 1),
        "high_ttft_ms_p50_flood": round(p50_flood, 1),
        "high_ttft_ratio": round(p50_flood / p50_idle, 2) if p50_idle else None,
        "high_ttft_ms_p99_flood": percentile(flooded, 0.99),
        "low_sent": sent,
        "low_completed": completed,
    }


if __name__ == "__main__":
    main()
