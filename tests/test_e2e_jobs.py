"""Full-size durable jobs across real agent processes, through three deaths.

Five agents on 127.0.0.1: A accepts the jobs (no engine), S1 and S2 serve
the model (the stand-in engine, each answer held 3 s), H and R hold records
and blobs like any member. Three jobs of a ~100 KB prompt and a ~20 KB
answer are submitted at A; the server running them is SIGKILLed mid-run
(they fail over to the other); when they are done A is SIGKILLed, then one
agent that holds a result; R collects every answer whole.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from hexamesh.demo import LOOPBACK, AgentProcess, joining, start_agent, wait_until
from hexamesh.serve.blobs import BlobRef

pytestmark = pytest.mark.e2e

PROMPT = "p " * 50_000  # 100 KB
TOKENS = 5000  # the stand-in answers "tok " per token: 20 KB
OWNER = {"authorization": "Bearer owner-of-the-jobs"}  # an open API: any token owns
FAKE = ("--engine-module", "tests.engine.fake_vllm")


def _job_state(api: str, jid: str) -> dict[str, object] | None:
    try:
        r = httpx.get(f"{api}/jobs/{jid}", headers=OWNER, timeout=10)
    except httpx.HTTPError:
        return None
    return dict(r.json()) if r.status_code == 200 else None


def test_full_size_jobs_survive_the_server_the_acceptor_and_a_holder(tmp_path: Path) -> None:
    env = {"FAKE_VLLM_DELAY": "3", "PYTHONPATH": str(Path(__file__).parent.parent)}
    model = tmp_path / "model"  # the stand-in engine reads nothing from it
    model.mkdir()
    a = start_agent(tmp_path / "a", *LOOPBACK, *FAKE, env=env)
    agents: dict[str, AgentProcess] = {"a": a}
    try:
        seed = a.wait_ready()["address"]
        join = joining(seed, tmp_path / "a" / "swarm.key")
        for name in ("s1", "s2"):
            agents[name] = start_agent(
                tmp_path / name, *join, *FAKE, "--model", f"tiny={model}", env=env
            )
        for name in ("h", "r"):
            agents[name] = start_agent(tmp_path / name, *join, *FAKE, env=env)
        nodes = {name: p.wait_ready()["node_id"] for name, p in agents.items()}
        api = {name: str(p.status()["api"]) for name, p in agents.items()}  # type: ignore[index]

        def served_by_both(name: str) -> bool:
            try:
                data = httpx.get(f"{api[name]}/models", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(m["id"] == "tiny" and m["servers"] == 2 for m in data)

        for name in ("a", "r"):
            wait_until(f"{name} to see both servers", lambda n=name: served_by_both(n), 90)
        jids = [f"big-{i}" for i in range(3)]
        for jid in jids:
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": TOKENS, "id": jid}
            r = httpx.post(f"{api['a']}/jobs", json=body, headers=OWNER, timeout=60)
            assert r.status_code == 202, r.text

        # mid-run: the server with the most requests running dies
        wait_until(
            "the jobs to run",
            lambda: all((_job_state(api["a"], j) or {}).get("status") == "running" for j in jids),
            30,
        )
        wait_until(
            "a server to be answering them",
            lambda: _running(agents["s1"]) + _running(agents["s2"]) > 0,
            30,
        )
        busiest = max(("s1", "s2"), key=lambda s: _running(agents[s]))
        os.kill(agents[busiest].proc.pid, signal.SIGKILL)

        def all_done() -> bool:
            return all((_job_state(api["a"], j) or {}).get("status") == "done" for j in jids)

        wait_until("every job done after the server's death", all_done, 120)
        # after completion: the acceptor dies, then a member holding a result
        refs = _result_refs(tmp_path / "a" / "jobs.sqlite", jids)
        os.kill(a.proc.pid, signal.SIGKILL)
        by_node = {node: name for name, node in nodes.items()}
        holders = {by_node.get(h.hex()) for ref in refs.values() for h in ref.holders}
        victim = next(n for n in ("h", "s1", "s2") if n in holders and n != busiest)
        os.kill(agents[victim].proc.pid, signal.SIGKILL)
        for jid in jids:
            doc = wait_until(
                f"{jid} collected at r",
                lambda jid=jid: _done(_job_state(api["r"], jid)),
                60,
            )
            text = doc["result"]["choices"][0]["text"]  # type: ignore[index]
            assert text == "tok " * TOKENS, f"{jid}: {len(text)} bytes"
    finally:
        for p in agents.values():
            if p.proc.poll() is None:
                p.stop(grace=10)


def _running(agent: AgentProcess) -> float:
    """Requests the agent's engine is answering now (the stand-in counts them)."""
    model = ((agent.status() or {}).get("models") or {}).get("tiny") or {}
    try:
        text = httpx.get(f"{model['url']}/metrics", timeout=5).text
    except (KeyError, httpx.HTTPError):
        return 0.0
    for line in text.splitlines():
        if line.startswith("fake_vllm_answering"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _done(doc: dict[str, object] | None) -> dict[str, object] | None:
    return doc if doc is not None and doc.get("status") == "done" else None


def _result_refs(db: Path, jids: list[str]) -> dict[str, BlobRef]:
    """The result blobs' refs, from the acceptor's own store (read before it dies)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT id, result_ref FROM jobs WHERE id IN ({','.join('?' * len(jids))})", jids
        ).fetchall()
    return {jid: BlobRef.from_doc(json.loads(ref)) for jid, ref in rows}


def test_the_batch_api_on_real_agents(tmp_path: Path) -> None:
    """Files and batches go through the real DHT (its key kinds, its
    replication) and blobs between processes: the official client's calls,
    made as plain HTTP, from upload to output, read at another agent."""
    model = tmp_path / "model"
    model.mkdir()
    env = {"PYTHONPATH": str(Path(__file__).parent.parent)}
    a = start_agent(tmp_path / "a", *LOOPBACK, *FAKE, env=env)
    agents = [a]
    try:
        seed = a.wait_ready()["address"]
        join = joining(seed, tmp_path / "a" / "swarm.key")
        agents.append(
            start_agent(tmp_path / "s", *join, *FAKE, "--model", f"tiny={model}", env=env)
        )
        agents.append(start_agent(tmp_path / "b", *join, *FAKE, env=env))
        for p in agents:
            p.wait_ready()
        api_a, api_b = (str(p.status()["api"]) for p in (a, agents[2]))  # type: ignore[index]

        def served(api: str) -> bool:
            try:
                data = httpx.get(f"{api}/models", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(m["id"] == "tiny" for m in data)

        wait_until("a to see the server", lambda: served(api_a), 90)
        rows = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "tiny", "prompt": "x", "max_tokens": i + 1},
            }
            for i in range(5)
        ]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        with httpx.Client(headers=OWNER, timeout=30) as client:
            r = client.post(f"{api_a}/files", files={"file": data}, data={"purpose": "batch"})
            assert r.status_code == 200, r.text
            ask = {"input_file_id": r.json()["id"], "endpoint": "/v1/completions"}
            r = client.post(f"{api_a}/batches", json=ask)
            assert r.status_code == 200, r.text
            bid = r.json()["id"]

            def finished() -> dict[str, Any] | None:
                r = client.get(f"{api_b}/batches/{bid}")  # any agent answers
                doc: dict[str, Any] = r.json() if r.status_code == 200 else {}
                return doc if doc.get("status") == "completed" else None

            batch = wait_until("the batch to complete", finished, 60)
            assert batch is not None
            assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
            out = client.get(f"{api_b}/files/{batch['output_file_id']}/content")
            lines = [json.loads(t) for t in out.text.splitlines()]
            texts = {x["custom_id"]: x["response"]["body"]["choices"][0]["text"] for x in lines}
            assert texts == {f"r{i}": "tok " * (i + 1) for i in range(5)}
    finally:
        for p in agents:
            p.stop(grace=10)
