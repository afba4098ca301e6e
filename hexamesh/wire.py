"""The wire format: typed messages, msgpack envelopes, limits and sealing.

Theory of operation
-------------------
Every peer message is a frozen dataclass registered here with a numeric type
id (``@message(0x0101)``). Its fields are encoded positionally as a msgpack
array, nested structures (``@struct``) as nested arrays. A message travels in an
*envelope*::

    plaintext frame = msgpack [type_id, sender_id, msg_id, payload]
    authenticated   = proof of the sender (41 + 16 or 64 bytes, ``peerauth``) | frame
    sealed          = version (1 byte) | nonce (12) | ChaCha20-Poly1305(authenticated) + tag (16)

The version byte is authenticated as associated data, so a peer can say
"unsupported version" before it tries any key. The nonce is 96 random bits from
the OS for every seal; with fewer than 2^32 messages per key the chance of a
repeated nonce stays below 2^-32 (rotate the swarm key long before that).
Inside the seal, ``peerauth.Authenticator`` proves the sender by its node key
(a MAC with a key per pair of nodes, or a signature on first contact) under a
counter that makes a replay fail; a frame is taken only if the envelope's
``sender`` is the id of that key.

Sealing uses the swarm key. A :class:`KeyRing` holds one primary key (used to
seal) and up to three older keys (accepted to open), so operators rotate the key
without downtime: add the new key as secondary everywhere, promote it, drop the
old one.

Limits (all enforced when decoding, i.e. against peers; the frame size also
when encoding, i.e. against ourselves):

=====================  ==========  ============================================
limit                  value       why
=====================  ==========  ============================================
MAX_DATAGRAM           1,400 B     fits a 1,500 B Ethernet MTU with IP/UDP
                                   headers to spare (memberlist's figure)
MAX_STREAM_FRAME       1 MiB       larger payloads (DHT values, anti-entropy
                                   state) go over a stream, one frame each
MAX_BYTES              64 KiB      any single bytes field
MAX_STR                4,096       characters in any str field
MAX_ITEMS              1,024       items in any array field
MAX_DEPTH              8           nesting of structs/arrays in a schema
=====================  ==========  ============================================

Fields may be narrowed with ``Annotated[bytes, Len(20)]`` (exact length) or
``Annotated[tuple[X, ...], MaxLen(16)]``. Floats must be finite. Maps are not
allowed on the wire (positional arrays are smaller and have one encoding).

Errors are split by blame, as in h11: anything wrong with bytes from a peer
raises :class:`WireError` and nothing else (a fuzz test holds us to that); a
message we cannot send (too large) raises :class:`EncodeError`.

Type id ranges: 0x00xx net, 0x01xx DHT, 0x02xx honeycomb, 0x03xx placement,
0x04xx serving. 0 is never used.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hexamesh.identity import NODE_ID_BYTES
from hexamesh.peerauth import AUTH_OVERHEAD, Authenticator, AuthError, Proof, auth_overhead

if TYPE_CHECKING:
    from hexamesh.net.base import Addr

__all__ = [
    "KEY_BYTES",
    "MAX_BYTES",
    "MAX_DATAGRAM",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_STR",
    "MAX_STREAM_FRAME",
    "SEAL_OVERHEAD",
    "WIRE_VERSION",
    "Codec",
    "EncodeError",
    "Envelope",
    "KeyRing",
    "Len",
    "MaxLen",
    "Message",
    "Struct",
    "UnknownKeyError",
    "WireError",
    "decode_frame",
    "encode_frame",
    "field_limits",
    "message",
    "message_types",
    "struct",
]

WIRE_VERSION = 2  # 2: a proof of the sender inside the seal
MAX_DATAGRAM = 1400  # bytes, sealed; memberlist's udpBufSize-safe figure
MAX_STREAM_FRAME = 1 << 20  # bytes, sealed; one frame on a stream
MAX_BYTES = 64 * 1024  # bytes in one bytes field
MAX_STR = 4096  # characters in one str field
MAX_ITEMS = 1024  # items in one array field
MAX_DEPTH = 8  # nesting of arrays/structs in one schema
MAX_TYPE_ID = 0xFFFF
MAX_KEYS = 4  # primary + three older keys during a rotation

KEY_BYTES = 32  # ChaCha20-Poly1305 key
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1
# What a frame grows by on the wire, at most (a signed first contact; a frame
# to a node that has answered us is 48 bytes smaller: ``sealed_size``).
AEAD_OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES
SEAL_OVERHEAD = AEAD_OVERHEAD + AUTH_OVERHEAD

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


class WireError(Exception):
    """Bytes from a peer that we cannot accept. The driver drops and counts them."""


class UnknownKeyError(WireError):
    """A frame no key of our ring opens: most often another swarm's key."""


