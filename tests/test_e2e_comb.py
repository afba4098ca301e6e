"""Seven real agent processes on 127.0.0.1 form a comb (a centre and its ring);
SIGKILL one and the others agree it is dead; it comes back and is believed."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hexamesh.demo import AgentProcess, joining, start_agent, start_local_swarm, wait_until
from hexamesh.hexgrid import ORIGIN, Hex, spiral
from tests.helpers import run_hexamesh

pytestmark = pytest.mark.e2e


def wait(what: str, check: Callable[[], bool], timeout: float = 20.0, **kw: Any) -> float:
    """Poll ``check`` (see ``wait_until``); return how long it took."""
    start = time.monotonic()
    wait_until(what, check, timeout, **kw)
    return time.monotonic() - start


def status(p: AgentProcess) -> dict:  # type: ignore[type-arg]
    return p.status() or {}


def test_seven_agents_form_a_comb_and_agree_on_a_death(tmp_path: Path) -> None:
    procs: list[AgentProcess] = []
    try:
        procs.extend(start_local_swarm(tmp_path, 7))
        seed = procs[0].wait_ready()["address"]
        key = str(tmp_path / "agent0" / "swarm.key")
        join = joining(seed, key)
        ids = [p.wait_ready()["node_id"] for p in procs]

        # A compact comb: the centre and its ring, each cell owned once.
        wait("every agent to take a cell", lambda: all(status(p).get("cell") for p in procs))

        def cells_now() -> list[Hex]:
            return [Hex.parse(status(p).get("cell") or "99,99") for p in procs]

        # Agents joining at once may claim one cell twice; the younger claim
        # moves (as the design says), so the comb settles compact, not at once.
        wait(
            "the comb to settle as a centre and its ring",
            lambda: sorted(cells_now()) == sorted(spiral(ORIGIN, 1)),
            show=cells_now,
        )
        cells = cells_now()
        centre = procs[cells.index(ORIGIN)]
        wait("the centre to link its ring", lambda: len(status(centre)["neighbours"]) == 6)
        wait(
            "every ring agent to link the centre and two ring neighbours",
            lambda: all(len(status(p)["neighbours"]) == 3 for p in procs if p is not centre),
        )

        peers = run_hexamesh("peers", "--data-dir", str(tmp_path / "agent0"), "--json")
        assert peers.returncode == 0, peers.stderr
        view = json.loads(peers.stdout)
        assert sorted(c["node"] for c in view["cells"]) == sorted(ids)

        # SIGKILL a ring agent: no goodbye. Every survivor holds it dead.
        victim = next(i for i, p in enumerate(procs) if p is not centre)
        procs[victim].proc.kill()
        procs[victim].proc.wait()
        survivors = [p for i, p in enumerate(procs) if i != victim]
        took = wait(
            "every survivor to hold the victim dead",
            lambda: all(ids[victim] in status(p).get("dead", []) for p in survivors),
        )
        print(f"all survivors held the victim dead after {took:.2f} s")
        assert took < 15.0
        # The survivors next to the hole relinked around it.
        assert all(ids[victim] not in status(p)["neighbours"] for p in survivors)

        # It comes back (same node key, same data): rejoins with a new incarnation.
        procs[victim] = start_agent(tmp_path / f"agent{victim}", *join)
        procs[victim].wait_ready()
        wait(
            "the swarm to believe the victim alive again",
            lambda: (
                all(ids[victim] not in status(p).get("dead", []) for p in survivors)
                and ids[victim] in status(centre)["neighbours"]
            ),
            timeout=30.0,
        )
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0] * len(procs)
