"""Engine benchmark: tokens/s and time to first token straight to vLLM.

    python -m simulations.enginebench --json [--model DIR] [--requests 32] [--tokens 128]

Makes the tiny model (unless ``--model``), starts one vLLM server through the
supervisor, and streams completions of ``--tokens`` tokens each (EOS ignored)
at concurrency 1, 4 and 16 from a client in the same process. For each level:
tokens/s, TTFT p50/p99 (ms) and throughput relative to concurrency 1 in the
same run (machines are noisy: compare ratios). These are the baseline the
front door's overhead is measured against and the engine model of the
simulator. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hexamesh.engine.client import EngineClient
from hexamesh.engine.supervisor import EngineConfig, ModelSpec, open_engine
from simulations.common import emit, percentile

LEVELS = (1, 4, 16)


async def stream_one(client: EngineClient, tokens: int, ttfts: list[float]) -> int:
    """One streamed completion of ``tokens`` tokens (EOS ignored, greedy); its
    TTFT in ms goes to ``ttfts``; returns the tokens received."""
    start = time.perf_counter()
    first = None
    count = 0
    async for chunk in client.stream_completion(
        model="tiny", prompt="the swarm", max_tokens=tokens, ignore_eos=True, temperature=0.0
    ):
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            if first is None:
                first = time.perf_counter() - start
            count += 1
    if first is not None:
        ttfts.append(first * 1000)
    return count


async def closed_loop(
    concurrency: int, requests: int, one: Callable[[], Awaitable[int]]
) -> tuple[int, float]:
    """``requests`` calls of ``one`` by ``concurrency`` workers, each starting
    the next as soon as its last ended; (sum of what they returned, wall s)."""
    counts: list[int] = []
    queue = list(range(requests))

    async def worker() -> None:
        while queue:
            queue.pop()
            counts.append(await one())

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return sum(counts), time.perf_counter() - start


async def ttft_added(
    base: str,
    through: str,
    pairs: int,
    first_token_ms: Callable[[EngineClient], Awaitable[float | None]],
    *,
    warm: int,
    pause: float,
) -> list[float]:
    """Time to first token added by sending ``through`` instead of to ``base``:
    one request to each, back to back (which goes first alternates), each
    over its own kept-alive connection, ``pause`` s apart; the difference per
    pair in ms. The first ``warm`` pairs open connections and are not counted,
    nor is a pair where either side got no token."""
    added: list[float] = []
    async with EngineClient(base) as to_base, EngineClient(through) as to_through:
        for i in range(pairs + warm):
            got: dict[str, float | None] = {}
            order = [("base", to_base), ("through", to_through)]
            for name, client in order if i % 2 else order[::-1]:
                got[name] = await first_token_ms(client)
                await trio.sleep(pause)
            b, t = got["base"], got["through"]
            if i >= warm and b is not None and t is not None:
                added.append(t - b)
    return added


async def _level(
    client: EngineClient, concurrency: int, requests: int, tokens: int
) -> dict[str, Any]:
    ttfts: list[float] = []
    total, wall = await closed_loop(
        concurrency, requests, lambda: stream_one(client, tokens, ttfts)
    )
    return {
        "concurrency": concurrency,
        "tok_s": round(total / wall, 1),
        "ttft_ms_p50": percentile(ttfts, 0.5),
        "ttft_ms_p99": percentile(ttfts, 0.99),
        "tokens": total,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from hexamesh.engine.tiny import make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "tiny"))
        spec = ModelSpec(name="tiny", model=model, kv_cache_gb=1)
        config = EngineConfig(ready_timeout=900, scrape_interval=args.scrape_interval)
        async with open_engine(config) as engine:
            started = time.perf_counter()
            await engine.load(spec)
            startup = time.perf_counter() - started
            async with EngineClient(engine.url("tiny")) as client:
                await _level(client, 1, 2, 8)  # warm up
                levels = [
                    await _level(client, c, max(args.requests, c), args.tokens) for c in LEVELS
                ]
    base = levels[0]["tok_s"] or 1.0
    out: dict[str, Any] = {"benchmark": "engine", "tokens_per_request": args.tokens}
    for lv in levels:
        c = lv["concurrency"]
        out[f"tok_s_c{c}"] = lv["tok_s"]
        out[f"ttft_ms_p50_c{c}"] = lv["ttft_ms_p50"]
        out[f"ttft_ms_p99_c{c}"] = lv["ttft_ms_p99"]
        out[f"ratio_c{c}"] = round(lv["tok_s"] / base, 2)
    out["startup_s"] = round(startup, 1)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model dir (default: make the tiny one)")
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per request")
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="s between /metrics scrapes"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    emit(trio.run(run, args), quiet=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
