"""How a scout ranks candidates for a replica: small pure functions.

A candidate is a dance in the scout's view, or one another scout approved
(its vote carries the merit it saw, like a bee's dance tells the quality of
a site the follower has not visited). It is *eligible* when it is up
(``status == "up"``: it dances "full" when it has no room for another
model), does not serve the model already, and, when it reports GPU memory,
has enough free for the model. Its *merit* mixes what DESIGN.md names:
load, distance to the demand, free GPU memory and uptime. Its *rank* adds
recruitment (bees again: a scout is drawn to sites other scouts dance for)
and a small bonus for what the scout approves already, so the electorate
converges on the same candidates instead of splitting, and does not flap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hexamesh.comb.waggle import Dance
from hexamesh.hexgrid import Hex, distance
from hexamesh.placement.messages import Ballot

__all__ = ["Weights", "best", "eligible", "merit", "quorum_of"]


@dataclass(frozen=True, kw_only=True)
class Weights:
    load: float = 0.4  # an idle node serves the new replica's traffic best
    proximity: float = 0.3  # near the demand: fewer and shorter forwards
    memory: float = 0.2  # free GPU memory: room for the KV cache
    uptime: float = 0.1  # long-lived nodes are less likely to vanish
    uptime_full: float = 600.0  # s of uptime that earn the whole uptime share
    follow: float = 0.3  # x the share of scouts approving a candidate (recruitment)
    keep: float = 0.05  # bonus for a candidate already approved (no flapping)


def quorum_of(scouts: int) -> int:
    """A strict majority: two disjoint quorums cannot exist."""
    return scouts // 2 + 1


def eligible(d: Dance, ballot: Ballot) -> bool:
    if d.status != "up" or ballot.model in d.models:
        return False
    if ballot.mem_need and d.gpu_total:  # a node that reports no GPU memory is not judged on it
        return d.gpu_total - d.gpu_used >= ballot.mem_need
    return True


def merit(d: Dance, demand: Hex, w: Weights) -> float:
    """0..1 (higher is better) from the candidate's own dance."""
    free = (d.gpu_total - d.gpu_used) / d.gpu_total if d.gpu_total > 0 else 0.5
    near = 1.0 / (1 + distance(demand, Hex(d.q, d.r)))
    return (
        w.load * (1.0 - min(max(d.load, 0.0), 1.0))
        + w.proximity * near
        + w.memory * min(max(free, 0.0), 1.0)
        + w.uptime * min(d.uptime / w.uptime_full, 1.0)
    )


def best(
    merits: Mapping[bytes, float],
    support: Mapping[bytes, int],
    scouts: int,
    current: Iterable[bytes],
    n: int,
    w: Weights,
) -> list[bytes]:
    """The ``n`` candidates to approve: by merit plus recruitment (``support``:
    approvals each holds from other scouts, out of ``scouts``) plus the keep
    bonus for ``current``; ties to the lower node id."""
    keep = set(current)

    def rank(node: bytes) -> tuple[float, bytes]:
        score = merits[node] + w.follow * support.get(node, 0) / max(scouts, 1)
        if node in keep:
            score += w.keep
        return (-score, node)

    return sorted(merits, key=rank)[:n]
