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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hexamesh.agent import STATUS_FILE_NAME
from hexamesh.comb.render import hex_map
from hexamesh.comb.service import fetch_view
from hexamesh.engine.device import GPU_SHARE, detect_device
from hexamesh.net.base import parse_addr
from hexamesh.swarmkey import load_key_file
from hexamesh.wire import KeyRing

__all__ = [
    "LOOPBACK",
    "AgentProcess",
    "joining",
    "run_demo",
    "start_agent",
    "start_local_swarm",
    "wait_until",
]

START_TIMEOUT = 20.0  # s for an agent to bind and write agent.json
STOP_GRACE = 5.0  # s between SIGTERM and SIGKILL
LOOPBACK = ("--host", "127.0.0.1", "--port", "0")  # agent flags: any free port on 127.0.0.1

T = TypeVar("T")


class AgentProcess:
    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, log_path: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.log_path = log_path
        self._terminated = False

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

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: it releases its cell and leaves); ``stop`` waits.

        Once only: a second SIGTERM arriving while the agent shuts down would
        kill it outright (trio re-delivers signals pending at exit)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.1,
    procs: Iterable[AgentProcess] = (),
    show: Callable[[], object] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    Fails fast if one of ``procs`` exits (with the tail of its log), and on
    timeout says what it waited for and, with ``show``, what it saw instead."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        for p in procs:
            if p.proc.poll() is not None:
                tail = p.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"agent exited with {p.proc.returncode}:\n{tail}")
        if time.monotonic() >= deadline:
            seen = f": {show()}" if show is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(interval)


