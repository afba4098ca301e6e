"""Forwarding overhead: the same streaming workload straight to vLLM and through the mesh.

    python -m simulations.overhead --json [--model DIR] [--tokens 128] [--rounds 5]

Starts two agents on 127.0.0.1: B serves the tiny model with vLLM, A has no
engine. The workload (completions of ``--tokens`` tokens, EOS ignored,
streamed; the lean client of ``simulations.loadgen``, tokens counted by
vLLM's ``usage``) runs at concurrency 1 and 16 against three targets, alternating so
drift hits them alike: ``direct`` (B's vLLM port), ``mesh`` (A's API: A
forwards one hop to B, which relays from its vLLM) and ``local`` (B's own API:
one relay). Throughputs are medians over ``--rounds`` rounds; ``ratio`` (mesh
/ direct at 16) and ``ratio_c1`` (at 1) are medians of each round's ratio
(runs of one round are next to each other in time, so drift cancels).

vLLM's engine (its engine core and worker) is pinned to the cores vLLM's CPU
build binds its worker to, everything else (vLLM's frontend, the agents,
this load generator) to the others (``--no-isolate-engine`` leaves them
anywhere: then throughput swings by 2x and more between rounds, see
``_isolate_engine`` and docs/reports/serving.md).

``fwd_cpu_us_per_token``: CPU time of agent A's process (all its threads, its
background work too) during its mesh runs over the tokens it streamed, over
both levels and per level.

Time to first token added: ``--ttft-pairs`` single short requests on the idle
swarm, direct and mesh back to back, the difference taken per pair (p50/p99,
ms). ``ttft_added_ms_p50_c16`` pairs the sorted TTFTs of the c16 runs instead.
``encrypted``: A's forwards reached B in the peer channel (Noise handshake,
ChaCha20-Poly1305 records; plain HTTP is refused on the peer port), read
from B's count of channels accepted (``peer_channels``).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import trio

from hexamesh.demo import LOOPBACK, joining, start_agent, wait_until
from simulations.common import cpu_seconds, emit, percentile
from simulations.loadgen import closed_loop, ttft_added, workload

READY_TIMEOUT = 600.0  # s for vLLM to start
TTFT_TOKENS = 4  # tokens per request of the TTFT pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: make the tiny model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--c1-requests", type=int, default=12)
    parser.add_argument("--c16-requests", type=int, default=64)
    parser.add_argument("--ttft-pairs", type=int, default=30)
    parser.add_argument(
        "--isolate-engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin vLLM's engine to its worker's cores and everything else to the others",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--workdir", type=Path, help="keep the agents' data and logs here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hexamesh-overhead-") as tmp:
        work = args.workdir or Path(tmp)
        model = args.model
        if model is None:
            from hexamesh.engine.tiny import make_tiny_model

            model = make_tiny_model(work / "tiny")
        b = start_agent(work / "b", *LOOPBACK, "--model", f"tiny={model}")
        agents = [b]
        try:
            seed = b.wait_ready()["address"]
            a = start_agent(work / "a", *joining(seed, work / "b" / "swarm.key"))
            agents.append(a)
            a.wait_ready()

            def ready() -> str | None:
                st = b.status() or {}
                m = st.get("models", {}).get("tiny", {})
                return m.get("url") if m.get("state") == "ready" else None

            direct = str(wait_until("vLLM to be ready", ready, READY_TIMEOUT, interval=0.5))
            mesh = str(a.status()["api"]).removesuffix("/v1")  # type: ignore[index]
            local = str(b.status()["api"]).removesuffix("/v1")  # type: ignore[index]
            wait_until(
                "A to see B's model",
                lambda: "tiny" in (a.status() or {}).get("models", {}) or _peers_know(a),
                60,
                interval=0.5,
            )
            isolated = args.isolate_engine and _isolate_engine(
                b.proc.pid, [a.proc.pid, b.proc.pid, os.getpid()]
            )
            result = trio.run(_measure, direct, mesh, local, a.proc.pid, args)
            result["engine_isolated"] = isolated
            # forwards reach B only in the peer channel (plain HTTP is refused there):
            # B's count of channels accepted says A's forwards used it
            accepted = _metric(local, "hexamesh_peer_channels_accepted_total")
            result["encrypted"] = accepted > 0
            result["peer_channels"] = accepted
        finally:
            for agent in agents:
                agent.stop(grace=30)
    emit(result, quiet=args.json)


ENGINE_PREFIX = "VLLM::"  # vLLM's engine processes' names: VLLM::EngineCore, VLLM::Worker


def _metric(base: str, name: str) -> float:
    """One sample of an agent's /metrics (0 if absent)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def _threads(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    return []


