"""Prefix affinity: multi-turn conversations, with and without it.

    python -m simulations.affinity --json [--conversations 8] [--turns 6]

Two agents serve the ``small`` generated model with real vLLM (CPU; a
1,500-token prefill takes ~170 ms here), each engine held to
``--max-num-seqs`` batch slots so that its load shows; a third agent, with no
engine, is the entry every request goes to. ``--conversations`` chats run
at once, each sending ``--turns`` turns one after another: a ~1,500-token
system prompt of its own (an agent loop's instructions and tools; one
shared by all with ``--shared-system``), then the conversation's history
(each turn adds a ~100-token user message and a reply), streamed
completions of ``--tokens`` tokens. Run twice, the entry restarted between: with prefix
affinity (``policy.weight_affinity`` at its default) and without (0); each run with
its own text, so the engines' caches from the first run do not help the
second.

Prints ``ttft_ms_p50_affinity`` and ``ttft_ms_p50_no_affinity`` (turns 2 on,
the first turn of a conversation has nothing to find), ``ttft_ratio``
(affinity / none), ``prefix_hit_rate`` (prompt tokens found in the engines'
prefix caches over those looked up, from vLLM's metrics) for both, and
``load_cv`` (coefficient of variation of the tokens each server processed)
for both. Target: ``ttft_ratio <= 0.6`` with ``load_cv <= 0.3``. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import trio

from hexamesh.demo import LOOPBACK, AgentProcess, joining, start_agent, wait_until
from hexamesh.serve.router import W_AFFINITY
from simulations.common import emit, percentile
from simulations.loadgen import LeanClient

READY_TIMEOUT = 600.0  # s for vLLM to start
BIND = "VLLM_CPU_OMP_THREADS_BIND"  # the cores vLLM's CPU worker runs on
SYSTEM_WORDS = 1500  # ~ tokens of the shared system prompt (the model's words are ~1 token each)
USER_WORDS = 100  # ~ tokens of a user turn
REPLY_WORDS = 16  # the reply a client appends to its history
_WORDS = (  # noqa: SIM905 - prose reads better than a list of 30 strings
    "the swarm serves prompts with no central coordinator every machine runs the same agent "
    "bees dance to tell where flowers are a hive decides where to live by scouts voting"
).split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument(
        "--shared-system",
        action="store_true",
        help="one system prompt for every conversation (else one each, as agent loops have)",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--workdir", type=Path, help="keep the agents' data and logs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hexamesh-affinity-") as tmp:
        work = args.workdir or Path(tmp)
        from hexamesh.engine.tiny import make_tiny_model

        model = make_tiny_model(work / "small", shape="small")
        serve = (
            "--model",
            f"tiny={model}",
            "--max-model-len",
            "4096",
            f"--engine-arg=--max-num-seqs={args.max_num_seqs}",
        )
        # vLLM's CPU build binds its worker to CPU 0 unless told: two engines
        # would share one core (and the load on either slows both); each gets
        # its own, as two servers would have
        s1 = start_agent(work / "s1", *LOOPBACK, *serve, env={BIND: "0"})
        agents = [s1]
        try:
            seed = s1.wait_ready()["address"]
            key = work / "s1" / "swarm.key"
            s2 = start_agent(work / "s2", *joining(seed, key), *serve, env={BIND: "1"})
            agents.append(s2)
            engines = [_engine_url(s) for s in (s1, s2)]
            result: dict[str, Any] = {}
            for run, weight in (("no_affinity", 0.0), ("affinity", W_AFFINITY)):
                entry = start_agent(
                    work / f"entry-{run}",
                    *joining(seed, key),
                    f"--policy-weight-affinity={weight}",
                )
                try:
                    entry.wait_ready()
                    api = str(entry.status()["api"]).removesuffix("/v1")  # type: ignore[index]
                    _wait_for_servers(api)
                    before = [_metrics(u) for u in engines]
                    ttfts, moved = trio.run(_converse, api, args, random.Random(run))
                    after = [_metrics(u) for u in engines]
                finally:
                    entry.stop(grace=10)
                result |= _figures(run, ttfts, before, after)
                result[f"turns_moved_{run}"] = moved
        finally:
            for agent in agents:
                agent.stop(grace=30)
    for name, figure in (("", "p50"), ("_p90", "p90"), ("_mean", "mean")):
        none, aff = result[f"ttft_ms_{figure}_no_affinity"], result[f"ttft_ms_{figure}_affinity"]
        result[f"ttft_ratio{name}"] = round(aff / none, 3) if none and aff else None
    result |= {
        "conversations": args.conversations,
        "turns": args.turns,
        "shared_system": args.shared_system,
    }
    emit(result, quiet=args.json)


def _engine_url(agent: AgentProcess) -> str:
    def ready() -> str | None:
        m = ((agent.status() or {}).get("models") or {}).get("tiny") or {}
        return m.get("url") if m.get("state") == "ready" else None

    return str(wait_until("vLLM to be ready", ready, READY_TIMEOUT, interval=0.5))


def _wait_for_servers(api: str) -> None:
    """Until the entry sees both servers of the model."""

    def both() -> bool:
        try:
            with urllib.request.urlopen(f"{api}/v1/models", timeout=5) as r:
                data = json.loads(r.read())["data"]
        except OSError:
            return False
        return any(m["id"] == "tiny" and m.get("servers", 0) >= 2 for m in data)

    wait_until("the entry to see both servers", both, 120, interval=0.5)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


async def _converse(api: str, args: Any, rng: random.Random) -> tuple[list[float], int]:
    """Every conversation's turns: the TTFTs (ms) of turns 2 on, and how many
    of those turns went to another server than the turn before."""
    shared = _text(rng, SYSTEM_WORDS)
    out: list[float] = []
    moved = 0

    async def conversation(i: int) -> None:
        nonlocal moved
        last = None
        local = random.Random(rng.random())
        system = shared if args.shared_system else _text(local, SYSTEM_WORDS)
        history = ""
        async with LeanClient(api) as client:
            for turn in range(args.turns):
                history += f"\nuser: {_text(local, USER_WORDS)}\nassistant:"
                got = await client.stream(
                    model="tiny",
                    prompt=system + history,
                    max_tokens=args.tokens,
                    ignore_eos=True,
                    temperature=0.0,
                )
                if turn > 0 and got.ttft_s is not None:
                    out.append(got.ttft_s * 1000)
                    moved += got.served_by != last
                last = got.served_by
                history += f" {_text(local, REPLY_WORDS)}"

    async with trio.open_nursery() as nursery:
        for i in range(args.conversations):
            nursery.start_soon(conversation, i)
    return out, moved


_COUNTERS = (
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)


def _metrics(engine: str) -> dict[str, float]:
    """vLLM's counters of one engine (its /metrics needs no key)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{engine}/metrics", timeout=10) as r:
        text = r.read().decode()
    lines = [line for line in text.splitlines() if line.startswith(_COUNTERS)]
    out = dict.fromkeys(_COUNTERS, 0.0)
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += float(sample.value)
    return out


def _figures(
    run: str, ttfts: list[float], before: list[dict[str, float]], after: list[dict[str, float]]
) -> dict[str, Any]:
    delta = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    hits = sum(d["vllm:prefix_cache_hits_total"] for d in delta)
    queries = sum(d["vllm:prefix_cache_queries_total"] for d in delta)
    tokens = [d["vllm:prompt_tokens_total"] + d["vllm:generation_tokens_total"] for d in delta]
    mean = statistics.fmean(tokens)
    return {
        f"ttft_ms_p50_{run}": percentile(ttfts, 0.5),
        f"ttft_ms_p90_{run}": percentile(ttfts, 0.9),
        f"ttft_ms_mean_{run}": round(statistics.fmean(ttfts), 2) if ttfts else None,
        f"prefix_hit_rate_{run}": round(hits / queries, 3) if queries else None,
        f"load_cv_{run}": round(statistics.pstdev(tokens) / mean, 3) if mean else None,
        f"tokens_per_server_{run}": [int(t) for t in tokens],
    }


if __name__ == "__main__":
    main()