def start_agent(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    preexec: Callable[[], None] | None = None,
) -> AgentProcess:
    """Start ``hexamesh agent`` as a child process logging to ``data_dir/agent.log``;
    ``prefix`` runs it another way (``netns.Host.run_prefix``: on another host),
    ``preexec`` runs in the child before it starts (a lowered limit)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STATUS_FILE_NAME).unlink(missing_ok=True)
    log_path = data_dir / "agent.log"
    with open(log_path, "ab") as log:  # a restart (chaos) adds to it
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "hexamesh",
                "agent",
                "--data-dir",
                str(data_dir),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # many agents on one machine: any free API port unless told (agent.json says which)
            env={"HEXAMESH_API_PORT": "0", **os.environ, **(env or {}), "COLUMNS": "200"},
            # Ctrl-C reaches only the parent, which stops its agents in order.
            start_new_session=True,
            preexec_fn=preexec,
        )
    return AgentProcess(proc, data_dir, log_path)


def joining(seed: str, key: Path | str) -> tuple[str, ...]:
    """Flags for an agent on 127.0.0.1 that joins ``seed`` with the swarm key file ``key``."""
    return (*LOOPBACK, "--join", seed, "--swarm-key", str(key))


def start_local_swarm(
    workdir: Path, n: int, *extra: str, per_agent: dict[int, tuple[str, ...]] | None = None
) -> list[AgentProcess]:
    """``n`` agents on 127.0.0.1 in ``workdir/agent0..``: the first founds the
    swarm (and is waited for), the others join it with its key. ``extra``
    flags go to every agent, ``per_agent[i]`` to agent i only."""
    own = per_agent or {}
    procs = [start_agent(workdir / "agent0", *LOOPBACK, *extra, *own.get(0, ()))]
    try:
        join = joining(procs[0].wait_ready()["address"], workdir / "agent0" / "swarm.key")
        for i in range(1, n):
            procs.append(start_agent(workdir / f"agent{i}", *join, *extra, *own.get(i, ())))
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def _table(agents: list[AgentProcess]) -> Table:
    table = Table(title="hexamesh demo swarm")
    columns = ("agent", "node id", "address", "cell", "links", "alive/dead", "models", "api", "pid")
    for column in columns:
        table.add_column(column)
    for i, agent in enumerate(agents):
        s = agent.status()
        if s is None:
            state = "exited" if agent.proc.poll() is not None else "starting"
            table.add_row(str(i), state, "", "", "", "", "", "", str(agent.proc.pid))
            continue
        models = ", ".join(
            f"{name} {m.get('state')}"
            + (f" load {m['load']:.2f}" if m.get("state") == "ready" else "")
            for name, m in s.get("models", {}).items()
        )
        table.add_row(
            str(i),
            s["node_id"][:16] + "…",
            s["address"],
            s["cell"] or "pending",
            str(len(s.get("neighbours", []))),
            f"{len(s.get('alive', []))}/{len(s.get('dead', []))}",
            models or "-",
            str(s.get("api") or ""),
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


ENGINE_AGENTS = (1, 4)  # ring members that run vLLM; agent0 (the centre) has no model
MODEL_READY_TIMEOUT = 900.0  # s; vLLM CPU servers start in 35-110 s each, here two at once
DEMO_PROMPT = "The honeycomb swarm"
# On a GPU the demo's engines share its one card: each agent's --gpu-share is
# GPU_SHARE over their number (one agent's default would leave the next no room).


def _ready_engines(procs: list[AgentProcess]) -> int:
    return sum(
        1
        for p in procs
        for m in ((p.status() or {}).get("models") or {}).values()
        if m.get("state") == "ready"
    )


def _ask(console: Console, api: str, model: str, procs: list[AgentProcess]) -> None:
    """Stream one answer from agent0 (which has no model) and say who served it."""
    import httpx

    body = {"model": model, "prompt": DEMO_PROMPT, "max_tokens": 48, "stream": True}
    console.print(f"[bold]prompt to agent0 ({api}):[/] {DEMO_PROMPT!r}")
    with httpx.stream("POST", f"{api}/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:]).get("choices", []):
                    console.print(c.get("text", ""), end="", soft_wrap=True, highlight=False)
        console.print()
        node = r.headers.get("x-hexamesh-served-by", "")
    who = [i for i, p in enumerate(procs) if (p.status() or {}).get("node_id") == node]
    name = f"agent{who[0]}" if who else "?"
    console.print(
        f"[green]served by {name}[/] (node {node[:16]}…, {r.headers.get('x-hexamesh-server')}), "
        "one forward away; the tiny model has random weights, so the words are noise"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def serve_flags(model: Path, engines: int, *, gpu: bool) -> tuple[str, ...]:
    """Agent flags for one of the demo's ``engines`` engine agents; on a GPU they
    share the one card."""
    flags: tuple[str, ...] = ("--model", f"tiny={model}")
    if gpu:
        flags += ("--gpu-share", f"{GPU_SHARE / engines:.3f}")
    return flags


def run_demo(
    console: Console,
    *,
    agents: int,
    duration: float | None,
    workdir: Path,
    engines: int = 2,
    model: Path | None = None,
) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    procs: list[AgentProcess] = []
    # SIGTERM (kill, a supervisor) and SIGHUP (the terminal closed) stop the
    # swarm like Ctrl-C does; their default would leave the agents running.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        per_agent: dict[int, tuple[str, ...]] = {}
        engines = min(engines, max(agents - 1, 0))
        if engines:
            if model is None:
                from hexamesh.engine.tiny import make_tiny_model

                console.print("making the tiny model (random weights, 2k-token BPE tokenizer)…")
                model = make_tiny_model(workdir / "tiny")
            picks = [i for i in ENGINE_AGENTS if i < agents][:engines]
            picks += [i for i in range(1, agents) if i not in picks][: engines - len(picks)]
            serve = serve_flags(model, len(picks), gpu=detect_device().gpu)
            per_agent = {i: serve for i in picks}
        procs.extend(start_local_swarm(workdir, agents, per_agent=per_agent))
        seed = procs[0].wait_ready()["address"]
        key = str(workdir / "agent0" / "swarm.key")
        for p in procs:
            p.wait_ready()
        console.print(f"[green]{agents} agents up[/]; logs in {workdir}/agent*/agent.log")
        deadline = None if duration is None else time.monotonic() + duration
        ring = load_key_file(Path(key))
        asked = not engines
        started = time.monotonic()
        with Live(_table(procs), console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(Group(_table(procs), _comb_map(ring, seed)))
                if not asked and _ready_engines(procs) >= len(per_agent):
                    asked = True
                    live.stop()
                    if not console.is_terminal:  # a file gets the last frame without its newline
                        console.line()
                    _ask(console, str(procs[0].status()["api"]), "tiny", procs)  # type: ignore[index]
                    live.start()
                if not asked and time.monotonic() - started > MODEL_READY_TIMEOUT:
                    raise TimeoutError("the engines did not become ready; see agent*/agent.log")
        return 0
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        return 1
    finally:
        if not console.is_terminal:  # Live's last frame ends without a newline there
            console.line()
        for p in procs:  # all at once: each takes a few seconds to leave
            p.terminate()
        codes = [p.stop() for p in procs]
        console.print(f"stopped {len(codes)} agents (exit codes {codes})")