class EncodeError(ValueError):
    """A message of ours that cannot be sent (a local bug, e.g. too large)."""


@dataclass(frozen=True, slots=True)
class Len:
    """Annotated marker: exact length of a bytes/str/array field."""

    n: int


@dataclass(frozen=True, slots=True)
class MaxLen:
    """Annotated marker: maximum length of a bytes/str/array field."""

    n: int


class Struct:
    """Base of nested wire structures (no type id of their own)."""

    __slots__ = ()


class Message(Struct):
    """Base of top-level wire messages; ``TYPE_ID`` is set by ``@message``."""

    __slots__ = ()
    TYPE_ID: ClassVar[int]


# --------------------------------------------------------------------------
# Schema compilation: each field type becomes a pair of small functions.

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], Any]


class _Bad(Exception):
    """Internal: a value that does not match its schema."""


_DECODERS: dict[type, Decoder] = {}
_ENCODERS: dict[type, Encoder] = {}
_MESSAGES: dict[int, type[Message]] = {}


def _identity(value: Any) -> Any:
    return value


def _check_len(n: int, exact: int | None, maximum: int) -> None:
    if exact is not None and n != exact:
        raise _Bad(f"length {n}, expected exactly {exact}")
    if n > maximum:
        raise _Bad(f"length {n} over the limit {maximum}")


def field_limits(tp: Any) -> tuple[Any, int | None, int | None]:
    """Split ``Annotated[T, Len(n) | MaxLen(n)]`` into (T, exact length, max length)."""
    exact: int | None = None
    limit: int | None = None
    if typing.get_origin(tp) is typing.Annotated:
        tp, *extras = typing.get_args(tp)
        for extra in extras:
            if isinstance(extra, Len):
                exact = extra.n
            elif isinstance(extra, MaxLen):
                limit = extra.n
    return tp, exact, limit


