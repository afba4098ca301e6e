"""Real agent processes on 127.0.0.1: start, join, ping, stop by signal."""

import functools
import os
import signal
import time
from pathlib import Path

import pytest

from hexamesh.demo import LOOPBACK, joining, start_agent
from tests.helpers import run_hexamesh

pytestmark = pytest.mark.e2e


hexamesh = functools.partial(run_hexamesh, timeout=30)


def test_agents_join_answer_pings_and_stop_cleanly_on_sigterm(tmp_path: Path) -> None:
    founder = start_agent(tmp_path / "a", *LOOPBACK)
    joiner = None
    try:
        seed = founder.wait_ready()["address"]
        key = str(tmp_path / "a" / "swarm.key")
        joiner = start_agent(tmp_path / "b", *joining(seed, key))
        status = joiner.wait_ready()
        assert status["cell"] is None and status["node_id"] != founder.status()["node_id"]  # type: ignore[index]
        deadline = time.monotonic() + 15
        while (joiner.status() or {}).get("seeds", {}).get(seed) is None:
            assert time.monotonic() < deadline, "joiner never reached its seed"
            time.sleep(0.1)

        ok = hexamesh("ping", seed, "--count", "2", "--swarm-key", key)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.count("rtt") == 2

        (tmp_path / "other").mkdir()
        hexamesh("swarm", "init", "--data-dir", str(tmp_path / "other"))
        wrong = hexamesh("ping", seed, "--count", "1", "--data-dir", str(tmp_path / "other"))
        assert wrong.returncode == 2 and "no answer" in wrong.stderr
    finally:
        codes = [p.stop() for p in (founder, joiner) if p is not None]
    assert codes == [0, 0][: len(codes)]
    assert not (tmp_path / "a" / "agent.json").exists()


def test_agent_refuses_a_world_readable_node_key(tmp_path: Path) -> None:
    founder = start_agent(tmp_path / "a", *LOOPBACK)
    founder.wait_ready()
    founder.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert founder.proc.wait(10) == 0
    os.chmod(tmp_path / "a" / "node.key", 0o644)
    result = hexamesh(
        "agent", "--data-dir", str(tmp_path / "a"), "--host", "127.0.0.1", "--port", "0"
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr
