"""The peer channel's handshake and records (sans-IO): who may finish a
handshake, and what a record that was tampered with, replayed or reordered does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hexamesh.identity import Identity
from hexamesh.net.noise import (
    HANDSHAKE_BYTES,
    LENGTH,
    MAX_RECORD,
    ChannelError,
    Initiator,
    Responder,
    Session,
)
from tests.helpers import identity

SWARM = bytes(32)
OTHER = bytes([1]) * 32


def handshake(
    dialler: Identity,
    listener: Identity,
    *,
    expect: bytes | None = None,
    dial_key: bytes = SWARM,
    ring: tuple[bytes, ...] = (SWARM,),
) -> tuple[Session, Session]:
    initiator = Initiator(dialler, dial_key, listener.node_id if expect is None else expect)
    responder = Responder(listener, ring)
    first = initiator.first()
    second = responder.second(first)
    third, mine = initiator.third(second)
    assert [len(first), len(second), len(third)] == list(HANDSHAKE_BYTES)
    return mine, responder.finish(third)


def test_both_ends_learn_the_other_node_and_talk_both_ways() -> None:
    a, b = handshake(identity(1), identity(2))
    assert a.peer == identity(2).node_id and b.peer == identity(1).node_id
    assert b.opener.open(a.sealer.seal(b"POST /v1/completions")) == b"POST /v1/completions"
    assert a.opener.open(b.sealer.seal(b"HTTP/1.1 200 OK")) == b"HTTP/1.1 200 OK"


def test_the_dialler_refuses_a_node_it_did_not_dial() -> None:
    """Pinning: node 3 answers where node 2 was expected (an address taken over)."""
    with pytest.raises(ChannelError, match="reached node"):
        handshake(identity(1), identity(3), expect=identity(2).node_id)


def test_a_dialler_without_the_swarm_key_is_refused() -> None:
    with pytest.raises(ChannelError, match="swarm's key"):
        handshake(identity(1), identity(2), dial_key=OTHER)


def test_an_older_key_of_the_ring_still_opens_a_channel() -> None:
    a, b = handshake(identity(1), identity(2), dial_key=OTHER, ring=(SWARM, OTHER))
    assert b.opener.open(a.sealer.seal(b"hello")) == b"hello"


def test_a_recorded_handshake_replayed_to_the_listener_fails() -> None:
    """A capture of a whole dial (messages 1 and 3) opens nothing later: the
    listener's new ephemeral key makes the old third message fail."""
    initiator = Initiator(identity(1), SWARM, identity(2).node_id)
    first = initiator.first()
    third, _ = initiator.third(Responder(identity(2), (SWARM,)).second(first))
    replay = Responder(identity(2), (SWARM,))
    replay.second(first)
    with pytest.raises(ChannelError):
        replay.finish(third)


def test_a_record_tampered_replayed_or_reordered_does_not_open() -> None:
    a, b = handshake(identity(1), identity(2))
    one = a.sealer.seal(b"one")
    flipped = one[:-1] + bytes([one[-1] ^ 1])
    with pytest.raises(ChannelError, match="does not verify"):
        b.opener.open(flipped)
    a2, b2 = handshake(identity(1), identity(2))
    first = a2.sealer.seal(b"one")
    assert b2.opener.open(first) == b"one"
    with pytest.raises(ChannelError):  # the same record again: its nonce is spent
        b2.opener.open(first)
    a3, b3 = handshake(identity(1), identity(2))
    r1, r2 = a3.sealer.seal(b"one"), a3.sealer.seal(b"two")
    with pytest.raises(ChannelError):
        b3.opener.open(r2 + r1)


@given(
    st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=20),
)
def test_records_open_whole_however_the_bytes_are_cut(
    messages: list[bytes], cuts: list[int]
) -> None:
    a, b = handshake(identity(1), identity(2))
    wire = b"".join(a.sealer.seal(m) for m in messages)
    got, at, i = b"", 0, 0
    while at < len(wire):
        step = cuts[i % len(cuts)]
        got += b.opener.open(wire[at : at + step])
        at, i = at + step, i + 1
    assert got == b"".join(messages) and not b.opener.pending


def test_a_large_write_is_cut_into_records_of_the_largest_size() -> None:
    a, b = handshake(identity(1), identity(2))
    data = bytes(range(256)) * 600  # 153,600 bytes: three records
    wire = a.sealer.seal(data)
    assert int.from_bytes(wire[:LENGTH], "big") == MAX_RECORD + 16
    assert b.opener.open(wire) == data
    assert a.sealer.seal(b"") == b""


def test_malformed_handshake_messages_are_refused() -> None:
    responder = Responder(identity(2), (SWARM,))
    with pytest.raises(ChannelError):
        responder.second(b"\x00" * 10)
    with pytest.raises(ChannelError):
        responder.second(b"\x00" * HANDSHAKE_BYTES[0])  # a tag that does not verify
    with pytest.raises(ChannelError):
        Responder(identity(2), (SWARM,)).finish(b"\x00" * HANDSHAKE_BYTES[2])
    initiator = Initiator(identity(1), SWARM, identity(2).node_id)
    initiator.first()
    with pytest.raises(ChannelError):
        initiator.third(b"\x00" * HANDSHAKE_BYTES[1])


def test_a_non_member_is_refused_at_message_1_before_any_key_agreement() -> None:
    """Its first message is keyed by the swarm key: the listener neither
    makes a key pair nor sends its node key to someone without it."""
    responder = Responder(identity(2), (SWARM,))
    with pytest.raises(ChannelError, match="swarm's key"):
        responder.second(Initiator(identity(1), OTHER, identity(2).node_id).first())
    assert responder._e is None
