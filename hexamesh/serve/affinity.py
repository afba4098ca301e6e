"""Prefix affinity: a repeat of a prompt's prefix goes back to the server
whose KV cache holds it.

vLLM's automatic prefix caching (on in the engines the agent starts) skips
the prefill of blocks it served before; a multi-turn chat, or an agent loop
with a long system prompt, pays its whole prefill again on any other server.
So the router remembers which server served which prefix and adds
``weight_affinity`` times the share of the prompt it holds to that server's
score; load still wins when the server is saturated (``router``: saturated
servers go behind the others), and a server that dies, or refuses a request
(a 4xx: too long for its context), loses its entries.

A prefix is hashed as vLLM hashes its cache: in blocks, each block's hash
chained to the one before, so a hash names a whole prefix. The text is the
prompt, or for a chat the tools and the messages in order (the router does
not tokenise: ``BLOCK_CHARS`` characters stand for a block). Only
*checkpoints* are kept and looked up, the hashes after 1, 2, 4, 8... blocks,
every eighth of the largest power of two below the prompt's length, and the
last whole block: a lookup costs some 20 probes at most, and the longest
checkpoint held says how much of the prompt the server holds, to within an
eighth.

The hint travels with a forward (``x-hexamesh-prefix``: the checkpoints),
so a hop and the server learn the prefix without hashing it again, and any
agent on the path can send the next turn back. Bounds: ``MAX_PREFIXES``
checkpoints per agent (least recently used go), each forgotten after
``PREFIX_TTL``; ``MAX_MARKS`` checkpoints in a header.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOCK_CHARS",
    "H_PREFIX",
    "AffinityTable",
    "Marks",
    "marks_of",
    "parse_marks",
]

H_PREFIX = "x-hexamesh-prefix"
BLOCK_CHARS = 256  # characters per block: ~64 tokens of English (vLLM hashes 16-token blocks)
MIN_BLOCKS = 2  # a prompt shorter than this has no prefill worth routing for
PREFIX_TTL = 600.0  # s a server is remembered for a prefix (its cache may evict it sooner)
MAX_PREFIXES = 65536  # checkpoints remembered per agent, ~120 bytes each: 8 MiB at the bound
MAX_MARKS = 32  # checkpoints in a header: more than ~20 are never made
MAX_BLOCKS = 1 << 24  # blocks a header may claim: far past any context (4 GiB of prompt)


@dataclass(frozen=True, slots=True)
class Marks:
    """A prompt's checkpoints: (blocks, hash of the prefix of that many
    blocks), fewest blocks first, and the prompt's whole blocks."""

    points: tuple[tuple[int, str], ...]
    blocks: int

    def header(self) -> str:
        return ",".join(f"{n}:{h}" for n, h in self.points)

    @property
    def root(self) -> bytes:
        """The first block's hash: spreads distinct prefixes over equal servers."""
        return bytes.fromhex(self.points[0][1]) if self.points else b""


def prefix_text(body: Mapping[str, Any], chat: bool) -> str:
    """What a request's prefix is: its prompt, or a chat's tools and messages."""
    if not chat:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    parts = []
    tools = body.get("tools")
    if tools:
        parts.append(json.dumps(tools, sort_keys=True))
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
        parts.append(f"<{m.get('role')}>{content}")
    return "\n".join(parts)


def marks_of(body: Mapping[str, Any], chat: bool) -> Marks | None:
    """The checkpoints of a request's prefix; None if it is too short to matter."""
    data = prefix_text(body, chat).encode()
    blocks = len(data) // BLOCK_CHARS
    if blocks < MIN_BLOCKS:
        return None
    wanted = _checkpoints(blocks)
    points = []
    h = b""
    for i in range(blocks):
        block = data[i * BLOCK_CHARS : (i + 1) * BLOCK_CHARS]
        h = hashlib.blake2b(h + block, digest_size=8).digest()
        if i + 1 in wanted:
            points.append((i + 1, h.hex()))
    return Marks(tuple(points[-MAX_MARKS:]), blocks)


def _checkpoints(blocks: int) -> set[int]:
    """Where a prompt of ``blocks`` blocks is marked: 1, 2, 4, 8..., then every
    eighth of the largest power of two below it, and its end. A conversation's
    next turn finds its last turn's prompt to within that eighth (a power of
    two alone would say 32 of 50 blocks), in at most ~20 marks."""
    top = 1 << (blocks.bit_length() - 1)
    step = max(1, top // 8)
    marks = {1 << k for k in range(blocks.bit_length())}
    marks |= set(range(step, blocks + 1, step))
    return {n for n in marks if n <= blocks} | {blocks}


def parse_marks(text: str | None) -> Marks | None:
    """Checkpoints from a forward's header (anyone's: malformed ones are None)."""
    if not text:
        return None
    points = []
    try:
        for item in text.split(",", MAX_MARKS)[:MAX_MARKS]:
            n, _, h = item.partition(":")
            if len(h) != 16:
                return None
            bytes.fromhex(h)
            points.append((int(n), h))
    except ValueError:
        return None
    counts = [n for n, _ in points]
    if not points or counts[0] <= 0 or counts[-1] > MAX_BLOCKS or counts != sorted(set(counts)):
        return None
    return Marks(tuple(points), points[-1][0])


class AffinityTable:
    """Which server served which prefix checkpoint lately (an LRU)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float = PREFIX_TTL,
        capacity: int = MAX_PREFIXES,
    ) -> None:
        self._clock = clock
        self.ttl = ttl
        self.capacity = capacity
        self._held: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # hash -> (node, when)
        self._of: dict[bytes, set[str]] = {}  # node -> its hashes held (a death is one lookup)
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._held)

    def lookup(self, marks: Marks) -> dict[bytes, float]:
        """Servers holding some of the prefix -> the share of its blocks they hold."""
        now = self._clock()
        out: dict[bytes, float] = {}
        for n, h in marks.points:  # shorter first: a longer one held overwrites
            entry = self._held.get(h)
            if entry is None:
                continue
            node, when = entry
            if now - when > self.ttl:
                self._drop(h)
                continue
            out[node] = n / marks.blocks
        if out:
            self.hits += 1
        else:
            self.misses += 1
        return out

    def learn(self, marks: Marks, node: bytes) -> None:
        """``node`` served a request with this prefix: it holds every checkpoint."""
        now = self._clock()
        for _, h in marks.points:
            self._drop(h)
            self._held[h] = (node, now)
            self._of.setdefault(node, set()).add(h)
        while len(self._held) > self.capacity:
            self._drop(next(iter(self._held)))

    def _drop(self, h: str) -> None:
        entry = self._held.pop(h, None)
        if entry is not None:
            hashes = self._of.get(entry[0])
            if hashes is not None:
                hashes.discard(h)
                if not hashes:
                    del self._of[entry[0]]

    def forget(self, node: bytes, marks: Marks | None = None) -> None:
        """``node`` died (every entry of it goes) or refused this prefix (its entries go)."""
        if marks is not None:
            for _, h in marks.points:
                if self._held.get(h, (b"",))[0] == node:
                    self._drop(h)
            return
        for h in list(self._of.get(node, ())):
            self._drop(h)
