"""A local demo swarm: real agent processes on 127.0.0.1, shown live.

The first agent founds the swarm (and writes its key); the others join it
with that key. Each agent is a separate ``python -m hexamesh agent`` process
that keeps ``<data_dir>/agent.json`` current; the demo reads those files and
shows a table until Ctrl-C or ``duration``. On exit every child gets SIGTERM,
then SIGKILL after a grace period, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hexamesh.agent import STATUS_FILE_NAME
from hexamesh.comb.render import hex_map
from hexamesh.comb.service import fetch_view
from hexamesh.net.base import parse_addr
from hexamesh.swarmkey import load_key_file
from hexamesh.wire import KeyRing

__all__ = ["AgentProcess", "run_demo", "start_agent", "start_local_swarm"]

START_TIMEOUT = 20.0  # s for an agent to bind and write agent.json
STOP_GRACE = 5.0  # s between SIGTERM and SIGKILL


class AgentProcess:
    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.log_path = log_path

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.data_dir / STATUS_FILE_NAME).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("pid") == self.proc.pid else None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None:
                return status
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"agent not ready after {timeout} s; see {self.log_path}")

    def stop(self, grace: float = STOP_GRACE) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
    """Start ``hexamesh agent`` as a child process logging to ``data_dir/agent.log``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STATUS_FILE_NAME).unlink(missing_ok=True)
    log_path = data_dir / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hexamesh", "agent", "--data-dir", str(data_dir), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # many agents on one machine: any free API port unless told (agent.json says which)
            env={"HEXAMESH_API_PORT": "0", **os.environ, **(env or {}), "COLUMNS": "200"},
        )
    return AgentProcess(proc, data_dir, log_path)


def start_local_swarm(workdir: Path, n: int, *extra: str) -> list[AgentProcess]:
    """``n`` agents on 127.0.0.1 in ``workdir/agent0..``: the first founds the
    swarm (and is waited for), the others join it with its key. ``extra``
    flags go to every agent."""
    local = ("--host", "127.0.0.1", "--port", "0", *extra)
    procs = [start_agent(workdir / "agent0", *local)]
    try:
        seed = procs[0].wait_ready()["address"]
        key = str(workdir / "agent0" / "swarm.key")
        for i in range(1, n):
            procs.append(
                start_agent(workdir / f"agent{i}", *local, "--join", seed, "--swarm-key", key)
            )
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def _table(agents: list[AgentProcess]) -> Table:
    table = Table(title="hexamesh demo swarm")
    columns = ("agent", "node id", "address", "cell", "links", "alive/dead", "rtt to seed", "pid")
    for column in columns:
        table.add_column(column)
    for i, agent in enumerate(agents):
        s = agent.status()
        if s is None:
            state = "exited" if agent.proc.poll() is not None else "starting"
            table.add_row(str(i), state, "", "", "", "", "", str(agent.proc.pid))
            continue
        rtts = [f"{v:.2f} ms" if v is not None else "waiting" for v in s["seeds"].values()]
        table.add_row(
            str(i),
            s["node_id"][:16] + "…",
            s["address"],
            s["cell"] or "pending",
            str(len(s.get("neighbours", []))),
            f"{len(s.get('alive', []))}/{len(s.get('dead', []))}",
            ", ".join(rtts) or "(founder)",
            str(s["pid"]),
        )
    return table


def _comb_map(ring: KeyRing, addr: str) -> RenderableType:
    """The comb as the founder sees it (the same map as ``hexamesh peers``)."""
    try:
        view = trio.run(fetch_view, ring, parse_addr(addr), 1.0)
    except TimeoutError as e:
        return Text(f"comb map: {e}", style="dim")
    return hex_map(view)


def run_demo(console: Console, *, agents: int, duration: float | None, workdir: Path) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    procs: list[AgentProcess] = []
    try:
        procs.extend(start_local_swarm(workdir, agents))
        seed = procs[0].wait_ready()["address"]
        key = str(workdir / "agent0" / "swarm.key")
        for p in procs:
            p.wait_ready()
        console.print(f"[green]{agents} agents up[/]; logs in {workdir}/agent*/agent.log")
        deadline = None if duration is None else time.monotonic() + duration
        ring = load_key_file(Path(key))
        with Live(_table(procs), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(Group(_table(procs), _comb_map(ring, seed)))
        return 0
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        return 1
    finally:
        codes = [p.stop() for p in procs]
        console.print(f"stopped {len(codes)} agents (exit codes {codes})")
