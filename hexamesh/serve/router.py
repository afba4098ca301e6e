"""The router: which server should take a request (pure functions, no I/O).

Theory of operation
-------------------
The front door gathers :class:`Candidate` servers for the requested model:
the local engine, peers in the comb view that dance the model (fresh load,
known cell) and, beyond the view, ``model:<name>`` providers from the DHT
(load unknown). :func:`rank` orders them by

    score = 0.4 * (1 - load) + 0.3 * model_match + 0.3 * proximity

* ``load`` in [0, 1] from the candidate's dance (``EngineLoad``); unknown
  (DHT only) counts as ``UNKNOWN_LOAD``.
* ``model_match`` is 1 when the candidate dances the model ready (a fresh,
  first-hand fact) and ``PROVIDER_MATCH`` when only its DHT provider record
  says so (it may be minutes old).
* ``proximity`` is 1 for the local engine and ``1 / (1 + d)`` for a peer at hex
  distance ``d`` (hex distance tracks RTT: a joiner takes the free cell next
  to the peer closest to it); 0 when the cell is unknown.

*Doubtful* candidates (seen serving the model lately, but now out of view
or held dead) come last of all: a false verdict, or a view that lagged under
load, must not turn into a refusal while a request can still try them (a
really dead one refuses the connection at once).

Candidates already on the request's path are never chosen (no loops), and a
request that has been forwarded ``MAX_FORWARDS`` times is served locally or
not at all. Saturated candidates (``load >= SATURATED``) go behind the others,
least loaded first: the fallback when everyone is busy. Ties go to the local
engine, then to the lower load, then to a hash of the ranking node's id and
the candidate's (rendezvous hashing): the order is total and the same on
every run, but each node breaks ties its own way. Candidates nothing tells
apart (DHT-only ones: unknown load, unknown cell) are thus spread over the
swarm's entry points; broken by node id, every peer without a server in view
sent its requests to the same lowest-id provider (found by ``hexamesh
simulate``: one of nine servers generated half the tokens).

Priorities bend this a little: ``high`` adds ``STABILITY_WEIGHT`` times
the candidate's uptime in hours (capped at one), so long-lived servers win;
``low`` goes only to candidates at or below ``LOW_MAX_LOAD`` while there are
any (a low job waits for one; a low request, with none, takes the least
loaded and waits in its engine's priority queue behind everyone else).

Every weight and level here is the default of a :class:`RoutingPolicy`,
which an operator sets in the config's ``[policy]`` section.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_FORWARDS",
    "Candidate",
    "Priority",
    "RoutingPolicy",
    "may_forward",
    "rank",
    "score",
]

MAX_FORWARDS = 2  # forwards a request may take; the DESIGN's hop counter limit
MAX_ATTEMPTS = 4  # servers tried for one request (first choice + failovers/continuations)
W_LOAD, W_MATCH, W_PROXIMITY = 0.4, 0.3, 0.3  # the DESIGN's weights
# Times the share of the prompt a server holds in its KV cache (``affinity``):
# as much as the load's, so a whole prompt held outweighs any load short of
# saturation (and saturated servers go behind the others anyway).
W_AFFINITY = 0.4
UNKNOWN_LOAD = 0.5  # assumed for DHT-only candidates: neither idle nor busy
PROVIDER_MATCH = 0.5  # model known from a DHT record only (may be stale)
SATURATED = 0.95  # load at which a server admits nothing new without queueing
# Scores closer than this are a tie (then: the local engine, requests open
# there, the load, a hash): a load 0.025 lower is noise in a second-old dance
SCORE_QUANTUM = 0.01
STABILITY_WEIGHT = 0.1  # high priority: bonus per hour of uptime, capped at 1 h
LOW_MAX_LOAD = 0.5  # low priority: candidates above this load are skipped


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingPolicy:
    """The router's weights and levels (the config's ``[policy]``)."""

    weight_load: float = W_LOAD
    weight_match: float = W_MATCH
    weight_proximity: float = W_PROXIMITY
    weight_affinity: float = W_AFFINITY
    saturated: float = SATURATED
    stability_weight: float = STABILITY_WEIGHT
    low_max_load: float = LOW_MAX_LOAD


DEFAULT_POLICY = RoutingPolicy()


class Priority(enum.StrEnum):
    """A request's priority (sent and stored as these strings)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    node: bytes  # node id
    local: bool = False  # our own engine (no network hop)
    load: float | None = None  # 0..1; None = unknown
    in_view: bool = True  # dances the model (else: known from the DHT only)
    distance: int | None = None  # hex distance from us; None = unknown
    uptime: float = 0.0  # s
    doubtful: bool = False  # seen serving lately, but now held dead or out of view: last resort


