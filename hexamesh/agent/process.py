"""What the agent asks of its process: descriptors, and memory that goes back when freed."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import resource
import time

from hexamesh.limits import NOFILE_WANTED

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024  # bytes; glibc allocations this large get mappings of their own


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise the soft descriptor limit towards ``wanted`` (never past the hard
    limit), as Go and Consul do; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the descriptor limit from %d: %s", soft, e)
    return int(soft)


def tame_malloc() -> None:
    """glibc only: fix the size above which an allocation gets its own mapping
    (and goes back to the system when freed) at ``MMAP_THRESHOLD``. By default
    the threshold grows after the first such buffer is freed, and from then
    on every 1 MiB request body or upstream read stays in the heap for good: a
    flood of large requests raised the agent's memory for the rest of its life."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # malloc.h
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)


def wall_clock() -> float:
    """Unix time: DHT record expiries are absolute, so agents must agree on the clock."""
    return time.time()
