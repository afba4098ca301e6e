"""The peer channel's handshake and records: Noise XXpsk0, sans-IO.

Forwarded requests, their answers and job traffic between agents travel in a
channel keyed by the two node keys and the swarm key (docs/decisions.md,
"Forwards travel in a Noise channel, not TLS"). The handshake is Noise's
``XXpsk0`` pattern (noiseprotocol.org, revision 34) with X25519, ChaCha20-Poly1305 and
BLAKE2b, one round trip before the first request::

    -> psk, e                 the swarm key mixed in; the dialler's ephemeral key
    <- e, ee, s, es           the listener's node key, encrypted
    -> s, se                  the dialler's node key, encrypted

Where it departs from the spec: the ``s`` a side sends is its *Ed25519* node
key (so the other end can check the node id, BLAKE2b-160 of it), and the
Diffie-Hellman steps use its X25519 form (``peerauth.x25519_public``, the map
libsodium's ``crypto_sign_ed25519_pk_to_curve25519`` computes). The ``psk``
is derived from the swarm key: the listener tries each key of its ring on
message 1, so a key rotation does not cut channels.

What it gives: the listener knows at message 1 that the dialler holds the
swarm key (its tag is keyed by the psk), before any key agreement, so an
outsider costs it a few hashes (key derivation) and one AEAD per ring key
and learns nothing; the
dialler knows it reached the node it meant (the node id it pinned is the
hash of the key that answered ``es``) and that the node holds the swarm key;
the listener knows which node dialled (``se``); everything after is
encrypted and authenticated in both directions under keys that live as long
as the connection (forward secrecy by the ephemeral keys, so a replayed
handshake or record opens nothing). Node keys cross encrypted: only members
learn who is who.

What it does not: the node id is the hash of the exact Ed25519 key sent, but
the agreement sees only its X25519 form, which drops the sign bit and
clamping drops the torsion; so one private key can appear under 16 node ids
(its own and its aliases). No one can appear as *another* member's id
(that takes its private key); a member can take 16 ids instead of one,
where making keys is free anyway. (The datagrams' pair MACs share this.)

Records: a 2-byte big-endian length, then ChaCha20-Poly1305 ciphertext and its
16-byte tag, the nonce a counter per direction (``Sealer``, ``Opener``); at
most ``MAX_RECORD`` bytes of plaintext each. A record that does not open ends
the channel (``ChannelError``): the stream is cut and the request fails over.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hexamesh.identity import PUBLIC_KEY_BYTES, Identity, node_id_for
from hexamesh.peerauth import AuthError, x25519_private, x25519_public

__all__ = [
    "HANDSHAKE_BYTES",
    "MAX_RECORD",
    "PREAMBLE",
    "ChannelError",
    "Initiator",
    "Opener",
    "Responder",
    "Sealer",
    "Session",
    "channel_psk",
]

PROTOCOL = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
PREAMBLE = b"\x01HXN"  # first bytes of a dial: the peer port tells it from frames (0) and HTTP
PROLOGUE = b"hexamesh peer channel v1"
TAG = 16  # ChaCha20-Poly1305's tag
DH = 32  # an X25519 or Ed25519 public key
LENGTH = 2  # bytes of a record's (or a handshake message's) length prefix
MAX_MESSAGE = 65535  # Noise's limit on one message, tag included
MAX_RECORD = MAX_MESSAGE - TAG  # plaintext bytes per record
# The three handshake messages' sizes, length prefixes excluded (empty payloads).
HANDSHAKE_BYTES = (DH + TAG, DH + (PUBLIC_KEY_BYTES + TAG) + TAG, (PUBLIC_KEY_BYTES + TAG) + TAG)


class ChannelError(Exception):
    """A handshake or record that does not verify, or a peer that is not who was dialled."""


def channel_psk(swarm_key: bytes) -> bytes:
    """The channel's pre-shared key for one swarm key (never the key itself)."""
    return hashlib.blake2b(swarm_key, digest_size=32, person=b"hexamesh-psk-v1").digest()


def _hkdf(ck: bytes, ikm: bytes, n: int) -> list[bytes]:
    temp = hmac.digest(ck, ikm, "blake2b512")
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.digest(temp, prev + bytes([i]), "blake2b512")
        out.append(prev)
    return out


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