def _compile(tp: Any, depth: int) -> tuple[Encoder, Decoder]:
    if depth > MAX_DEPTH:
        raise TypeError(f"wire schema nests deeper than MAX_DEPTH={MAX_DEPTH}")
    tp, exact, limit = field_limits(tp)
    origin = typing.get_origin(tp)

    if tp is bool:

        def dec_bool(v: Any) -> bool:
            if type(v) is not bool:
                raise _Bad(f"expected bool, got {type(v).__name__}")
            return v

        return _identity, dec_bool

    if tp is int:

        def dec_int(v: Any) -> int:
            if type(v) is not int:
                raise _Bad(f"expected int, got {type(v).__name__}")
            if not _INT_MIN <= v <= _INT_MAX:
                raise _Bad("int out of range")
            return v

        return _identity, dec_int

    if tp is float:

        def dec_float(v: Any) -> float:
            if type(v) is not float:
                raise _Bad(f"expected float, got {type(v).__name__}")
            if not math.isfinite(v):
                raise _Bad("float is not finite")
            return v

        return float, dec_float

    if tp is str or tp is bytes:
        maximum = min(limit if limit is not None else math.inf, MAX_STR if tp is str else MAX_BYTES)
        kind = tp

        def dec_seq(v: Any) -> Any:
            if type(v) is not kind:
                raise _Bad(f"expected {kind.__name__}, got {type(v).__name__}")
            _check_len(len(v), exact, int(maximum))
            return v

        return _identity, dec_seq

    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        enum_type = tp

        def dec_enum(v: Any) -> Any:
            if type(v) is not int:
                raise _Bad(f"expected {enum_type.__name__}, got {type(v).__name__}")
            try:
                return enum_type(v)
            except ValueError:
                raise _Bad(f"{v} is not a {enum_type.__name__}") from None

        return int, dec_enum

    if origin is types.UnionType or origin is typing.Union:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1 or len(typing.get_args(tp)) != 2:
            raise TypeError(f"only `X | None` unions are allowed on the wire, got {tp}")
        inner_enc, inner_dec = _compile(members[0], depth)

        def enc_opt(v: Any) -> Any:
            return None if v is None else inner_enc(v)

        def dec_opt(v: Any) -> Any:
            return None if v is None else inner_dec(v)

        return enc_opt, dec_opt

    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item_enc, item_dec = _compile(args[0], depth + 1)
            maximum = min(limit if limit is not None else MAX_ITEMS, MAX_ITEMS)

            def dec_tuple(v: Any) -> tuple[Any, ...]:
                if type(v) is not tuple:
                    raise _Bad(f"expected array, got {type(v).__name__}")
                _check_len(len(v), exact, maximum)
                return tuple([item_dec(x) for x in v])

            if item_enc is _identity:
                return tuple, dec_tuple

            def enc_tuple(v: Any) -> tuple[Any, ...]:
                return tuple([item_enc(x) for x in v])

            return enc_tuple, dec_tuple
        # Fixed-shape tuple such as tuple[str, int].
        pairs = [_compile(a, depth + 1) for a in args]

        def dec_fixed(v: Any) -> tuple[Any, ...]:
            if type(v) is not tuple or len(v) != len(pairs):
                raise _Bad(f"expected array of {len(pairs)}")
            return tuple([d(x) for (_, d), x in zip(pairs, v, strict=True)])

        def enc_fixed(v: Any) -> tuple[Any, ...]:
            return tuple([e(x) for (e, _), x in zip(pairs, v, strict=True)])

        return enc_fixed, dec_fixed

    if isinstance(tp, type) and issubclass(tp, Struct):
        if tp not in _DECODERS:
            raise TypeError(f"{tp.__name__} is used on the wire but not decorated with @struct")
        return _ENCODERS[tp], _DECODERS[tp]

    raise TypeError(f"type {tp!r} is not allowed on the wire")


_S = TypeVar("_S", bound=type[Struct])


def _register_struct(cls: type[Struct]) -> None:
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass to go on the wire")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    compiled = [_compile(hints[f.name], 1) for f in fields]
    encoders = [e for e, _ in compiled]
    decoders = [d for _, d in compiled]
    n = len(fields)
    plain = all(e is _identity for e in encoders)

    # operator.attrgetter fetches every field in C (encoding sizes every
    # message the simulator sends; this was a tenth of its time).
    if n == 0:

        def enc(obj: Any) -> tuple[Any, ...]:
            return ()
    elif n == 1:
        get_one, enc_one = operator.attrgetter(names[0]), encoders[0]

        def enc(obj: Any) -> tuple[Any, ...]:
            return (enc_one(get_one(obj)),)
    elif plain:
        enc = typing.cast(Callable[[Any], tuple[Any, ...]], operator.attrgetter(*names))
    else:
        get_all = operator.attrgetter(*names)
        # (index, encoder) of the fields that need encoding; the rest pass as they are
        special = [(i, e) for i, e in enumerate(encoders) if e is not _identity]

        def enc(obj: Any) -> tuple[Any, ...]:
            values = list(get_all(obj))
            for i, e in special:
                values[i] = e(values[i])
            return tuple(values)

    named = list(zip(names, decoders, strict=True))

    def dec(v: Any) -> Any:
        if type(v) is not tuple or len(v) != n:
            raise _Bad(f"{cls.__name__}: expected array of {n} fields")
        kwargs = {}
        for (name, d), x in zip(named, v, strict=True):
            try:
                kwargs[name] = d(x)
            except _Bad as e:
                raise _Bad(f"{cls.__name__}.{name}: {e}") from None
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:  # __post_init__ validation
            raise _Bad(f"{cls.__name__}: {e}") from None

    _ENCODERS[cls] = enc
    _DECODERS[cls] = dec


