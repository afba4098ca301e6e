"""`hexamesh chaos`: real agents SIGKILLed or frozen, the survivors notice, the victims return."""

import json
from pathlib import Path

import pytest

from tests.helpers import run_hexamesh

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("freeze", [False, True])
def test_chaos_kills_agents_and_times_the_swarm_noticing(tmp_path: Path, freeze: bool) -> None:
    done = run_hexamesh(
        "chaos",
        *(["--freeze"] if freeze else []),
        "--agents",
        "5",
        "--kill",
        "2",
        "--seed",
        "3",
        "--workdir",
        str(tmp_path),
        "--json",
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert (r["agents"], r["kill"], r["undetected"], r["not_back"]) == (5, 2, 0, 0)
    assert r["false_positives"] == 0 and r["never_clean"] == 0
    [round_] = r["per_round"]
    assert round_["how"] == ("SIGSTOP" if freeze else "SIGKILL")
    first, every = round_["detect_first_s"], round_["detect_all_s"]
    assert all(0 < f <= a < 30 for f, a in zip(first, every, strict=True))
    assert all(0 < b < 60 for b in round_["rejoin_all_s"])
    # Every agent was stopped on the way out: no agent.json left behind.
    assert not list(tmp_path.glob("agent*/agent.json"))


def test_chaos_refuses_impossible_rounds() -> None:
    done = run_hexamesh("chaos", "--agents", "3", "--kill", "2", timeout=30)
    assert done.returncode == 2 and "kill must be in 1..1" in done.stderr
