"""Engine benchmark: tokens/s and time to first token straight to vLLM.

    python -m simulations.enginebench --json [--model DIR] [--requests 32] [--tokens 128]

Makes the tiny model (unless ``--model``), starts one vLLM server through the
supervisor, and streams completions of ``--tokens`` tokens each (EOS ignored)
at concurrency 1, 4 and 16 from a client in the same process (the lean one of
``simulations.loadgen``: tokens are vLLM's own count). For each level:
tokens/s, TTFT p50/p99 (ms) and throughput relative to concurrency 1 in the
same run (machines are noisy: compare ratios). These are the baseline the
front door's overhead is measured against and the engine model of the
simulator. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from hexamesh.engine.supervisor import EngineConfig, ModelSpec, open_engine
from simulations.common import emit, percentile
from simulations.loadgen import closed_loop, workload

LEVELS = (1, 4, 16)


async def _level(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, Any]:
    got = await closed_loop(url, concurrency, requests, **workload(tokens))
    return {
        "concurrency": concurrency,
        "tok_s": round(got["tok_s"], 1),
        "ttft_ms_p50": percentile(got["ttfts"], 0.5),
        "ttft_ms_p99": percentile(got["ttfts"], 0.99),
        "tokens": got["tokens"],
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
            url = engine.url("tiny")
            await _level(url, 1, 2, 8)  # warm up
            levels = [await _level(url, c, max(args.requests, c), args.tokens) for c in LEVELS]
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
