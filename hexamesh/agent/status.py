"""agent.json and /health: what the agent says of itself, rewritten every second."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hexamesh.comb.service import Honeycomb
from hexamesh.comb.swim import MemberState
from hexamesh.faults import Component, Faults
from hexamesh.fileio import write_text_atomic
from hexamesh.net.base import format_addr
from hexamesh.net.rtt import RttProbe, RttSample
from hexamesh.services import Services

log = logging.getLogger(__name__)

STATUS_FILE_NAME = "agent.json"


STATUS_INTERVAL = 1.0  # s between rewrites of agent.json


RTT_REWRITE_INTERVAL = 10.0  # s; agent.json is not rewritten more often for new RTTs alone


@dataclass
class AgentStatus:
    node_id: str
    address: str
    cell: str | None
    pid: int
    version: str
    founder: bool
    seeds: dict[str, float | None] = field(default_factory=dict)  # seed -> srtt in ms
    dht_contacts: int = 0  # contacts in the DHT routing table
    neighbours: list[str] = field(default_factory=list)  # comb links, node ids (hex)
    models: dict[str, dict[str, object]] = field(default_factory=dict)  # name -> state, load
    alive: list[str] = field(default_factory=list)  # members held alive or suspect
    dead: list[str] = field(default_factory=list)  # members held dead
    api: str | None = None  # the OpenAI API's base URL, e.g. http://127.0.0.1:7421/v1
    # "ok", or "degraded" while a service is being restarted (``services``)
    health: str = "ok"
    services: dict[str, dict[str, object]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # contained failures by component


class _StatusFile:
    """agent.json, rewritten only when it changed (a write and rename: ~0.2 ms
    of CPU and a disk write). The seeds' round-trip times wobble every tick,
    so a change in them alone is written at most every ``RTT_REWRITE_INTERVAL``.
    A write that fails (disk full, out of descriptors) is reported and tried
    again at the next tick: the file is for tools, the agent runs on."""

    def __init__(self, path: Path, faults: Faults) -> None:
        self.path = path
        self.faults = faults
        self._last = ""
        self._shape = ""  # the last text written, with only whether each RTT is known
        self._written_at = -math.inf

    def write(self, status: AgentStatus, now: float) -> None:
        fields = asdict(status)
        text = json.dumps(fields, indent=2) + "\n"
        try:
            if text == self._last and self.path.exists():
                return
            measured = {seed: rtt is not None for seed, rtt in status.seeds.items()}
            shape = json.dumps({**fields, "seeds": measured})
            rtts_only = shape == self._shape and self.path.exists()
            if rtts_only and now - self._written_at < RTT_REWRITE_INTERVAL:
                return
            write_text_atomic(self.path, text)
        except OSError as e:
            self.faults.caught(Component.STATUS, e, f"writing {self.path.name}")
            return
        self._last, self._shape, self._written_at = text, shape, now


def _note_rtt(probe: RttProbe, status: AgentStatus, sample: RttSample) -> None:
    key = format_addr(sample.addr)
    before = status.seeds.get(key)
    if sample.rtt is None:
        log.debug("probe to %s lost", key)
        return
    srtt = probe.srtt(sample.addr)
    status.seeds[key] = None if srtt is None else round(srtt * 1000, 1)
    if before is None:
        log.info("seed %s reachable, rtt %.2f ms", key, sample.rtt * 1000)


def _note_comb(honeycomb: Honeycomb, status: AgentStatus) -> None:
    cell = honeycomb.cell
    status.cell = None if cell is None else str(cell)
    status.neighbours = [n.hex() for n in honeycomb.neighbours()]
    members = honeycomb.members()
    status.alive = sorted(n.hex() for n, state in members.items() if state is not MemberState.DEAD)
    status.dead = sorted(n.hex() for n, state in members.items() if state is MemberState.DEAD)


def _note_health(status: AgentStatus, services: Services, faults: Faults) -> None:
    status.services = dict(services.states())
    status.health = "degraded" if services.degraded() else "ok"
    status.errors = {c.value: n for c, n in faults.counts.items() if n}


def _health(status: AgentStatus, services: Services) -> dict[str, object]:
    """What /health adds to the node and address: "degraded" while a service restarts."""
    degraded = services.degraded()
    return {"status": "degraded" if degraded else "ok", "degraded": degraded}
