"""Serving end to end with real processes and real vLLM (CPU) on the tiny model:
three agents on 127.0.0.1, two of them with an engine. A prompt to the agent
without the model is served by one with it; a stream whose serving agent is
frozen (SIGSTOP: its connections stay open, nothing comes) goes on at the other
once the comb declares the frozen one dead, in seconds, not the relay's 60 s
stall timeout; then a burst of 50 streamed
requests and 20 jobs while the serving agent is SIGKILLed: every job completes,
every request completes or gets a clean error before its first token, none hangs.
Skipped where vLLM is not installed unless HEXAMESH_REQUIRE_VLLM=1 (CI)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hexamesh.demo import LOOPBACK, AgentProcess, joining, start_agent, wait_until
from tests.helpers import run_hexamesh

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("HEXAMESH_REQUIRE_VLLM") == "1":
        raise RuntimeError("HEXAMESH_REQUIRE_VLLM=1 but vllm is not importable")
    pytest.skip("vllm is not installed (pip install 'hexamesh[cpu]')", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

READY_TIMEOUT = 600  # s; two vLLM CPU servers starting at once on two cores


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def one_stream(client: httpx.AsyncClient, api: str, i: int) -> tuple[str, str]:
    """('ok', served-by) | ('error-before-first-token', status) ; anything else fails."""
    body = {
        "model": "tiny",
        "prompt": f"request {i}",
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
    }
    tokens = 0
    with trio.fail_after(180):  # "none hangs"
        async with client.stream("POST", f"{api}/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                assert "error" in r.json()
                return "error-before-first-token", str(r.status_code)
            finished = False
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                assert "error" not in event, f"stream broke after {tokens} tokens: {event}"
                tokens += 1
                finished = finished or bool(event["choices"][0].get("finish_reason"))
            assert finished, "stream ended without a finish_reason"
            return "ok", r.headers["x-hexamesh-served-by"]


async def stream_through_a_freeze(api: str, servers: dict[str, AgentProcess]) -> float:
    """A long stream whose server is SIGSTOPped at its first event (and left
    stopped); returns the longest silence the client saw."""
    body = {
        "model": "tiny",
        "prompt": "a frozen server",
        "max_tokens": 900,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    events, finished, gap, last = 0, False, 0.0, None
    frozen = None
    async with httpx.AsyncClient(timeout=httpx.Timeout(180, connect=5)) as client:
        with trio.fail_after(120):
            async with client.stream("POST", f"{api}/completions", json=body) as r:
                assert r.status_code == 200
                server = servers[r.headers["x-hexamesh-served-by"]]
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    now = trio.current_time()
                    gap = max(gap, now - last) if last is not None else 0.0
                    last = now
                    events += 1
                    if events == 1:
                        os.kill(server.proc.pid, signal.SIGSTOP)
                        frozen = server
                    finished = finished or bool(event["choices"][0].get("finish_reason"))
    assert frozen is not None, f"the stream ended after {events} events"
    assert finished, "the stream ended without a finish_reason"
    return gap


def frozen_server_outcome(api: str) -> tuple[float, float]:
    """(streams cut by a death verdict, streams continued), from the front's metrics."""
    text = httpx.get(api.removesuffix("/v1") + "/metrics", timeout=10).text
    return (
        metric(text, "hexamesh_requests_cut_by_verdict_total"),
        metric(text, "hexamesh_continuations_total"),
    )


