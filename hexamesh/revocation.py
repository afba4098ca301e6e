"""Revocation: an operator removes one node from the swarm, for good.

A :class:`Revocation` names a node id and is signed by an operator key
(``hexamesh.operator``). Every agent that holds one enforces it: frames from
the node are refused (``peerauth``), the failure detector holds it dead and
takes no news of it (``Membership.revoke``), its peer channels are closed,
its DHT records are ignored. The node keeps the swarm key it had: a key
rotation (``swarm rotate``) is what keeps it out for good.

:class:`Revocations` (sans-IO, time injected) holds the revocations this
node knows and spreads new ones: each is sent to every comb link when first
learned, sent again ``RESENDS`` times ``RESEND_EVERY`` apart (datagrams get
lost; the flood's redundancy does the rest), and sent to links that appear
later (a node that was away learns when it links again). A revocation is
verified once: the same bytes again cost a dictionary lookup.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgpack

from hexamesh.identity import (
    NODE_ID_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    short_id,
    verify,
)
from hexamesh.limits import MAX_REVOCATIONS
from hexamesh.net.base import Addr
from hexamesh.wire import Envelope, Len, Message, Struct, message, struct

__all__ = [
    "REVOCATIONS_FILE_NAME",
    "REVOCATION_MESSAGES",
    "Revocation",
    "Revocations",
    "Revoke",
    "load_revocations",
    "save_revocations",
    "sign_revocation",
]

log = logging.getLogger(__name__)

REVOCATIONS_FILE_NAME = "revoked"  # in the data dir: one JSON revocation per line
RESENDS = 3  # times a new revocation is sent to the links again
RESEND_EVERY = 2.0  # s between those
_CONTEXT = b"hexamesh revocation v1"


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation(Struct):
    node: Annotated[bytes, Len(NODE_ID_BYTES)]
    issued: int  # Unix seconds, for the operator's records
    operator: Annotated[bytes, Len(PUBLIC_KEY_BYTES)]
    signature: Annotated[bytes, Len(SIGNATURE_BYTES)]

    def signed_bytes(self) -> bytes:
        return _signed_bytes(self.node, self.issued, self.operator)

    def to_json(self) -> dict[str, object]:
        """As the API shows it and the data dir keeps it (bytes in hex)."""
        return {
            "node": self.node.hex(),
            "issued": self.issued,
            "operator": self.operator.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, doc: object) -> Revocation:
        """Inverse of ``to_json``; ValueError for anything else."""
        if not isinstance(doc, dict):
            raise ValueError("a revocation is an object")
        issued = doc.get("issued")
        if not isinstance(issued, int) or isinstance(issued, bool):
            raise ValueError("`issued` is Unix seconds")
        fields = {k: doc.get(k) for k in ("node", "operator", "signature")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ValueError("`node`, `operator` and `signature` are hex")
        return cls(
            node=bytes.fromhex(str(fields["node"])),
            issued=issued,
            operator=bytes.fromhex(str(fields["operator"])),
            signature=bytes.fromhex(str(fields["signature"])),
        )

    def valid(self, operators: frozenset[bytes]) -> bool:
        """Signed by one of ``operators``?"""
        return self.operator in operators and verify(
            self.operator, self.signature, self.signed_bytes()
        )


def _signed_bytes(node: bytes, issued: int, operator: bytes) -> bytes:
    return _CONTEXT + bytes(msgpack.packb([node, issued, operator], use_bin_type=True))


def sign_revocation(operator: Identity, node: bytes, *, now: float) -> Revocation:
    issued = int(now)
    sig = operator.sign(_signed_bytes(node, issued, operator.public_key))
    return Revocation(node=node, issued=issued, operator=operator.public_key, signature=sig)


@message(0x0401)
@dataclass(frozen=True, slots=True, kw_only=True)
class Revoke(Message):
    """An operator revoked a node: enforce it, and pass it on to your links."""

    revocation: Revocation


REVOCATION_MESSAGES: tuple[type[Message], ...] = (Revoke,)


class Revocations:
    """The revocations this node holds, and their spread (above)."""

    def __init__(
        self,
        me: bytes,
        operators: frozenset[bytes],
        links: Callable[[], Iterable[Addr]],
        on_revoked: Callable[[bytes, float], None],
        rng_bits: Callable[[int], int],
        known: Iterable[Revocation] = (),
    ) -> None:
        """``links()``: the addresses to spread to (the comb's links);
        ``on_revoked(node, now)``: enforce a new one; ``known``: revocations
        kept from before (enforced by the caller already)."""
        self.me = me
        self.operators = operators
        self._links = links
        self._on_revoked = on_revoked
        self._bits = rng_bits
        self.held: dict[bytes, Revocation] = {r.node: r for r in known}
        self._told: dict[bytes, set[Addr]] = {}  # node -> links it was sent to
        self._resends: dict[bytes, tuple[int, float]] = {}  # node -> (left, next at)
        # while any is held, links are looked at this often (new ones are told)
        self._next: float | None = 0.0 if self.held else None
        self._outbox: list[tuple[Addr, Envelope]] = []
        self.refused = 0  # revocations not signed by an operator we trust, or over the cap
        self.new: list[Revocation] = []  # learned since the caller last saved them

    def __contains__(self, node: object) -> bool:
        return node in self.held

    def revoke(self, revocation: Revocation, now: float) -> bool:
        """Take ``revocation`` (ours or a peer's): True if it is new and holds."""
        node = revocation.node
        held = self.held.get(node)
        if held is not None:
            return False
        if node == self.me or len(self.held) >= MAX_REVOCATIONS:
            self.refused += 1
            return False
        if not revocation.valid(self.operators):
            self.refused += 1
            return False
        self.held[node] = revocation
        self.new.append(revocation)
        log.warning("node %s is revoked by an operator: cut off", short_id(node))
        self._on_revoked(node, now)
        self._spread(node)
        self._resends[node] = (RESENDS, now + RESEND_EVERY)
        self._next = now + RESEND_EVERY
        return True

    # -- core interface ---------------------------------------------------

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        msg = env.message
        if isinstance(msg, Revoke):
            self.revoke(msg.revocation, now)

    def handle_timer(self, now: float) -> None:
        for node, (left, at) in list(self._resends.items()):
            if now < at:
                continue
            self._told[node] = set()  # all links again
            self._spread(node)
            if left <= 1:
                del self._resends[node]
            else:
                self._resends[node] = (left - 1, now + RESEND_EVERY)
        for node in self.held:  # links that appeared since
            self._spread(node)
        self._next = now + RESEND_EVERY if self.held else None

    def next_timer(self) -> float | None:
        return self._next

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[object]:
        return []  # enforcement is the on_revoked callback's

    def _spread(self, node: bytes) -> None:
        told = self._told.setdefault(node, set())
        msg = Revoke(revocation=self.held[node])
        for addr in self._links():
            if addr not in told:
                told.add(addr)
                env = Envelope(sender=self.me, msg_id=self._bits(64), message=msg)
                self._outbox.append((addr, env))


def load_revocations(data_dir: Path, operators: frozenset[bytes]) -> list[Revocation]:
    """The revocations kept in the data dir that still verify."""
    path = data_dir / REVOCATIONS_FILE_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rev = Revocation.from_json(json.loads(line))
        except ValueError:
            log.warning("%s: a line that is no revocation, skipped", path)
            continue
        if rev.valid(operators):
            out.append(rev)
    return out


def save_revocations(data_dir: Path, revocations: Iterable[Revocation]) -> None:
    """Append ``revocations`` to the data dir's file."""
    with (data_dir / REVOCATIONS_FILE_NAME).open("a") as f:
        f.writelines(json.dumps(r.to_json()) + "\n" for r in revocations)
