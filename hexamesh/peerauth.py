"""Who sent a frame: sender authentication and replay windows, inside the seal.

The swarm key seals every frame (``wire.Codec``): it keeps outsiders out, but
any key holder could write any sender id into an envelope. So inside the seal
each frame carries proof of its sender, by the node key whose hash is the
sender's id (``identity.node_id_for``)::

    authenticated = kind (1) | sender public key (32) | counter (8) | proof | frame

* ``PAIRED`` (proof: a 16-byte keyed BLAKE2b of kind, counter and frame):
  when the sender knows who is at the destination address (an authenticated
  frame came from there in the last ``PAIRED_FOR``), it MACs with a key only
  the two of them can compute: X25519 of their node keys (the Ed25519 keys
  converted, as libsodium's ``crypto_sign_ed25519_*_to_curve25519``), hashed
  with both public keys in the order of the direction. The destination is
  bound too: a captured frame replayed to another node fails its MAC. The
  static-static agreement of Noise's KK, cached per peer: no handshake.
* ``SIGNED`` (proof: an Ed25519 signature of the same): first contact, while
  the sender does not know who is at the address. The answer, ``PAIRED``,
  teaches it. (Not bound to the destination: docs/security.md.)

The counter is the sender's clock in microseconds, strictly increasing, so it
needs no state on disk and a restart continues above it. A receiver keeps, per
sender, the highest counter and the counters of the last ``REPLAY_WINDOW``
below it (datagrams arrive out of order): a counter seen or below the window
is a replay; one further than ``MAX_CLOCK_SKEW`` from the receiver's clock is
stale. Both are dropped and counted (``AuthStats``), as are frames with no or a
false proof, and frames of a node an operator revoked. Per-peer state is an
LRU of ``limits.AUTH_PEERS``: an evicted sender's frames of the last
``MAX_CLOCK_SKEW`` could be replayed once.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from hexamesh.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, node_id_for, verify
from hexamesh.limits import AUTH_PEERS, AUTH_SEEN, MAX_CLOCK_SKEW

if TYPE_CHECKING:
    from hexamesh.net.base import Addr  # (net.base imports wire, which imports this)

__all__ = [
    "AUTH_OVERHEAD",
    "MAX_CLOCK_SKEW",
    "PAIRED_FOR",
    "AuthError",
    "AuthStats",
    "Authenticator",
    "Proof",
    "auth_overhead",
]

# Reordering a receiver tolerates: a counter this far below the highest seen
# from its sender is still taken once (UDP reorders within milliseconds).
REPLAY_WINDOW = 2.0  # s
# A sender MACs for the node at an address only this long after an
# authenticated frame from there: past it, a node that changed its key at the
# same address (a reinstall) gets signed frames again and can read them.
PAIRED_FOR = 60.0  # s

_COUNTER_BYTES = 8
_MAC_BYTES = 16
_HEAD_BYTES = 1 + PUBLIC_KEY_BYTES + _COUNTER_BYTES
_PAIR_CONTEXT = b"hexamesh pair v1"
_P = 2**255 - 19  # the field of Curve25519 / Ed25519


class Proof(enum.IntEnum):
    PAIRED = 1
    SIGNED = 2


_PROOF_BYTES = {Proof.PAIRED: _MAC_BYTES, Proof.SIGNED: SIGNATURE_BYTES}
AUTH_OVERHEAD = _HEAD_BYTES + SIGNATURE_BYTES  # the most a frame grows by


def auth_overhead(proof: Proof) -> int:
    """Bytes the authentication adds to a frame with this kind of proof."""
    return _HEAD_BYTES + _PROOF_BYTES[proof]


class AuthError(ValueError):
    """A frame whose sender cannot be believed (the driver drops and counts it)."""


@dataclass
class AuthStats:
    signed_sent: int = 0
    paired_sent: int = 0
    accepted: int = 0
    # dropped, by why
    unproven: int = 0  # no or a malformed proof, an unknown kind
    forged: int = 0  # a proof that does not verify (or a key that is not one)
    replayed: int = 0  # a counter seen already, or below the sender's window
    stale: int = 0  # a counter further than MAX_CLOCK_SKEW from our clock
    revoked: int = 0  # from a node an operator revoked (``hexamesh.revocation``)

    def dropped(self) -> dict[str, int]:
        return {
            "unproven": self.unproven,
            "forged": self.forged,
            "replayed": self.replayed,
            "stale": self.stale,
            "revoked": self.revoked,
        }


def x25519_private(identity: Identity) -> X25519PrivateKey:
    """The X25519 key of an Ed25519 key: its seed's SHA-512, first half (the
    X25519 function clamps it as Ed25519 does)."""
    seed = identity.private_bytes()
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def x25519_public(ed25519_public: bytes) -> X25519PublicKey:
    """The Montgomery form u = (1 + y) / (1 - y) of an Edwards public key."""
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise AuthError("not a public key")
    u = (1 + y) * pow(1 - y, -1, _P) % _P  # an inverse by Euclid: ~8x faster than Fermat
    return X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))


@dataclass(slots=True)
class _Peer:
    """What we keep about one sender: its pair keys and its replay window."""

    public: bytes
    node_id: bytes
    key_in: bytes | None = None  # its frames to us are MACed with this
    key_out: bytes | None = None  # and ours to it
    highest: int = 0
    floor: int = 0  # counters at or below are replays
    seen: set[int] = field(default_factory=set)  # counters above floor taken
    order: list[int] = field(default_factory=list)  # the same, a heap: oldest first


class Authenticator:
    """Adds and checks the proof of the sender (above). Sans-IO: the clock is
    injected; the driver's ``Codec`` calls it for every frame both ways."""

    def __init__(
        self,
        identity: Identity,
        *,
        clock: Callable[[], float] = time.time,
        revoked: Callable[[bytes], bool] = lambda node: False,
    ) -> None:
        """``revoked(node)``: frames of that node are refused (an operator
        revoked it), before any proof is checked."""
        self.identity = identity
        self._clock = clock
        self._revoked = revoked
        self._x25519 = x25519_private(identity)
        self._counter = 0
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()  # by public key
        self._at: OrderedDict[Addr, tuple[bytes, float]] = OrderedDict()  # -> public key, when
        self.stats = AuthStats()

    # -- sending ---------------------------------------------------------------

    def wrap(self, frame: bytes, to: Addr | None) -> bytes:
        """``frame`` with the proof that we sent it, for the node at ``to``."""
        now = self._clock()
        self._counter = counter = max(self._counter + 1, int(now * 1e6))
        head_counter = counter.to_bytes(_COUNTER_BYTES, "big")
        known = self._at.get(to) if to is not None else None
        if known is not None and now - known[1] <= PAIRED_FOR:
            peer = self._peers.get(known[0])
            if peer is not None and peer.key_out is not None:
                self.stats.paired_sent += 1
                head = bytes((Proof.PAIRED,)) + self.identity.public_key + head_counter
                return head + self._mac(peer.key_out, head[0:1], head_counter, frame) + frame
        self.stats.signed_sent += 1
        head = bytes((Proof.SIGNED,)) + self.identity.public_key + head_counter
        return head + self.identity.sign(head[0:1] + head_counter + frame) + frame

    # -- receiving -------------------------------------------------------------

    def unwrap(self, data: bytes, source: Addr | None) -> tuple[bytes, bytes]:
        """The sender's node id and the frame, if the proof holds and the
        counter is new; else AuthError. ``source``: the address it came from,
        remembered as that node's (None: not a datagram address)."""
        if len(data) < _HEAD_BYTES or data[0] not in _PROOF_BYTES:
            self.stats.unproven += 1
            raise AuthError("no proof of the sender")
        proof = Proof(data[0])
        public = data[1 : 1 + PUBLIC_KEY_BYTES]
        head_counter = data[1 + PUBLIC_KEY_BYTES : _HEAD_BYTES]
        end = _HEAD_BYTES + _PROOF_BYTES[proof]
        if len(data) < end:
            self.stats.unproven += 1
            raise AuthError("truncated proof")
        tag, frame = data[_HEAD_BYTES:end], data[end:]
        if public == self.identity.public_key:
            self.stats.forged += 1
            raise AuthError("a frame in our own name")
        # Kept (and its window moved) only once the proof holds: a false one
        # must not push a real peer's replay window out of the LRU.
        peer = self._peers.get(public) or _Peer(public=public, node_id=node_id_for(public))
        if self._revoked(peer.node_id):
            self.stats.revoked += 1
            raise AuthError("its node is revoked")
        try:
            if proof is Proof.SIGNED:
                ok = verify(public, tag, data[0:1] + head_counter + frame)
                if ok:
                    self._keys(peer)  # agreed now, so that our answer is PAIRED
            else:
                mac = self._mac(self._keys(peer)[0], data[0:1], head_counter, frame)
                ok = hmac.compare_digest(tag, mac)
        except AuthError:
            ok = False
        if not ok:
            self.stats.forged += 1
            raise AuthError(f"false {proof.name.lower()} proof")
        self._remember(peer)
        now = self._clock()
        self._check_counter(peer, int.from_bytes(head_counter, "big"), now)
        self.stats.accepted += 1
        if source is not None:
            self._at[source] = (public, now)
            self._at.move_to_end(source)
            if len(self._at) > AUTH_PEERS:
                self._at.popitem(last=False)
        return peer.node_id, frame

    def _check_counter(self, peer: _Peer, counter: int, now: float) -> None:
        now_us = now * 1e6
        if abs(counter - now_us) > MAX_CLOCK_SKEW * 1e6:
            self.stats.stale += 1
            raise AuthError(
                f"sender's clock is {(counter - now_us) / 1e6:+.0f} s from ours "
                f"(more than {MAX_CLOCK_SKEW:.0f} s)"
            )
        if counter <= peer.floor or counter in peer.seen:
            self.stats.replayed += 1
            raise AuthError("replayed")
        peer.seen.add(counter)
        heapq.heappush(peer.order, counter)
        if counter > peer.highest:
            peer.highest = counter
            peer.floor = max(peer.floor, counter - int(REPLAY_WINDOW * 1e6))
        # Forget what fell below the window, and past AUTH_SEEN the oldest
        # (raising the window's floor to it).
        order, seen = peer.order, peer.seen
        while order and (order[0] <= peer.floor or len(order) > AUTH_SEEN):
            oldest = heapq.heappop(order)
            seen.discard(oldest)
            peer.floor = max(peer.floor, oldest)

    # -- keys ------------------------------------------------------------------

    def _remember(self, peer: _Peer) -> None:
        """Keep ``peer`` (whose proof held) as the most recently used."""
        self._peers[peer.public] = peer
        self._peers.move_to_end(peer.public)
        if len(self._peers) > AUTH_PEERS:
            self._peers.popitem(last=False)

    def _keys(self, peer: _Peer) -> tuple[bytes, bytes]:
        """(its key to us, ours to it), agreed once per peer; AuthError for a
        key no secret can be agreed with (not a point, or of low order)."""
        if peer.key_in is None or peer.key_out is None:
            try:
                shared = self._x25519.exchange(x25519_public(peer.public))
            except ValueError:  # all-zero: a low-order point
                raise AuthError("a key no secret can be agreed with") from None
            mine, theirs = self.identity.public_key, peer.public
            peer.key_in = _pair_key(shared, theirs, mine)
            peer.key_out = _pair_key(shared, mine, theirs)
        return peer.key_in, peer.key_out

    @staticmethod
    def _mac(key: bytes, kind: bytes, counter: bytes, frame: bytes) -> bytes:
        return hashlib.blake2b(kind + counter + frame, key=key, digest_size=_MAC_BYTES).digest()


def _pair_key(shared: bytes, sender: bytes, receiver: bytes) -> bytes:
    """The key of frames from ``sender`` to ``receiver`` (one per direction)."""
    return hashlib.blake2b(_PAIR_CONTEXT + sender + receiver, key=shared, digest_size=32).digest()
