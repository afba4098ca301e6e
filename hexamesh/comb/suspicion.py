"""The arithmetic of SWIM with Lifeguard's refinements (pure functions).

Same rules as HashiCorp memberlist's ``util.go`` and ``suspicion.go``, which
follow the SWIM paper (Das, Gupta, Motivala 2002) and Lifeguard (Dadgar,
Phillips, Currey 2017):

* a suspicion lasts longer in larger swarms, because news takes longer to
  reach the suspect so it can refute (SWIM §4.2): ``mult * log10(N) * interval``;
* independent confirmations from other nodes shorten it, down to that minimum
  from a maximum of ``max_mult`` times it (Lifeguard §3.2, "dynamic
  suspicion"): with ``n`` of ``k`` expected confirmations the timeout is
  ``max - (max - min) * log(n + 1) / log(k + 1)``;
* a broadcast is retransmitted ``retransmit_mult * ceil(log10(N + 1))``
  times, enough to reach every node with high probability (SWIM §4.1);
* a node that misses its own deadlines (slow, overloaded, partitioned)
  raises its *awareness* score and stretches its probe interval and timeout
  by ``score + 1``, instead of accusing healthy peers (Lifeguard §3.1, "local
  health").
"""

from __future__ import annotations

import math

__all__ = [
    "Awareness",
    "remaining_suspicion_time",
    "retransmit_limit",
    "suspicion_timeout",
]


def suspicion_timeout(mult: float, n: int, interval: float) -> float:
    """Minimum suspicion time (s) in a swarm of ``n`` nodes (memberlist suspicionTimeout)."""
    node_scale = max(1.0, math.log10(max(1, n)))
    return mult * node_scale * interval


def retransmit_limit(mult: int, n: int) -> int:
    """How many times one broadcast is sent (memberlist retransmitLimit)."""
    return mult * math.ceil(math.log10(n + 1))


def remaining_suspicion_time(
    confirmations: int, expected: int, elapsed: float, minimum: float, maximum: float
) -> float:
    """Seconds left before a suspect is declared dead (memberlist remainingSuspicionTime).

    ``expected`` is how many independent confirmations would shrink the
    timeout all the way to ``minimum``; with none it is ``maximum``.
    """
    if expected < 1:
        timeout = minimum
    else:
        frac = math.log(confirmations + 1) / math.log(expected + 1)
        timeout = max(minimum, maximum - frac * (maximum - minimum))
    return timeout - elapsed


class Awareness:
    """Lifeguard local health: 0 is healthy, ``maximum`` is "I am the problem"."""

    def __init__(self, maximum: int = 8) -> None:
        self.maximum = maximum  # memberlist AwarenessMaxMultiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.maximum - 1, max(0, self.score + delta))

    def scale(self, value: float) -> float:
        """Stretch a probe interval or timeout by our own ill health."""
        return value * (self.score + 1)