class _Symmetric:
    """Noise's SymmetricState (with its CipherState inside)."""

    def __init__(self) -> None:
        self.h = PROTOCOL.ljust(64, b"\x00")
        self.ck = self.h
        self.key: ChaCha20Poly1305 | None = None
        self.n = 0
        self.mix_hash(PROLOGUE)

    def copy(self) -> _Symmetric:
        other = _Symmetric.__new__(_Symmetric)
        other.h, other.ck, other.key, other.n = self.h, self.ck, self.key, self.n
        return other

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2b(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, k = _hkdf(self.ck, ikm, 2)
        self.key, self.n = ChaCha20Poly1305(k[:32]), 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, h, k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(h)
        self.key, self.n = ChaCha20Poly1305(k[:32]), 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.key is not None  # every message of XXpsk0 is keyed (the psk comes first)
        out = self.key.encrypt(_nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        assert self.key is not None
        try:
            out = self.key.decrypt(_nonce(self.n), ciphertext, self.h)
        except InvalidTag:
            raise ChannelError("a handshake message does not verify") from None
        self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return k1[:32], k2[:32]


class Sealer:
    """One direction's sending half: plaintext in, length-prefixed records out."""

    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        if not data:
            return b""  # (an empty record is never sent: ``Opener`` refuses one)
        if len(data) <= MAX_RECORD:  # the common case: one token, one record
            record = self._aead.encrypt(_nonce(self._n), bytes(data), None)
            self._n += 1
            return len(record).to_bytes(LENGTH, "big") + record
        out = []
        for i in range(0, len(data), MAX_RECORD):
            record = self._aead.encrypt(_nonce(self._n), bytes(data[i : i + MAX_RECORD]), None)
            self._n += 1
            out.append(len(record).to_bytes(LENGTH, "big") + record)
        return b"".join(out)


class Opener:
    """One direction's receiving half: bytes off the socket in, plaintext out.

    Keeps a partial record until the rest comes; ``pending`` is true while it
    holds one (a pooled connection must not)."""

    __slots__ = ("_aead", "_buf", "_n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def open(self, data: bytes) -> bytes:
        """The plaintext of every whole record so far (b"" if none is whole
        yet); raises ChannelError on a record that does not verify."""
        buf = self._buf
        buf += data
        out = []
        at = 0
        while len(buf) - at >= LENGTH:
            size = int.from_bytes(buf[at : at + LENGTH], "big")
            if size <= TAG:  # an empty record: never sent (it would only reset a stall timer)
                raise ChannelError(f"a record of {size} bytes holds nothing")
            end = at + LENGTH + size
            if end > len(buf):
                break
            try:
                out.append(self._aead.decrypt(_nonce(self._n), bytes(buf[at + LENGTH : end]), None))
            except InvalidTag:
                raise ChannelError("a record does not verify (tampered, or out of order)") from None
            self._n += 1
            at = end
        if at:
            del buf[:at]
        return out[0] if len(out) == 1 else b"".join(out)


@dataclass(frozen=True, slots=True)
class Session:
    """A finished handshake: the other end's node key and the two directions."""

    peer_public: bytes  # its Ed25519 node key
    sealer: Sealer
    opener: Opener

    @property
    def peer(self) -> bytes:
        return node_id_for(self.peer_public)


def _their_x25519(ed25519_public: bytes) -> X25519PublicKey:
    try:
        return x25519_public(ed25519_public)
    except AuthError:
        raise ChannelError("the peer's node key is not a valid public key") from None


@functools.lru_cache(maxsize=8)
def _static(identity: Identity) -> X25519PrivateKey:
    """A node key's X25519 form, derived once (a node has one key)."""
    return x25519_private(identity)


def _dh(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:  # a small-order point: the shared secret would be all zeros
        raise ChannelError("a handshake key is not usable") from None


class Initiator:
    """The dialling side. ``expect``: the node id the dialler means to reach."""

    def __init__(self, identity: Identity, swarm_key: bytes, expect: bytes) -> None:
        self._identity = identity
        self._static = _static(identity)
        self._psk = channel_psk(swarm_key)
        self._expect = expect
        self._sym = _Symmetric()
        self._e = X25519PrivateKey.generate()

    def first(self) -> bytes:
        """Message 1: ``psk, e``."""
        sym = self._sym
        sym.mix_key_and_hash(self._psk)
        e = _raw(self._e.public_key())
        sym.mix_hash(e)
        sym.mix_key(e)  # a psk handshake mixes e into the key too
        return e + sym.encrypt_and_hash(b"")

    def third(self, second: bytes) -> tuple[bytes, Session]:
        """Read message 2 (``e, ee, s, es``), check it is the node we dialled,
        write message 3 (``s, se``); raises ChannelError."""
        second = bytes(second)
        if len(second) != HANDSHAKE_BYTES[1]:
            raise ChannelError(f"handshake message 2 has {len(second)} bytes")
        sym = self._sym
        re_raw = second[:DH]
        sym.mix_hash(re_raw)
        sym.mix_key(re_raw)
        re = X25519PublicKey.from_public_bytes(re_raw)
        sym.mix_key(_dh(self._e, re))  # ee
        rs = sym.decrypt_and_hash(second[DH : DH + PUBLIC_KEY_BYTES + TAG])
        if node_id_for(rs) != self._expect:
            raise ChannelError(
                f"reached node {node_id_for(rs).hex()[:12]}, not {self._expect.hex()[:12]}"
            )
        sym.mix_key(_dh(self._e, _their_x25519(rs)))  # es
        sym.decrypt_and_hash(second[DH + PUBLIC_KEY_BYTES + TAG :])
        s = sym.encrypt_and_hash(self._identity.public_key)
        sym.mix_key(_dh(self._static, re))  # se
        payload = sym.encrypt_and_hash(b"")
        send, receive = sym.split()
        return s + payload, Session(rs, Sealer(send), Opener(receive))


class Responder:
    """The listening side; ``swarm_keys``: the ring, primary first."""

    def __init__(self, identity: Identity, swarm_keys: tuple[bytes, ...]) -> None:
        self._identity = identity
        self._psks = [channel_psk(k) for k in swarm_keys]
        self.matched: int | None = None  # which of swarm_keys the dialler held
        self._sym = _Symmetric()
        self._e: X25519PrivateKey | None = None
        self._re: X25519PublicKey | None = None

    def second(self, first: bytes) -> bytes:
        """Read message 1 (a non-member fails here, before any key agreement),
        write message 2; raises ChannelError."""
        first = bytes(first)
        if len(first) != HANDSHAKE_BYTES[0]:
            raise ChannelError(f"handshake message 1 has {len(first)} bytes")
        re_raw = first[:DH]
        for index, psk in enumerate(self._psks):
            trial = self._sym.copy()
            trial.mix_key_and_hash(psk)
            trial.mix_hash(re_raw)
            trial.mix_key(re_raw)
            try:
                trial.decrypt_and_hash(first[DH:])
            except ChannelError:
                continue
            self.matched = index
            break
        else:
            raise ChannelError("the dialler does not hold this swarm's key")
        self._sym = sym = trial
        self._re = X25519PublicKey.from_public_bytes(re_raw)
        self._e = X25519PrivateKey.generate()
        e = _raw(self._e.public_key())
        sym.mix_hash(e)
        sym.mix_key(e)
        sym.mix_key(_dh(self._e, self._re))  # ee
        s = sym.encrypt_and_hash(self._identity.public_key)
        sym.mix_key(_dh(_static(self._identity), self._re))  # es
        return e + s + sym.encrypt_and_hash(b"")

    def finish(self, third: bytes) -> Session:
        """Read message 3: the dialler's node key, proven; raises ChannelError."""
        third = bytes(third)
        if self._re is None or self._e is None:
            raise ChannelError("handshake message 3 before message 1")
        if len(third) != HANDSHAKE_BYTES[2]:
            raise ChannelError(f"handshake message 3 has {len(third)} bytes")
        sym = self._sym
        rs = sym.decrypt_and_hash(third[: PUBLIC_KEY_BYTES + TAG])
        sym.mix_key(_dh(self._e, _their_x25519(rs)))  # se
        sym.decrypt_and_hash(third[PUBLIC_KEY_BYTES + TAG :])
        receive, send = sym.split()
        return Session(rs, Sealer(send), Opener(receive))
