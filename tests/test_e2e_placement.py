"""Placement end to end with real processes and real vLLM (CPU) on the tiny model:
three agents, none serving anything; `hexamesh place` (with the admin key) at
the one that takes no placements, which keeps the operator key, elects one of
the other two (which trust that key and take placements), which starts vLLM;
a prompt to the proposer is then served by the winner (that a full agent is
passed over is tested with a stand-in engine in tests/placement/test_service.py).
Skipped where vLLM is not installed unless HEXAMESH_REQUIRE_VLLM=1 (CI)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import httpx
import pytest

from hexamesh.demo import LOOPBACK, joining, start_agent, wait_until
from tests.helpers import run_hexamesh

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("HEXAMESH_REQUIRE_VLLM") == "1":
        raise RuntimeError("HEXAMESH_REQUIRE_VLLM=1 but vllm is not importable")
    pytest.skip("vllm is not installed (pip install 'hexamesh[cpu]')", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

READY_TIMEOUT = 300  # s; one vLLM CPU server starting on two cores
ADMIN = "e2e-admin-key"  # the proposer's admin key


def test_a_vote_places_the_tiny_model_and_the_winner_serves_it(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    made = run_hexamesh("model", "make-tiny", str(tiny), timeout=300)
    assert made.returncode == 0, made.stderr
    operator = run_hexamesh("swarm", "operator-key", "--data-dir", str(tmp_path / "a"))
    assert operator.returncode == 0, operator.stderr
    trust = ("--trust-operator", operator.stdout.strip())
    front = start_agent(tmp_path / "a", *LOOPBACK, env={"HEXAMESH_ADMIN_KEYS": ADMIN})
    procs = [front]
    try:
        join = joining(front.wait_ready()["address"], tmp_path / "a" / "swarm.key")
        takes = ("--accept-placements", "--placement-source", f"{tmp_path}/*", *trust)
        procs += [start_agent(tmp_path / n, *join, *takes) for n in ("b", "c")]
        nodes = {p.wait_ready()["node_id"] for p in procs[1:]}
        api = front.status()["api"]  # type: ignore[index]

        def linked() -> bool:
            states = [p.status() or {} for p in procs]
            return all(s.get("cell") and len(s.get("alive", [])) >= 2 for s in states)

        wait_until("three agents linked", linked, 60, procs=procs)
        vote = run_hexamesh(
            "place", "tiny", "--source", str(tiny), "--peer", api, "--ttl", "10", timeout=60,
            env={"HEXAMESH_ADMIN_KEY": ADMIN},
        )  # fmt: skip
        assert vote.returncode == 0, vote.stderr
        assert "3 scouts, quorum 2" in vote.stdout and "placed 1 of 1" in vote.stdout
        winner = next(n for n in nodes if n[:16] in vote.stdout)

        def served() -> bool:
            try:
                data = httpx.get(f"{api}/models", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(m["id"] == "tiny" and m["servers"] == 1 for m in data)

        wait_until("the winner's vLLM ready", served, READY_TIMEOUT, interval=0.5, procs=procs)
        # its vLLM takes the winner's own requests only, on any path that runs the model
        engine = next(
            m["url"] for p in procs[1:] for m in ((p.status() or {}).get("models") or {}).values()
            if m.get("url")
        )  # fmt: skip
        for path in ("/v1/completions", "/invocations"):
            r = httpx.post(f"{engine}{path}", json={"model": "tiny", "prompt": "x"}, timeout=30)
            assert r.status_code == 401, (path, r.text)
        out = run_hexamesh("submit", "--peer", api, "--max-tokens", "8", "hello", timeout=120)
        assert out.returncode == 0, out.stderr
        assert f"served by {winner[:12]}" in out.stderr
    finally:
        for p in procs:
            p.stop()
