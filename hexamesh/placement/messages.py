"""What an election says on the wire.

An election is named by ``(model, epoch)``. Its :class:`Ballot` (what is
wanted) travels in every proposal and vote, so a candidate that hears only
votes still knows what it would win and how many approvals make a quorum.
Times are durations (``ttl``: seconds left), never absolute: peers' clocks
differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from hexamesh.identity import NODE_ID_BYTES
from hexamesh.placement.order import Order
from hexamesh.wire import Len, MaxLen, Message, Struct, message, struct

__all__ = [
    "MAX_REPLICAS",
    "MAX_SCOUTS",
    "PLACEMENT_MESSAGES",
    "Ballot",
    "Placed",
    "PlacedAck",
    "Proposal",
    "Scout",
    "Site",
    "Vote",
    "VoteAck",
]

MAX_SCOUTS = 19  # electorate of one election: a full comb's two rings around the demand
MAX_REPLICAS = 8  # replicas one election may place (a vote approves at most this many)
NodeId = Annotated[bytes, Len(NODE_ID_BYTES)]


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Scout(Struct):
    """A node and where to reach it."""

    node: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Ballot(Struct):
    model: Annotated[str, MaxLen(64)]  # served name
    source: Annotated[str, MaxLen(256)]  # what the winner loads: a directory or hub id
    epoch: int  # names the election with the model; slots are per (model, epoch)
    replicas: int  # new replicas wanted, 1..MAX_REPLICAS
    quorum: int  # approvals a candidate needs: a strict majority of the electorate
    electorate: int  # scouts the proposer named; every node checks it against its own view
    q: int  # the demand's cell: scouts favour candidates near it, and count the
    r: int  # electorate they expect around it
    mem_need: int  # bytes of GPU memory the model needs; 0: unknown
    proposer: Scout  # who called the vote: winners tell it too, whoever voted for them
    order: Order  # an operator's signed word for this model from this source (order.py)

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be in 1..{MAX_REPLICAS}, got {self.replicas}")
        if not 1 <= self.electorate <= MAX_SCOUTS:
            raise ValueError(f"electorate must be in 1..{MAX_SCOUTS}, got {self.electorate}")
        if not 1 <= self.quorum <= MAX_SCOUTS:
            raise ValueError(f"quorum must be in 1..{MAX_SCOUTS}, got {self.quorum}")
        if self.mem_need < 0:
            raise ValueError("mem_need must be >= 0")

    @property
    def key(self) -> tuple[str, int]:
        return (self.model, self.epoch)


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Site(Struct):
    """An approved candidate and the merit the approving scout saw in it (so a
    scout that cannot see it in its own view can still weigh it)."""

    node: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int
    merit: float


@message(0x0301)
@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal(Message):
    """Vote on this ballot. Sent by the proposer to each scout, resent until the
    scout's vote shows it arrived."""

    ballot: Ballot
    scouts: Annotated[tuple[Scout, ...], MaxLen(MAX_SCOUTS)]  # the electorate
    ttl: float  # s the election has left


@message(0x0302)
@dataclass(frozen=True, slots=True, kw_only=True)
class Vote(Message):
    """A scout's current approvals (newest ``version`` wins). Sent to every other
    scout and to every candidate it approves or approved, resent until acked."""

    ballot: Ballot
    scout: NodeId
    version: int
    approve: Annotated[tuple[Site, ...], MaxLen(MAX_REPLICAS)]
    ttl: float  # s the election has left


@message(0x0303)
@dataclass(frozen=True, slots=True, kw_only=True)
class VoteAck(Message):
    model: Annotated[str, MaxLen(64)]
    epoch: int
    scout: NodeId  # whose vote
    version: int  # the newest version the acker holds from that scout


@message(0x0304)
@dataclass(frozen=True, slots=True, kw_only=True)
class Placed(Message):
    """A candidate won a quorum and holds slot ``slot`` of the election in the
    DHT: scouts stop approving it. Resent until each scout acks it."""

    ballot: Ballot
    winner: Scout
    slot: int


@message(0x0305)
@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedAck(Message):
    """A scout heard who won ``slot`` (the winner stops resending ``Placed``)."""

    model: Annotated[str, MaxLen(64)]
    epoch: int
    slot: int


PLACEMENT_MESSAGES: tuple[type[Message], ...] = (Proposal, Vote, VoteAck, Placed, PlacedAck)
