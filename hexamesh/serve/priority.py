"""A request's priority: what the client asks, what travels, what the engine gets.

A client asks with an ``x-hexamesh-priority: high|medium|low`` header, or
with vLLM's own ``priority`` field (an integer, lower first: below 0 is
high, 0 medium, above 0 low); the header wins, and neither means the
policy's default. A client's ask above the policy's ``client_max`` is
lowered to it (an admin key's is not). The entry agent routes by it
(``router``: high to long-lived servers, low to lightly loaded ones) and
sends it with a forward in the same header; the agent whose engine serves
the request writes it into the body as vLLM's ``priority``
(``ENGINE_PRIORITY``), whatever number the client wrote, so that the
engine, started with ``--scheduling-policy priority``, lets high requests
overtake queued low ones and preempts low ones first when it is full.

vLLM preempts for memory, not for a batch slot: a high request that finds
every slot taken waits for one to end, however low the requests in them.
So the serving agent keeps a share of its engine's slots (``low_reserve``)
free of low requests (:class:`LowGate`): low ones beyond the rest wait in
the agent, in order, and a high or medium request is in the next step's
batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from hexamesh.serve.router import Priority

__all__ = [
    "ENGINE_PRIORITY",
    "H_PRIORITY",
    "LowGate",
    "PriorityPolicy",
    "engine_body",
    "of_client",
]

H_PRIORITY = "x-hexamesh-priority"
# vLLM's per-request priority (lower is scheduled first; 0 is its default, so
# a medium request's body is left as it is)
ENGINE_PRIORITY = {Priority.HIGH: -1, Priority.MEDIUM: 0, Priority.LOW: 1}
_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
_FIELD = b'"priority"'


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorityPolicy:
    """Priority rules (the config's ``[policy]``)."""

    default: Priority = Priority.MEDIUM  # a request that asks for none
    client_max: Priority = Priority.HIGH  # the highest a client (not an admin) may ask
    scheduling: bool = True  # engines schedule by it (off: they get no priority, FCFS)
    low_reserve: float = 0.25  # of an engine's batch slots, the share low requests leave free


def _asked(headers: Mapping[str, str], body: Mapping[str, Any]) -> Priority | None:
    """What a request asks for; raises ValueError for a header that is none of the three."""
    header = headers.get(H_PRIORITY)
    if header is not None:
        return Priority(header.strip().lower())
    number = body.get("priority")
    if isinstance(number, int) and not isinstance(number, bool):
        if number < 0:
            return Priority.HIGH
        return Priority.LOW if number > 0 else Priority.MEDIUM
    return None


def of_client(
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    policy: PriorityPolicy,
    *,
    admin: bool = False,
) -> Priority:
    """A client's request's priority under ``policy``; ValueError for a bad header."""
    asked = _asked(headers, body) or policy.default
    return asked if admin else capped(asked, policy)


def capped(asked: Priority, policy: PriorityPolicy) -> Priority:
    """``asked``, lowered to the policy's ``client_max``."""
    return policy.client_max if _RANK[asked] > _RANK[policy.client_max] else asked


def of_peer(headers: Mapping[str, str]) -> Priority:
    """A forward's priority, as its entry agent decided (medium if it said none)."""
    try:
        return Priority(headers.get(H_PRIORITY, Priority.MEDIUM))
    except ValueError:
        return Priority.MEDIUM


def engine_body(body: bytes, priority: Priority) -> bytes:
    """The body our engine gets: vLLM's ``priority`` set from ours (a byte
    search first: a medium request without the field passes untouched)."""
    # (an escaped key, "\u0070riority", is the same key to vLLM: then parse)
    if priority is Priority.MEDIUM and _FIELD not in body and b"\\u" not in body:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body  # not ours to mend: the engine says what is wrong
    if not isinstance(doc, dict):
        return body
    doc["priority"] = ENGINE_PRIORITY[priority]
    return json.dumps(doc).encode()


LOW_WAIT_LIMIT = 60.0  # s a low request waits for a slot here; then 503 (the sender moves on)


class SlotTimeout(Exception):
    """A low request waited ``LOW_WAIT_LIMIT`` for a slot of our engine."""


class LowGate:
    """Low-priority requests in our engine, per model: at most its batch
    slots less ``reserve`` of them (at least one); more wait here, first
    come first in, at most ``LOW_WAIT_LIMIT`` (less than the sender's wait
    for an answer: no slot goes to a request whose sender left)."""

    def __init__(self, reserve: float) -> None:
        self.reserve = reserve
        self._gates: dict[str, trio.Semaphore] = {}
        self.waited = 0  # low requests that had to wait for a slot

    def limit(self, slots: int) -> int:
        return max(1, math.floor(slots * (1.0 - self.reserve)))

    async def enter(self, model: str, slots: int) -> Callable[[], None]:
        """Wait for a slot for a low request to ``model``; returns its release
        (call it once the request is over; more calls do nothing)."""
        gate = self._gates.get(model)
        if gate is None or gate.max_value != self.limit(slots):  # new, or the engine changed
            gate = self._gates[model] = trio.Semaphore(
                self.limit(slots), max_value=self.limit(slots)
            )
        if gate.value == 0:
            self.waited += 1
        with trio.move_on_after(LOW_WAIT_LIMIT) as waited:
            await gate.acquire()
        if waited.cancelled_caught:
            raise SlotTimeout(f"no engine slot for a low request within {LOW_WAIT_LIMIT:.0f} s")
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                gate.release()

        return release