def test_prompt_to_any_peer_a_frozen_server_and_sigkill_mid_burst(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    made = run_hexamesh("model", "make-tiny", str(tiny), timeout=300)
    assert made.returncode == 0, made.stderr
    front = start_agent(tmp_path / "a", *LOOPBACK)
    procs = [front]
    try:
        seed = front.wait_ready()["address"]
        join = joining(seed, tmp_path / "a" / "swarm.key")
        for name in ("b", "c"):
            procs.append(start_agent(tmp_path / name, *join, "--model", f"tiny={tiny}"))
        servers = {p.wait_ready()["node_id"]: p for p in procs[1:]}
        api = front.status()["api"]  # type: ignore[index]

        def both_listed() -> bool:
            try:
                data = httpx.get(f"{api}/models", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(m["id"] == "tiny" and m["servers"] == 2 for m in data)

        wait_until(
            "both engines ready and known to the front agent",
            both_listed,
            READY_TIMEOUT,
            interval=0.5,
            procs=procs,
        )

        # A prompt to the agent without the model: served by one with it, streamed.
        out = run_hexamesh("submit", "--peer", api, "--max-tokens", "8", "hello there", timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() and "served by" in out.stderr
        served = out.stderr.split("served by ")[1].split()[0]
        assert any(n.startswith(served) for n in servers)

        # A frozen server: the comb's verdict (a few seconds) cuts the stream,
        # the other server continues it. The freeze can land too late: next to
        # two vLLMs on two cores this client may read its first event only once
        # the server has sent all 900 (CI saw the whole stream end in 1.2 s,
        # untouched). Such a stream ends whole at the frozen server, nothing
        # cut or continued (a freeze that lands cuts it, or stalls it for the
        # relay's 60 s and then continues it): then it is tried again.
        for attempt in range(3):
            before = frozen_server_outcome(api)
            try:
                gap = trio.run(stream_through_a_freeze, api, servers)
            finally:
                for p in procs:  # SIGCONT: it finds itself declared dead and rejoins
                    if p.proc.poll() is None:
                        os.kill(p.proc.pid, signal.SIGCONT)
            after = frozen_server_outcome(api)
            cut, continued = after[0] - before[0], after[1] - before[1]
            print(f"frozen server, try {attempt}: longest silence {gap:.2f} s, cut {cut}")
            if cut or continued:
                break
        assert gap < 20, f"the stream stood still {gap:.1f} s (stall timeout: 60 s)"
        assert cut >= 1 and continued >= 1, (cut, continued)
        wait_until("the frozen agent back", both_listed, 120, interval=0.5, procs=procs)

        async def burst() -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]:
            results: list[tuple[str, str]] = []
            # the jobs are this credential's (the API is open: any bearer token)
            owner = {"authorization": "Bearer e2e-client"}
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(180, connect=5), headers=owner
            ) as client:
                job_ids = []
                for i in range(20):
                    r = await client.post(
                        f"{api}/jobs",
                        json={
                            "model": "tiny",
                            "prompt": f"job {i}",
                            "max_tokens": 16,
                            "id": f"job-{i}",
                            "temperature": 0,
                        },
                    )
                    assert r.status_code == 202, r.text
                    job_ids.append(r.json()["id"])

                async def run(i: int, limit: trio.CapacityLimiter) -> None:
                    async with limit:
                        results.append(await one_stream(client, api, i))

                async with trio.open_nursery() as nursery:
                    limit = trio.CapacityLimiter(10)
                    for i in range(50):
                        nursery.start_soon(run, i, limit)
                    # kill whichever engine agent has served the burst so far, mid-burst
                    while len(results) < 5:
                        await trio.sleep(0.05)
                    victim = max(servers, key=lambda n: sum(1 for _, s in results if s == n))
                    os.kill(servers[victim].proc.pid, signal.SIGKILL)
                jobs: dict[str, dict[str, Any]] = {}
                with trio.fail_after(300):
                    for jid in job_ids:
                        while True:
                            doc = (await client.get(f"{api}/jobs/{jid}")).json()
                            if doc["status"] in ("done", "failed"):
                                jobs[jid] = doc
                                break
                            await trio.sleep(0.2)
            return results, jobs

        results, jobs = trio.run(burst)
        assert len(results) == 50
        kinds = [k for k, _ in results]
        assert set(kinds) <= {"ok", "error-before-first-token"}
        assert kinds.count("ok") >= 40, results  # the survivor takes over
        assert all(doc["status"] == "done" for doc in jobs.values()), jobs
        assert all(doc["result"]["choices"][0]["text"] for doc in jobs.values())
        # Streams the kill cut off mid-answer (0-3 a run here) went on at the
        # survivor, whose vLLM counted the text they had (/tokenize) to keep
        # max_tokens: no agent fell back to the event bound.
        metrics = httpx.get(api.removesuffix("/v1") + "/metrics", timeout=10).text
        continued = metric(metrics, "hexamesh_continuations_total")
        logs = " ".join(" ".join(p.log_path.read_text(errors="replace").split()) for p in procs)
        assert "stays a bound" not in logs, f"{continued} continuations"
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.stop(grace=30)
