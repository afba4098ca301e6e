import contextlib
import dataclasses
import os
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh import wire
from hexamesh.dht import messages as _dht_messages  # noqa: F401  (registers the DHT messages)
from hexamesh.net import driver as _driver  # noqa: F401  (registers StreamHello)
from hexamesh.net.rtt import Ping
from hexamesh.peerauth import Proof
from hexamesh.wire import (
    MAX_DATAGRAM,
    MAX_STREAM_FRAME,
    SEAL_OVERHEAD,
    Codec,
    EncodeError,
    Envelope,
    KeyRing,
    WireError,
    decode_frame,
    encode_frame,
)
from tests.helpers import Blob, Colour, Kitchen, Point, any_envelope, codec, nid

SENDER = nid(1)
SEALER, OPENER = codec(1), codec(2)  # node 1 sends to node 2


def env(message: wire.Message, msg_id: int = 1) -> Envelope:
    return Envelope(sender=SENDER, msg_id=msg_id, message=message)


def kitchen(**changes: object) -> Kitchen:
    base = dict(
        flag=True,
        count=-5,
        ratio=0.25,
        name="n",
        node=bytes(20),
        tags=("a",),
        colour=Colour.RED,
        maybe=None,
        points=(Point(x=1.0, y=2.0, label="p"),),
        pair=("k", 3),
    )
    base.update(changes)
    return Kitchen(**base)  # type: ignore[arg-type]


# -- round trips ------------------------------------------------------------


@settings(max_examples=500)
@given(any_envelope())
def test_every_message_type_round_trips_through_frame_and_seal(e: Envelope) -> None:
    assert decode_frame(encode_frame(e)) == e
    e = dataclasses.replace(e, sender=SENDER)  # frames prove their sender
    sealed = SEALER.seal(e, limit=MAX_STREAM_FRAME)  # to nobody known: signed
    assert OPENER.open(sealed, limit=MAX_STREAM_FRAME) == e
    assert len(sealed) == Codec.sealed_size(e, Proof.SIGNED)


def test_every_registered_type_is_covered_by_the_round_trip() -> None:
    names = {cls.__name__ for cls in wire.message_types().values()}
    assert {"Ping", "Pong", "StreamHello", "Blob", "Kitchen", "FindNode", "Value", "Store"} <= names


def test_enum_and_nested_structs_decode_to_their_types() -> None:
    out = decode_frame(encode_frame(env(kitchen()))).message
    assert isinstance(out, Kitchen)
    assert out.colour is Colour.RED
    assert isinstance(out.points[0], Point)


def test_ints_where_floats_belong_are_encoded_as_floats() -> None:
    out = decode_frame(encode_frame(env(kitchen(ratio=1)))).message
    assert isinstance(out, Kitchen) and type(out.ratio) is float


def test_seal_uses_a_fresh_nonce_each_time() -> None:
    e = env(Ping(host="10.0.0.1", port=7420))
    assert SEALER.seal(e) != SEALER.seal(e)


# -- limits -----------------------------------------------------------------


def test_datagram_limit_is_enforced_when_sealing() -> None:
    fits = MAX_DATAGRAM - SEAL_OVERHEAD - 40
    SEALER.seal(env(Blob(data=bytes(fits))))
    with pytest.raises(EncodeError, match="over the 1400-byte limit"):
        SEALER.seal(env(Blob(data=bytes(MAX_DATAGRAM))))
    # ... and the same envelope is fine on a stream.
    big = SEALER.seal(env(Blob(data=bytes(MAX_DATAGRAM))), limit=MAX_STREAM_FRAME)
    with pytest.raises(WireError, match="over the 1400-byte limit"):
        OPENER.open(big)
    assert OPENER.open(big, limit=MAX_STREAM_FRAME).message == Blob(data=bytes(MAX_DATAGRAM))


def raw_frame(type_id: int, payload: object, sender: bytes = SENDER, msg_id: int = 1) -> bytes:
    return msgpack.packb([type_id, sender, msg_id, payload], use_bin_type=True)


def good_payload(**changes: object) -> list[object]:
    values = dict(
        flag=True,
        count=1,
        ratio=0.5,
        name="x",
        node=bytes(20),
        tags=["a"],
        colour=1,
        maybe=None,
        points=[[1.0, 2.0, ""]],
        pair=["k", 1],
    )
    values.update(changes)
    return list(values.values())


