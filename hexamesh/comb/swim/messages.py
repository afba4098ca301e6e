"""SWIM's wire messages and the membership states they carry (type ids 0x020x)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from hexamesh.comb.advert import PROOF_BYTES
from hexamesh.identity import NODE_ID_BYTES
from hexamesh.wire import Len, MaxLen, Message, Struct, message, struct

__all__ = [
    "MAX_SYNC",
    "MAX_UPDATES",
    "SWIM_MESSAGES",
    "SYNC_ANSWER",
    "SYNC_ASK",
    "SYNC_REST",
    "Ack",
    "Gossip",
    "MemberState",
    "MemberUpdate",
    "Nack",
    "Probe",
    "ProbeReq",
    "Sync",
]

NodeId = Annotated[bytes, Len(NODE_ID_BYTES)]
MAX_UPDATES = 32  # updates in one message


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate(Struct):
    node: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int
    incarnation: int
    state: MemberState
    by: NodeId  # who says so (confirmations must be independent)
    # alive at an incarnation above 0 (a refutation, a return): its node's
    # signature of it (advert.alive_bytes), so that only it can say so
    proof: Annotated[bytes, MaxLen(PROOF_BYTES)] = b""


Updates = Annotated[tuple[MemberUpdate, ...], MaxLen(MAX_UPDATES)]


@message(0x0201)
@dataclass(frozen=True, slots=True, kw_only=True)
class Probe(Message):
    target: NodeId  # a probe that reaches the wrong node (a reused address) is ignored
    updates: Updates


@message(0x0202)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    updates: Updates


@message(0x0203)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReq(Message):
    target: NodeId
    host: Annotated[str, MaxLen(64)]
    port: int
    updates: Updates


@message(0x0204)
@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    updates: Updates


MAX_SYNC = 1024  # entries in one push-pull exchange (over a stream)

# The steps of a push-pull exchange (``Sync.step``).
SYNC_ASK = 0  # the asker's suspicions and fingerprint (of its deaths and refutations)
SYNC_ANSWER = 1  # the answerer's digest if the fingerprints differ, else its suspicions
SYNC_REST = 2  # what the answer lacked of the asker's digest; not answered


@message(0x0206)
@dataclass(frozen=True, slots=True, kw_only=True)
class Sync(Message):
    """Push-pull anti-entropy of notable news (not plainly alive at incarnation 0)."""

    updates: Annotated[tuple[MemberUpdate, ...], MaxLen(MAX_SYNC)]
    step: int  # SYNC_ASK, SYNC_ANSWER or SYNC_REST
    fingerprint: int  # of the sender's recent news (``Swim._fingerprint``), 64 bits

    def __post_init__(self) -> None:
        if self.step not in (SYNC_ASK, SYNC_ANSWER, SYNC_REST):
            raise ValueError(f"unknown sync step {self.step}")
        if not 0 <= self.fingerprint < 1 << 64:
            raise ValueError("a sync fingerprint is 64 bits")


@message(0x0207)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    """A helper could not reach the target of a ``ProbeReq`` either (Lifeguard)."""


SWIM_MESSAGES: tuple[type[Message], ...] = (Probe, Ack, ProbeReq, Gossip, Sync, Nack)
