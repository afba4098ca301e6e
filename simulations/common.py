"""Helpers shared by the simulations."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from hexamesh.simulate.util import addr_of, no_cycle_collector, percentile

__all__ = ["addr_of", "cpu_seconds", "emit", "no_cycle_collector", "percentile"]


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