def score(
    c: Candidate,
    priority: Priority = Priority.MEDIUM,
    policy: RoutingPolicy = DEFAULT_POLICY,
    held: float = 0.0,
) -> float:
    """``held``: the share of the request's prompt ``c`` holds in its KV cache."""
    load = UNKNOWN_LOAD if c.load is None else min(max(c.load, 0.0), 1.0)
    match = 1.0 if c.in_view or c.local else PROVIDER_MATCH
    if c.local:
        proximity = 1.0
    elif c.distance is None:
        proximity = 0.0
    else:
        proximity = 1.0 / (1.0 + max(c.distance, 0))
    s = (
        policy.weight_load * (1.0 - load)
        + policy.weight_match * match
        + policy.weight_proximity * proximity
    )
    if priority is Priority.HIGH:
        s += policy.stability_weight * min(c.uptime / 3600.0, 1.0)
    return s + policy.weight_affinity * held


def may_forward(forwards: int) -> bool:
    """May a request that has been forwarded ``forwards`` times go on?"""
    return forwards < MAX_FORWARDS


def rank(
    candidates: Iterable[Candidate],
    *,
    path: Iterable[bytes] = (),
    forwards: int = 0,
    priority: Priority = Priority.MEDIUM,
    ranker: bytes = b"",
    policy: RoutingPolicy = DEFAULT_POLICY,
    cached: Mapping[bytes, float] | None = None,
    salt: bytes = b"",
    inflight: Mapping[bytes, int] | None = None,
) -> list[Candidate]:
    """Candidates best first; those on ``path`` (or remote, past the hop limit) left
    out. ``ranker``: the ranking node's id, which breaks ties (see above);
    ``cached``: node -> the share of the prompt it holds (``affinity``);
    ``salt``: the prompt's prefix root, so that ties between equal servers
    spread distinct prefixes (and keep one prefix on one server);
    ``inflight``: requests the ranking node has open at each, which breaks
    ties before the loads (the dances' loads are a second old: a burst of
    new requests would all go to the same server)."""
    cached = cached or {}
    inflight = inflight or {}
    seen = set(path)
    usable = [c for c in candidates if c.local or (c.node not in seen and may_forward(forwards))]
    if priority is Priority.LOW:
        light = [c for c in usable if (c.load or 0.0) <= policy.low_max_load]
        usable = light or usable
    unique: dict[bytes, Candidate] = {}
    for c in usable:  # one entry per node; the view's beats the DHT's
        held = unique.get(c.node)
        if held is None or held.doubtful or (c.in_view and not held.in_view) or c.local:
            unique[c.node] = c

    def load_of(c: Candidate) -> float:
        return UNKNOWN_LOAD if c.load is None else c.load

    def tie(c: Candidate) -> bytes:
        return hashlib.blake2b(ranker + salt + c.node, digest_size=8).digest()

    def key(c: Candidate) -> tuple[int, int, int, float, bytes]:
        s = score(c, priority, policy, cached.get(c.node, 0.0))
        quantised = -math.floor(round(s / SCORE_QUANTUM, 6))
        return (quantised, 0 if c.local else 1, inflight.get(c.node, 0), load_of(c), tie(c))

    sure = [c for c in unique.values() if not c.doubtful]
    fresh = [c for c in sure if load_of(c) < policy.saturated]
    busy = [c for c in sure if load_of(c) >= policy.saturated]
    doubtful = sorted((c for c in unique.values() if c.doubtful), key=tie)
    return (
        sorted(fresh, key=key)
        + sorted(busy, key=lambda c: (load_of(c), not c.local, tie(c)))
        + doubtful
    )