def test_good_raw_payload_decodes() -> None:
    assert isinstance(decode_frame(raw_frame(0xFF02, good_payload())).message, Kitchen)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "malformed msgpack"),
        (b"\xc1", "malformed msgpack"),
        (msgpack.packb({"a": 1}), "malformed msgpack"),  # maps are not allowed
        (msgpack.packb([1, 2, 3]), "array of 4"),
        (raw_frame(0x7777, []), "unknown message type"),
        (raw_frame(0xFF02, good_payload(), sender=b"short"), "20-byte node id"),
        (raw_frame(0xFF02, good_payload(), msg_id=-1), "unsigned 64-bit"),
        (raw_frame(0xFF02, good_payload()[:-1]), "expected array of 10 fields"),
        (raw_frame(0xFF02, good_payload(flag=1)), "Kitchen.flag: expected bool"),
        (raw_frame(0xFF02, good_payload(count=True)), "Kitchen.count: expected int"),
        (raw_frame(0xFF02, good_payload(ratio=float("nan"))), "not finite"),
        (raw_frame(0xFF02, good_payload(name=b"x")), "Kitchen.name: expected str"),
        (raw_frame(0xFF02, good_payload(node=bytes(19))), "expected exactly 20"),
        (raw_frame(0xFF02, good_payload(tags=["t"] * 9)), "over the limit 8"),
        (raw_frame(0xFF02, good_payload(colour=9)), "not a Colour"),
        (raw_frame(0xFF02, good_payload(points=[[1.0]])), "Point: expected array of 3"),
        (raw_frame(0xFF02, good_payload(points=[[1.0, 2.0, "x" * 17]])), "over the limit 16"),
        (raw_frame(0xFF02, good_payload(pair=["k"])), "expected array of 2"),
        (raw_frame(0xFF01, [bytes(wire.MAX_BYTES + 1)]), "malformed msgpack"),
        (raw_frame(0xFF01, [b"x"]) + b"\x00", "malformed msgpack"),  # trailing bytes
        (msgpack.packb([0xFF01, SENDER, 1, [msgpack.ExtType(1, b"x")]]), "malformed msgpack"),
    ],
)
def test_malformed_frames_raise_wire_error_with_a_reason(frame: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode_frame(frame)


def test_deep_nesting_is_rejected() -> None:
    # [0xFF01, SENDER, 1, [[[[...]]]]] nested 5,000 deep, built by hand
    # (msgpack refuses to pack it, but a peer may send it).
    head = msgpack.packb([0xFF01, SENDER, 1], use_bin_type=True)
    frame = b"\x94" + head[1:] + b"\x91" * 5000 + b"\x01"
    with pytest.raises(WireError):
        decode_frame(frame)


# -- sealing and key rings --------------------------------------------------


def test_wrong_key_and_corruption_are_wire_errors() -> None:
    sealed = SEALER.seal(env(Ping(host="10.0.0.1", port=7420)))
    other = codec(2, KeyRing(bytes([1]) * 32))
    with pytest.raises(WireError, match="key not in our key ring"):
        other.open(sealed)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(WireError, match="cannot open"):
        OPENER.open(bytes(flipped))
    with pytest.raises(WireError, match="truncated"):
        OPENER.open(sealed[:10])
    with pytest.raises(WireError, match="unsupported wire version 9"):
        OPENER.open(b"\x09" + sealed[1:])


def test_key_rotation_old_key_still_opens_new_key_seals() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = codec(1, KeyRing(old))
    during = codec(2, KeyRing(new, [old]))  # promoted new key, old still accepted
    after = codec(3, KeyRing(new))
    e = env(Ping(host="10.0.0.1", port=7420))
    e2 = dataclasses.replace(e, sender=nid(2))
    assert during.open(before.seal(e)) == e
    assert after.open(during.seal(e2)) == e2
    with pytest.raises(WireError):
        before.open(during.seal(e2))


def test_key_ring_limits() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        KeyRing(bytes(32), [bytes([i]) * 32 for i in range(1, 5)])
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing(b"short")


# -- the fuzz test: nothing but WireError ever escapes ------------------------


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


@settings(max_examples=10_000)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.tuples(
            any_envelope(),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
        ),
        st.tuples(any_envelope(), st.integers(0, 2000)),
    ),
    st.booleans(),
)
def test_fuzz_decoder_only_raises_wire_error(case: object, sealed: bool) -> None:
    if isinstance(case, bytes):
        data = case
    else:
        e, how = typing.cast(tuple[Any, Any], case)
        frame = SEALER.seal(e, limit=MAX_STREAM_FRAME) if sealed else encode_frame(e)
        data = mutate(frame, how) if isinstance(how, list) else frame[:how]
    try:
        if sealed:
            OPENER.open(data, limit=MAX_STREAM_FRAME)
        else:
            decode_frame(data)
    except WireError:
        pass


@settings(max_examples=2000)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda children: st.lists(children, max_size=5),
        max_leaves=30,
    ),
    st.sampled_from([0x0001, 0x0002, 0x0003, 0x0104, 0x0106, 0x0107, 0xFF01, 0xFF02]),
)
def test_fuzz_structured_payloads_only_raise_wire_error(payload: object, type_id: int) -> None:
    with contextlib.suppress(WireError):
        decode_frame(raw_frame(type_id, payload))
