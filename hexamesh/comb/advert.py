"""What a node says of itself and is routed by, signed, so relays cannot forge it.

Two such things: a dance's advert (below) and a SWIM refutation or return,
"alive at incarnation n" (``alive_bytes``, checked in ``swim.members``).

A dance travels two rings: its own node pushes it to its links (proven by the
frame, ``peerauth``), and they relay it on. A relay could write anything into
the dance of another node, and traffic goes where dances say: the *advert* of
a dance (node, address, cell, incarnation, status, models) is therefore signed
by its node's key. Its changing figures (load, queue, KV use...) are not: a
relay lying about them can move load, not requests to itself.

The proof (public key and Ed25519 signature, 96 bytes) rides the node's own
dance for a few pushes after its advert changes and every ``PROOF_EVERY``
pushes; a relay passes a proof new to it on twice (``relay_pushes``), the
node's periodic one once, and its proofs to each new link of its own. A receiver checks it once per
advert and then takes relayed dances whose advert it has proven, with or
without a proof; a relayed dance whose advert it has not proven is dropped.

The simulator stands in for the signatures (``StandInSigner``: its hosts do
not lie; the proof's bytes are counted as on the wire).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgpack

from hexamesh.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, node_id_for, verify

if TYPE_CHECKING:
    from hexamesh.comb.waggle import Dance

__all__ = [
    "PROOF_BYTES",
    "PROOF_EVERY",
    "PROOF_FRESH",
    "NodeKeySigner",
    "Signer",
    "StandInSigner",
    "advert_bytes",
    "alive_bytes",
]

PROOF_BYTES = PUBLIC_KEY_BYTES + SIGNATURE_BYTES
# A node's own dance carries its proof this many pushes after its advert changed
# (one lost datagram is not a ring that cannot prove it) ...
PROOF_FRESH = 3
# ... and every this many pushes (heartbeats), relayed once by each link: a
# backstop, as a relay passes its proofs to each new link of its own. 96
# bytes to ~36 nodes a minute: ~60 B/s a node.
PROOF_EVERY = 30
_CONTEXT = b"hexamesh advert v1"


def advert_bytes(d: Dance) -> bytes:
    """The signed part of a dance, canonically encoded."""
    packed: bytes = msgpack.packb(
        [_CONTEXT, d.node, d.host, d.port, d.q, d.r, d.incarnation, d.status, list(d.models)],
        use_bin_type=True,
    )
    return packed


_ALIVE = b"hexamesh alive v1"


def alive_bytes(node: bytes, host: str, port: int, incarnation: int) -> bytes:
    """The signed part of a node's word that it is alive at ``incarnation``
    (a SWIM refutation or return), canonically encoded (the node second, as
    in an advert: the simulator's stand-in reads it there)."""
    packed: bytes = msgpack.packb([_ALIVE, node, host, port, incarnation], use_bin_type=True)
    return packed


class Signer(Protocol):
    def sign(self, advert: bytes) -> bytes:
        """Our proof of ``advert`` (PROOF_BYTES)."""
        ...

    def verify(self, node: bytes, advert: bytes, proof: bytes) -> bool:
        """True when ``proof`` is ``node``'s of ``advert``; never raises."""
        ...


class NodeKeySigner:
    """The agent's: Ed25519 by the node key; the proof names the key, whose
    hash must be the dance's node id."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def sign(self, advert: bytes) -> bytes:
        return self.identity.public_key + self.identity.sign(advert)

    def verify(self, node: bytes, advert: bytes, proof: bytes) -> bool:
        if len(proof) != PROOF_BYTES:
            return False
        public, signature = proof[:PUBLIC_KEY_BYTES], proof[PUBLIC_KEY_BYTES:]
        return node_id_for(public) == node and verify(public, signature, advert)


class StandInSigner:
    """The simulator's: a proof of the right size that names its node, no
    cryptography (its hosts do not lie)."""

    def sign(self, advert: bytes) -> bytes:
        node = msgpack.unpackb(advert)[1]
        return bytes(node).ljust(PROOF_BYTES, b"\0")

    def verify(self, node: bytes, advert: bytes, proof: bytes) -> bool:
        return len(proof) == PROOF_BYTES and proof.startswith(node)
