"""Shared by the placement tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from hexamesh.identity import Identity
from hexamesh.placement.messages import Ballot, Scout
from hexamesh.placement.order import ORDER_TTL, Order, sign_order

OPERATOR = Identity.from_private_bytes(bytes(range(32)))  # the tests' operator key
OPERATORS = frozenset({OPERATOR.public_key})


def order(model: str = "tiny", source: str = "/m/tiny", *, ttl: float = ORDER_TTL) -> Order:
    """An order of the tests' operator, standing from time 0 for ``ttl``."""
    return sign_order(OPERATOR, model, source, now=0.0, ttl=ttl)


BALLOT = Ballot(
    model="tiny",
    source="/m/tiny",
    epoch=1,
    replicas=1,
    quorum=3,
    electorate=5,
    q=0,
    r=0,
    mem_need=0,
    proposer=Scout(node=(1).to_bytes(20, "big"), host="10.0.0.0", port=7420),
    order=order(),
)


def ballot(**changes: Any) -> Ballot:
    """``BALLOT`` with ``changes`` (validated like any ballot); a new model or
    source gets its order."""
    model, source = changes.get("model", BALLOT.model), changes.get("source", BALLOT.source)
    if "order" not in changes and (model, source) != (BALLOT.model, BALLOT.source):
        changes["order"] = order(model, source)
    return dataclasses.replace(BALLOT, **changes)