def struct(cls: _S) -> _S:
    """Register a nested wire structure (a frozen dataclass)."""
    _register_struct(cls)
    return cls


def message(type_id: int) -> Callable[[_S], _S]:
    """Register a top-level message under a unique type id."""

    def register(cls: _S) -> _S:
        if not 0 < type_id <= MAX_TYPE_ID:
            raise ValueError(f"type id must be in 1..{MAX_TYPE_ID}, got {type_id}")
        if not issubclass(cls, Message):
            raise TypeError(f"{cls.__name__} must subclass wire.Message")
        other = _MESSAGES.get(type_id)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"type id {type_id:#06x} used by {other.__name__} and {cls.__name__}")
        _register_struct(cls)
        cls.TYPE_ID = type_id
        _MESSAGES[type_id] = cls
        return cls

    return register


def message_types() -> dict[int, type[Message]]:
    """Every registered message type, by type id (a copy)."""
    return dict(_MESSAGES)


# --------------------------------------------------------------------------
# Envelopes


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message with its sender's node id and a message id for replies."""

    sender: bytes  # 20-byte node id of the sender
    msg_id: int  # 0..2^64-1; a reply carries the id of its request
    message: Message

    version: ClassVar[int] = WIRE_VERSION


def encode_frame(env: Envelope) -> bytes:
    """The plaintext msgpack frame of an envelope (not sealed)."""
    msg = env.message
    frame: bytes = msgpack.packb(
        (msg.TYPE_ID, env.sender, env.msg_id, _ENCODERS[type(msg)](msg)),
        use_bin_type=True,
    )
    return frame


