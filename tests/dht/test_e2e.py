"""Three agent processes on 127.0.0.1 form a DHT; store through one, read through another."""

from pathlib import Path

import pytest

from hexamesh.demo import AgentProcess, start_local_swarm, wait_until
from tests.helpers import run_hexamesh

pytestmark = pytest.mark.e2e


hexamesh = run_hexamesh


def test_three_agents_store_through_one_and_read_through_another(tmp_path: Path) -> None:
    procs: list[AgentProcess] = []
    try:
        procs.extend(start_local_swarm(tmp_path, 3))
        key = str(tmp_path / "agent0" / "swarm.key")
        addrs = [p.wait_ready()["address"] for p in procs]
        wait_until(
            "the agents to meet",
            lambda: all((p.status() or {}).get("dht_contacts", 0) >= 2 for p in procs),
            20.0,
        )

        put = hexamesh(
            "dht", "put", "job:e2e", "hello from a", "--join", addrs[0], "--swarm-key", key
        )
        assert put.returncode == 0, put.stderr
        assert "stored job:e2e on" in put.stdout

        got = hexamesh("dht", "get", "job:e2e", "--join", addrs[2], "--swarm-key", key)
        assert got.returncode == 0, got.stderr
        assert "hello from a" in got.stdout

        missing = hexamesh("dht", "get", "job:nope", "--join", addrs[1], "--swarm-key", key)
        assert missing.returncode == 2 and "not found" in missing.stderr
        bad = hexamesh("dht", "put", "nokind", "x", "--join", addrs[1], "--swarm-key", key)
        assert bad.returncode == 2 and "unknown key type" in bad.stderr
    finally:
        for p in procs:
            p.stop()
    # Each agent saved its DHT contacts on the way out, for a restart without seeds.
    assert (tmp_path / "agent1" / "contacts.json").exists()