def _is_engine(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().startswith(ENGINE_PREFIX)
    return False


def _isolate_engine(engine_agent: int, others: list[int]) -> bool:
    """Give vLLM's engine the cores its worker is bound to, and everything
    else (vLLM's API frontend, the agents ``others``, this load generator)
    the rest; False if the engine is not bound (nothing is pinned then).

    vLLM's CPU build binds its worker's OpenMP threads (here to CPU 0) and
    leaves every other process anywhere, its engine core too: the scheduler
    process that feeds the worker and busy-waits on it. Left anywhere it
    lands on either CPU from run to run, and throughput swings by 2x (one run
    of six c16 rounds: 921-1,795 tok/s, the engine core's CPU per token
    bimodal); the agents and the load generator, left anywhere, preempt the
    worker on its own core. Pinned so, the engine has its core to itself, as
    on a GPU server, where the engine's work is not on a CPU at all, and the
    front doors compete only with vLLM's frontend.
    """
    everything = os.sched_getaffinity(0)
    vllm = _descendants(engine_agent)
    engine: set[int] = set()
    for pid in vllm:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                mask = os.sched_getaffinity(tid)
                if mask < everything:
                    engine |= mask
    free = everything - engine
    if not engine or not free:
        return False
    for pid in [*vllm, *others]:
        on_engine = pid in vllm and _is_engine(pid)
        for tid in _threads(pid):
            with contextlib.suppress(OSError):
                if not on_engine:
                    os.sched_setaffinity(tid, free)
                elif os.sched_getaffinity(tid) == everything:  # the engine core's threads
                    os.sched_setaffinity(tid, engine)
    return True


def _peers_know(a: Any) -> bool:
    import httpx

    try:
        api = a.status()["api"]
        data = httpx.get(f"{api}/models", timeout=5).json()["data"]
    except Exception:
        return False
    return any(m["id"] == "tiny" for m in data)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def _measure(direct: str, mesh: str, local: str, a_pid: int, args: Any) -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    cpu_s = {1: 0.0, 16: 0.0}  # agent A's CPU during the mesh runs, by concurrency
    mesh_tokens = {1: 0, 16: 0}
    reconnects = 0  # kept-alive connections a server had closed (uvicorn: idle 5 s)
    targets = [("direct", direct), ("mesh", mesh), ("local", local)]
    request = workload(args.tokens)
    await closed_loop(direct, 4, 8, **request)  # warm-up: vLLM's first requests compile, allocate
    await closed_loop(mesh, 4, 8, **request)
    for round_no in range(args.rounds):
        for conc, n in ((1, args.c1_requests), (16, args.c16_requests)):
            got: dict[str, dict[str, Any]] = {}
            # rotate the order each round: drift and warm caches hit every target alike
            for name, base in targets[round_no % 3 :] + targets[: round_no % 3]:
                before = cpu_seconds(a_pid)
                got[name] = await closed_loop(base, conc, n, **request)
                reconnects += got[name]["reconnects"]
                if name == "mesh":
                    cpu_s[conc] += cpu_seconds(a_pid) - before
                    mesh_tokens[conc] += got[name]["tokens"]
                runs.setdefault((name, conc), []).append(got[name])
            for name in ("mesh", "local"):
                ratios.setdefault((name, conc), []).append(
                    got[name]["tok_s"] / got["direct"]["tok_s"]
                )

    # Time to first token added, measured apart: single requests on an idle
    # swarm, direct and mesh back to back, the difference taken per pair (the
    # throughput runs' TTFTs swing by tens of ms with vLLM's batching).
    pairs = await ttft_added(
        direct, mesh, args.ttft_pairs, warm=2, pause=0.05, **workload(TTFT_TOKENS)
    )

    def tok_s(name: str, conc: int) -> float:
        return round(_median([r["tok_s"] for r in runs[(name, conc)]]), 1)

    def ttfts(name: str, conc: int) -> list[float]:
        return sorted(t for r in runs[(name, conc)] for t in r["ttfts"])

    def per_token(*levels: int) -> float:
        spent = sum(cpu_s[c] for c in levels)
        return round(spent / max(sum(mesh_tokens[c] for c in levels), 1) * 1e6, 1)

    def added(conc: int) -> list[float]:
        return [m - d for m, d in zip(ttfts("mesh", conc), ttfts("direct", conc), strict=False)]

    return {
        "direct_tok_s": tok_s("direct", 16),
        "mesh_tok_s": tok_s("mesh", 16),
        "local_tok_s": tok_s("local", 16),
        "ratio": round(_median(ratios[("mesh", 16)]), 3),
        "ratio_c1": round(_median(ratios[("mesh", 1)]), 3),
        "ratio_local": round(_median(ratios[("local", 16)]), 3),
        "ratio_rounds": [round(r, 3) for r in ratios[("mesh", 16)]],
        "ratio_c1_rounds": [round(r, 3) for r in ratios[("mesh", 1)]],
        "direct_tok_s_c1": tok_s("direct", 1),
        "mesh_tok_s_c1": tok_s("mesh", 1),
        "ttft_direct_ms_p50": percentile(ttfts("direct", 1), 0.5),
        "ttft_added_ms_p50": percentile(pairs, 0.5),
        "ttft_added_ms_p99": percentile(pairs, 0.99),
        "ttft_added_ms_p50_c1_runs": percentile(added(1), 0.5),
        "ttft_added_ms_p50_c16": percentile(added(16), 0.5),
        "fwd_cpu_us_per_token": per_token(1, 16),
        "fwd_cpu_us_per_token_c16": per_token(16),
        "fwd_cpu_us_per_token_c1": per_token(1),
        "tokens_per_request": args.tokens,
        "client_reconnects": reconnects,
        "rounds": args.rounds,
    }


if __name__ == "__main__":
    main()
