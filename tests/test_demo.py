"""wait_until (the one polling helper the end-to-end tests and benchmarks
share) and the demo's engine flags."""

import subprocess
import sys
from pathlib import Path

import pytest

from hexamesh.demo import AgentProcess, serve_flags, wait_until


def test_returns_the_first_truthy_result() -> None:
    calls = iter([None, 0, "", "ready", "later"])
    assert wait_until("a value", lambda: next(calls), 5.0, interval=0.001) == "ready"


def test_times_out_saying_what_it_waited_for_and_what_it_saw() -> None:
    with pytest.raises(TimeoutError, match=r"waiting for the comb: \[1, 2\]"):
        wait_until("the comb", lambda: False, 0.05, interval=0.01, show=lambda: [1, 2])


def test_fails_fast_when_an_agent_exits(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("boom: cannot bind\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    agent = AgentProcess(proc, tmp_path, log)
    with pytest.raises(RuntimeError, match=r"exited with 3:\nboom: cannot bind"):
        wait_until("never", lambda: False, 60.0, procs=[agent])


def test_on_a_gpu_the_demo_engines_share_the_card() -> None:
    model = Path("/tmp/tiny")
    assert serve_flags(model, 2, gpu=False) == ("--model", "tiny=/tmp/tiny")
    assert serve_flags(model, 2, gpu=True) == (
        "--model",
        "tiny=/tmp/tiny",
        "--gpu-share",
        "0.425",
    )
