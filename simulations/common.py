"""Helpers shared by the simulations."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hexamesh.net.base import Addr

__all__ = ["addr_of", "cpu_seconds", "emit", "no_cycle_collector", "percentile"]


def addr_of(i: int) -> Addr:
    """A distinct simulated address for host number ``i``."""
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7420)


@contextlib.contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Run a simulation with Python's cycle collector off.

    A large swarm holds millions of long-lived objects (members, tombstones,
    views), and every collection of the oldest generation walks them all:
    at 2,000 nodes it was a quarter of the wall time. The cores make no
    reference cycles worth collecting (peak RSS measured the same with the
    collector on and off), and reference counting still frees the rest.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile, rounded; None when there are no values or it falls on a never (inf)."""
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return None if value == float("inf") else round(value, 2)


def emit(result: dict[str, Any], *, quiet: bool) -> None:
    """Print a run's result: a readable table on stderr (unless ``quiet``), then
    the one JSON object every simulation and benchmark ends with, on stdout."""
    if not quiet:
        width = max(map(len, result), default=0)
        for key, value in result.items():
            print(f"{key:>{width}}: {value}", file=sys.stderr)
    print(json.dumps(result))


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: nanoseconds, where
    /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # the thread ended meanwhile
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9
