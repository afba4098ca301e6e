"""Swarmscale: when a model needs one more replica, or one fewer (pure).

DESIGN.md's rule: add a replica when load > 0.8, more than 100 requests wait,
or tasks take over 5 s; drop one when load < 0.2 and fewer than 10 wait, for
5 minutes. Between the two thresholds nothing happens (hysteresis), and a
hot reading must last ``sustain`` before it counts, so one burst is not
demand. After a decision the model is left alone for ``cooldown``: a new
replica needs time to load and take traffic before the load says anything.

A reading is what the deciding node sees of a model: the mean load of its
servers in the node's neighbourhood view, their queues summed, and the time
to first token its own engine measures (queueing included: the part of a
task's time that another replica shortens). The agent asks only on the
server with the lowest node id among the model's servers it sees, so one
neighbourhood calls one vote, not one per server.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["Reading", "Scale", "ScaleConfig", "Swarmscale"]


class Scale(enum.Enum):
    HOLD = "hold"
    ADD = "add"  # call a placement vote for one more replica
    DROP = "drop"  # unload a replica this agent was given by a vote


@dataclass(frozen=True, kw_only=True)
class ScaleConfig:
    add_load: float = 0.8  # mean load over the model's servers above this is hot
    add_queue: int = 100  # requests waiting, summed, above this is hot
    add_ttft: float = 5.0  # s to the first token above this is hot
    drop_load: float = 0.2  # cold below this mean load ...
    drop_queue: int = 10  # ... with fewer requests waiting than this
    drop_after: float = 300.0  # s cold before a replica goes
    sustain: float = 10.0  # s hot before a vote is called
    cooldown: float = 60.0  # s after a decision before the next one for the model
    min_replicas: int = 1  # never drop below this many servers in view


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    load: float  # mean over the model's servers in view, 0..1
    queue: int  # requests waiting at them, summed
    ttft: float | None  # s, mean time to first token here (None: no request lately)
    replicas: int  # servers of the model in view, this one included


class Swarmscale:
    def __init__(self, config: ScaleConfig) -> None:
        self.config = config
        self._hot_since: dict[str, float] = {}
        self._cold_since: dict[str, float] = {}
        self._quiet_until: dict[str, float] = {}

    def observe(self, model: str, reading: Reading, now: float) -> Scale:
        c = self.config
        hot = (
            reading.load > c.add_load
            or reading.queue > c.add_queue
            or (reading.ttft is not None and reading.ttft > c.add_ttft)
        )
        cold = reading.load < c.drop_load and reading.queue < c.drop_queue
        for flag, since in ((hot, self._hot_since), (cold, self._cold_since)):
            if flag:
                since.setdefault(model, now)
            else:
                since.pop(model, None)
        if now < self._quiet_until.get(model, -math.inf):
            return Scale.HOLD
        if hot and now - self._hot_since[model] >= c.sustain:
            return self._decided(model, now, Scale.ADD)
        if (
            cold
            and reading.replicas > c.min_replicas
            and now - self._cold_since[model] >= c.drop_after
        ):
            return self._decided(model, now, Scale.DROP)
        return Scale.HOLD

    def forget(self, model: str) -> None:
        """The model is no longer served here."""
        for d in (self._hot_since, self._cold_since, self._quiet_until):
            d.pop(model, None)

    def _decided(self, model: str, now: float, what: Scale) -> Scale:
        self._quiet_until[model] = now + self.config.cooldown
        self._hot_since.pop(model, None)
        self._cold_since.pop(model, None)
        return what
