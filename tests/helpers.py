"""Test-only messages, a recording core, and hypothesis strategies for wire types."""

from __future__ import annotations

import enum
import functools
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from hypothesis import strategies as st

from hexamesh.comb.swim import SYNC_ANSWER, SYNC_ASK, SYNC_REST, Sync
from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.peerauth import Authenticator
from hexamesh.placement.messages import MAX_REPLICAS, MAX_SCOUTS, Ballot
from hexamesh.wire import (
    MAX_BYTES,
    MAX_ITEMS,
    MAX_STR,
    Codec,
    Envelope,
    KeyRing,
    Len,
    MaxLen,
    Message,
    Struct,
    field_limits,
    message,
    message_types,
    struct,
)


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Point(Struct):
    x: float
    y: float
    label: typing.Annotated[str, MaxLen(16)] = ""


# Test-only message types live in 0xFFxx, far from the real ranges.
@message(0xFF01)
@dataclass(frozen=True, slots=True, kw_only=True)
class Blob(Message):
    data: bytes


@message(0xFF02)
@dataclass(frozen=True, slots=True, kw_only=True)
class Kitchen(Message):
    """One field of every kind the wire allows."""

    flag: bool
    count: int
    ratio: float
    name: str
    node: typing.Annotated[bytes, Len(20)]
    tags: typing.Annotated[tuple[str, ...], MaxLen(8)]
    colour: Colour
    maybe: int | None
    points: tuple[Point, ...]
    pair: tuple[str, int]


@dataclass(frozen=True)
class Stepped:
    """RecordingCore's event: what it just did ("receive" | "timer"), and when."""

    what: str
    at: float


class RecordingCore:
    """A core that records what it receives and sends what it is told to; each
    step is also an event (``Stepped``), and ``emit`` hands out any other."""

    def __init__(self) -> None:
        self.received: list[tuple[Envelope, Addr, float]] = []
        self.timers: list[float] = []
        self.wake_at: float | None = None
        self.log: list[tuple[str, float]] = []  # ("receive" | "timer", when), in order
        self._outbox: list[tuple[Addr, Envelope]] = []
        self._events: list[object] = []

    def send(self, addr: Addr, env: Envelope) -> None:
        self._outbox.append((addr, env))

    def emit(self, event: object) -> None:
        self._events.append(event)

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        self.received.append((env, sender, now))
        self.log.append(("receive", now))
        self._events.append(Stepped("receive", now))

    def handle_timer(self, now: float) -> None:
        self.timers.append(now)
        self.log.append(("timer", now))
        self._events.append(Stepped("timer", now))
        self.wake_at = None

    def next_timer(self) -> float | None:
        return self.wake_at

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[object]:
        out, self._events = self._events, []
        return out


# Fields a struct checks itself (its __post_init__ refuses the rest, and the
# decoder turns that into a WireError): generate only values it accepts.
BOUNDED_FIELDS: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    Ballot: {
        "replicas": st.integers(1, MAX_REPLICAS),
        "quorum": st.integers(1, MAX_SCOUTS),
        "electorate": st.integers(1, MAX_SCOUTS),
        "mem_need": st.integers(0, 2**64 - 1),
    },
    Sync: {
        "step": st.sampled_from([SYNC_ASK, SYNC_ANSWER, SYNC_REST]),
        "fingerprint": st.integers(0, 2**64 - 1),
    },
}


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values that fit a wire field type (small, to keep examples fast)."""
    tp, exact, limit = field_limits(tp)

    def size(cap: int, small: int) -> dict[str, Any]:
        if exact is not None:
            return {"min_size": exact, "max_size": exact}
        return {"max_size": min(cap, small, limit if limit is not None else cap)}

    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**63), 2**64 - 1)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(**size(MAX_STR, 40))
    if tp is bytes:
        return st.binary(**size(MAX_BYTES, 64))
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return st.sampled_from(list(tp))
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | strategy_for(inner)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), **size(MAX_ITEMS, 4)).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, Struct):
        return struct_strategy(tp, strategy_for)
    raise TypeError(f"no strategy for {tp!r}")


def struct_strategy(
    tp: type[Struct], field: typing.Callable[[Any], st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """A wire struct whose fields come from ``field(type)`` (``BOUNDED_FIELDS``
    where the struct checks its own)."""
    hints = typing.get_type_hints(tp, include_extras=True)
    own = BOUNDED_FIELDS.get(tp, {})
    made = {
        f.name: own[f.name] if f.name in own else field(hints[f.name])
        for f in fields(typing.cast(Any, tp))
        if f.init
    }
    return st.builds(tp, **made)


def envelopes(cls: type[Message]) -> st.SearchStrategy[Envelope]:
    return st.builds(
        Envelope,
        sender=st.binary(min_size=20, max_size=20),
        msg_id=st.integers(0, 2**64 - 1),
        message=strategy_for(cls),
    )


def any_envelope() -> st.SearchStrategy[Envelope]:
    return st.one_of([envelopes(cls) for cls in message_types().values()])


def run_hexamesh(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``hexamesh`` CLI as a user runs it, in a child process (``env``:
    variables added to ours)."""
    import os
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "hexamesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# -- keys: every frame proves its sender, so a test node's id is its key's ------

RING = KeyRing(bytes(32))  # the swarm key of test swarms


@functools.cache
def identity(n: int) -> Identity:
    """Test node ``n``'s key pair (the same in every run)."""
    return Identity.from_private_bytes(bytes([n]) * 32)


def nid(n: int) -> bytes:
    """Test node ``n``'s id: its key's hash, as frames from it prove."""
    return identity(n).node_id


def codec(n: int, ring: KeyRing = RING) -> Codec:
    """What test node ``n`` seals and opens frames with."""
    return Codec(ring, Authenticator(identity(n)))
