"""Hypothesis strategies for hostile peers: well-formed messages, extreme values.

Every registered wire type, with fields drawn from the edges of what the wire
allows (0, -1, 2^63-1, 2^64-1, huge floats, empty and maximal strings with
newlines and NULs, arrays at their bound with duplicates) and node ids that
name the receiver itself, nobody, or a fixed stranger: the inputs a holder of
the swarm key can seal and send.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any

from hypothesis import strategies as st

from hexamesh.identity import NODE_ID_BYTES
from hexamesh.wire import (
    MAX_BYTES,
    MAX_STR,
    Envelope,
    Message,
    Struct,
    field_limits,
    message_types,
)
from tests.helpers import struct_strategy

EXTREME_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
EXTREME_FLOATS = [0.0, -0.0, 5e-324, 1e-308, 1e308, -1e308, 0.5, 1e15, -1.0]
STRANGER = b"\x5a" * NODE_ID_BYTES


def hostile(tp: Any, me: bytes, *, longest: int = MAX_STR) -> st.SearchStrategy[Any]:
    """Values of a wire field type, from its edges; ``me``: the receiver's id;
    ``longest``: the longest string drawn (a step of a stateful test is printed)."""
    tp, exact, limit = field_limits(tp)

    def again(inner: Any) -> st.SearchStrategy[Any]:
        return hostile(inner, me, longest=longest)

    def size(cap: int) -> tuple[int, int]:
        if exact is not None:
            return exact, exact
        return 0, min(cap, limit if limit is not None else math.inf)  # type: ignore[return-value]

    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.sampled_from(EXTREME_INTS) | st.integers(-(2**63), 2**64 - 1)
    if tp is float:
        return st.sampled_from(EXTREME_FLOATS) | st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        low, high = size(longest)
        edges = [s for s in ("", "\n", "a\x00b", "é" * high, "x" * high) if low <= len(s) <= high]
        return st.sampled_from(edges) | st.text(min_size=low, max_size=min(high, 32))
    if tp is bytes:
        low, high = size(MAX_BYTES)
        if exact == NODE_ID_BYTES:
            return st.sampled_from([me, bytes(NODE_ID_BYTES), STRANGER]) | st.binary(
                min_size=exact, max_size=exact
            )
        return st.binary(min_size=low, max_size=min(high, 64))
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return st.sampled_from(list(tp))
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | again(inner)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            low, high = size(6)
            items = st.lists(again(args[0]), min_size=low, max_size=high)
            # duplicates on purpose: the same update, vote or contact twice
            return items.map(lambda xs: tuple(xs + xs[:1])[:high] if xs else tuple(xs))
        return st.tuples(*(again(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, Struct):
        return struct_strategy(tp, again)
    raise TypeError(f"no strategy for {tp!r}")


def hostile_envelopes(me: bytes, *, longest: int = MAX_STR) -> st.SearchStrategy[Envelope]:
    """An envelope of any registered (non-test) message type, from anyone."""
    real: list[type[Message]] = [c for t, c in sorted(message_types().items()) if t < 0xFF00]
    # deferred: a state machine's rule prints its strategies, and this one's
    # repr (every message type, field by field) is tens of kB
    return st.deferred(
        lambda: st.builds(
            Envelope,
            sender=st.sampled_from([me, STRANGER]) | st.binary(min_size=20, max_size=20),
            msg_id=st.sampled_from([0, 1, 2**64 - 1]) | st.integers(0, 2**64 - 1),
            message=st.one_of([hostile(cls, me, longest=longest) for cls in real]),
        )
    )