def decode_frame(frame: bytes) -> Envelope:
    """Parse a plaintext frame; any problem raises :class:`WireError`."""
    try:
        obj = msgpack.unpackb(
            frame,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=MAX_BYTES,
            max_bin_len=MAX_BYTES,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:
        raise WireError(f"malformed msgpack: {e}") from None
    try:
        if type(obj) is not tuple or len(obj) != 4:
            raise _Bad("envelope must be an array of 4")
        type_id, sender, msg_id, payload = obj
        cls = _MESSAGES.get(type_id) if type(type_id) is int else None
        if cls is None:
            raise _Bad(f"unknown message type {type_id!r}")
        if type(sender) is not bytes or len(sender) != NODE_ID_BYTES:
            raise _Bad("sender must be a 20-byte node id")
        if type(msg_id) is not int or not 0 <= msg_id <= _INT_MAX:
            raise _Bad("msg_id must be an unsigned 64-bit int")
        return Envelope(sender=sender, msg_id=msg_id, message=_DECODERS[cls](payload))
    except _Bad as e:
        raise WireError(str(e)) from None
    except Exception as e:  # belt and braces: nothing else may escape
        raise WireError(f"invalid frame: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------
# Sealing


class KeyRing:
    """Swarm keys: ``primary`` seals, every key (primary first) may open."""

    def __init__(self, primary: bytes, older: Sequence[bytes] = ()) -> None:
        keys = [primary, *older]
        if len(keys) > MAX_KEYS:
            raise ValueError(f"a key ring holds at most {MAX_KEYS} keys, got {len(keys)}")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a swarm key has {KEY_BYTES} bytes, got {len(key)}")
        self.keys: tuple[bytes, ...] = tuple(dict.fromkeys(keys))  # dedupe, keep order
        self._aeads = [ChaCha20Poly1305(k) for k in self.keys]

    @classmethod
    def generate(cls) -> KeyRing:
        return cls(ChaCha20Poly1305.generate_key())

    # A rotation changes the ring in place: the codec, the peer channel and
    # the job seal hold this object, and see the change at their next use.

    def install(self, key: bytes) -> None:
        """Open with ``key`` too (the last tried); the primary still seals."""
        self._set((*self.keys, key))

    def use(self, key: bytes) -> None:
        """Seal with ``key`` (installed already); the others still open."""
        self._set((key, *self.keys))

    def retire_all_but(self, key: bytes) -> None:
        """Keep ``key`` only."""
        self._set((key,))

    def reset(self, keys: Sequence[bytes]) -> None:
        """Hold ``keys`` (primary first) instead: an invite's ring, received."""
        self._set(keys)

    def _set(self, keys: Sequence[bytes]) -> None:
        ring = KeyRing(keys[0], keys[1:])
        self.keys, self._aeads = ring.keys, ring._aeads

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    def seal(self, plaintext: bytes, header: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aeads[0].encrypt(nonce, plaintext, header)

    def open(self, sealed: bytes) -> bytes:
        """Inverse of seal, trying each key in turn; raises WireError."""
        if len(sealed) < AEAD_OVERHEAD:
            raise WireError(f"truncated: {len(sealed)} bytes is less than the seal overhead")
        header = sealed[:HEADER_BYTES]
        if header[0] != WIRE_VERSION:
            raise WireError(f"unsupported wire version {header[0]} (we speak {WIRE_VERSION})")
        nonce = sealed[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
        body = sealed[HEADER_BYTES + NONCE_BYTES :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, header)
            except InvalidTag:
                continue
        raise UnknownKeyError("cannot open: corrupted, or sealed under a key not in our key ring")


_HEADER = bytes([WIRE_VERSION])


class Codec:
    """Envelope <-> sealed bytes, for datagrams or stream frames: sealed with
    the swarm key, and the sender proven by ``auth`` (ours when sealing)."""

    def __init__(self, keyring: KeyRing, auth: Authenticator) -> None:
        self.keyring = keyring
        self.auth = auth

    def seal(self, env: Envelope, *, limit: int = MAX_DATAGRAM, to: Addr | None = None) -> bytes:
        """Seal ``env`` for the node at ``to`` (None: proven by signature)."""
        frame = encode_frame(env)
        if len(frame) + SEAL_OVERHEAD > limit:
            raise EncodeError(
                f"{type(env.message).__name__} is {len(frame) + SEAL_OVERHEAD} bytes sealed, "
                f"over the {limit}-byte limit"
            )
        return self.keyring.seal(self.auth.wrap(frame, to), _HEADER)

    def open(
        self, data: bytes, *, limit: int = MAX_DATAGRAM, source: Addr | None = None
    ) -> Envelope:
        """Open, prove the sender, decode; WireError if any step fails.
        ``source``: the datagram address it came from (None for none)."""
        if len(data) > limit:
            raise WireError(f"{len(data)} bytes is over the {limit}-byte limit")
        try:
            sender, frame = self.auth.unwrap(self.keyring.open(data), source)
        except AuthError as e:
            raise WireError(f"sender not proven: {e}") from None
        env = decode_frame(frame)
        if env.sender != sender:
            raise WireError("the envelope's sender is not the node that sent it")
        return env

    @staticmethod
    def sealed_size(env: Envelope, proof: Proof = Proof.PAIRED) -> int:
        """Size on the wire without paying for sealing (for the simulator)."""
        return len(encode_frame(env)) + AEAD_OVERHEAD + auth_overhead(proof)
