"""Shared by the placement tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from hexamesh.placement.messages import Ballot, Scout

BALLOT = Ballot(
    model="tiny",
    source="/m/tiny",
    epoch=1,
    replicas=1,
    quorum=3,
    mem_need=0,
    proposer=Scout(node=(1).to_bytes(20, "big"), host="10.0.0.0", port=7420),
)


def ballot(**changes: Any) -> Ballot:
    """``BALLOT`` with ``changes`` (validated like any ballot)."""
    return dataclasses.replace(BALLOT, **changes)
