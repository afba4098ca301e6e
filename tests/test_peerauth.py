"""Every frame proves its sender: impersonation, replays, tampering, stale clocks."""

import dataclasses

import pytest
from hypothesis import given, settings

from hexamesh.identity import Identity
from hexamesh.limits import AUTH_SEEN, MAX_CLOCK_SKEW
from hexamesh.net.rtt import Ping
from hexamesh.peerauth import (
    PAIRED_FOR,
    REPLAY_WINDOW,
    Authenticator,
    AuthError,
    x25519_private,
    x25519_public,
)
from hexamesh.wire import Codec, Envelope, KeyRing, WireError
from tests.helpers import RING, any_envelope, identity, nid

AT_1, AT_2, AT_3 = ("10.0.0.1", 7420), ("10.0.0.2", 7420), ("10.0.0.3", 7420)


class Clock:
    def __init__(self, now: float = 1.8e9) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def node(n: int, clock: Clock | None = None) -> Codec:
    return Codec(RING, Authenticator(identity(n), clock=clock or Clock()))


def ping(n: int, msg_id: int = 1) -> Envelope:
    return Envelope(sender=nid(n), msg_id=msg_id, message=Ping(host="10.0.0.1", port=7420))


def test_first_contact_is_signed_and_the_answer_and_all_after_are_paired() -> None:
    one, two = node(1), node(2)
    assert two.open(one.seal(ping(1), to=AT_2), source=AT_1) == ping(1)
    assert one.auth.stats.signed_sent == 1  # 1 did not know who is at AT_2
    assert one.open(two.seal(ping(2), to=AT_1), source=AT_2) == ping(2)
    assert two.auth.stats.paired_sent == 1  # 2 heard 1 from AT_1
    for i in range(3):
        assert two.open(one.seal(ping(1, i), to=AT_2), source=AT_1).msg_id == i
    assert one.auth.stats.paired_sent == 3
    assert one.auth.stats.accepted == 1 and two.auth.stats.accepted == 4


@settings(max_examples=200)
@given(any_envelope())
def test_a_key_holder_cannot_speak_as_another_node(env: Envelope) -> None:
    """Any message kind, in a victim's name, sealed with the swarm key by a
    second key holder: refused, paired or signed."""
    victim, mallory, target = nid(1), node(6), node(2)
    forged = dataclasses.replace(env, sender=victim)
    for to in (AT_2, None):
        with pytest.raises(WireError, match="sender"):
            target.open(mallory.seal(forged, to=to, limit=1 << 20), limit=1 << 20, source=AT_3)


def test_a_replayed_frame_is_refused_and_counted() -> None:
    one, two = node(1), node(2)
    sealed = one.seal(ping(1), to=AT_2)
    two.open(sealed, source=AT_1)
    with pytest.raises(WireError, match="replayed"):
        two.open(sealed, source=AT_1)
    with pytest.raises(WireError, match="replayed"):
        two.open(sealed, source=AT_3)  # from another address as well
    assert two.auth.stats.replayed == 2


def test_a_paired_frame_replayed_to_another_node_fails_its_mac() -> None:
    one, two, three = node(1), node(2), node(3)
    one.open(two.seal(ping(2), to=AT_1), source=AT_2)  # 1 knows who is at AT_2
    to_two = one.seal(ping(1), to=AT_2)
    three.open(one.seal(ping(1), to=AT_3), source=AT_1)  # 3 knows 1 too
    with pytest.raises(WireError, match="false paired proof"):
        three.open(to_two, source=AT_1)
    assert two.open(to_two, source=AT_1) == ping(1)


def test_a_frame_altered_inside_the_seal_fails_its_proof() -> None:
    """A key holder opens a frame, changes it, seals it again: the proof is
    over the frame, so it no longer holds."""
    one, two = node(1), node(2)
    for proof_to in (None, AT_2):
        if proof_to is not None:
            one.open(two.seal(ping(2), to=AT_1), source=AT_2)
        sealed = one.seal(ping(1, 7), to=proof_to)
        inside = bytearray(RING.open(sealed))
        inside[-1] ^= 1  # the last byte of the frame
        resealed = RING.seal(bytes(inside), sealed[:1])
        with pytest.raises(WireError, match="false"):
            two.open(resealed, source=AT_1)


def test_a_frame_in_our_own_name_is_refused() -> None:
    me_again = Codec(RING, Authenticator(identity(2)))
    with pytest.raises(WireError, match="own name"):
        node(2).open(me_again.seal(ping(2), to=AT_2), source=AT_1)


def test_reordering_is_taken_within_the_window_and_nothing_below_it() -> None:
    clock = Clock()
    one, two = node(1, clock), node(2, clock)
    early = one.seal(ping(1, 1), to=AT_2)
    clock.now += REPLAY_WINDOW / 2
    two.open(one.seal(ping(1, 2), to=AT_2), source=AT_1)
    assert two.open(early, source=AT_1).msg_id == 1  # late, within the window: taken once
    too_early = one.seal(ping(1, 3), to=AT_2)
    clock.now += 2 * REPLAY_WINDOW
    two.open(one.seal(ping(1, 4), to=AT_2), source=AT_1)
    with pytest.raises(WireError, match="replayed"):
        two.open(too_early, source=AT_1)  # below the window: a replay, for all we know


def test_the_window_remembers_at_most_max_seen_counters() -> None:
    clock = Clock()
    one, two = node(1, clock), node(2, clock)
    frames = [one.seal(ping(1, i), to=AT_2) for i in range(AUTH_SEEN + 20)]
    for sealed in frames[:5] + frames[6:]:  # frame 5 is late: the window has moved on
        two.open(sealed, source=AT_1)
    peer = next(iter(two.auth._peers.values()))
    assert len(peer.seen) == len(peer.order) == AUTH_SEEN
    with pytest.raises(WireError, match="replayed"):
        two.open(frames[5], source=AT_1)  # below all it remembers: a replay for all it knows


def test_a_sender_whose_clock_is_off_by_more_than_the_skew_is_stale() -> None:
    behind, ours = Clock(1.8e9 - MAX_CLOCK_SKEW - 5), Clock(1.8e9)
    one, two = node(1, behind), node(2, ours)
    with pytest.raises(WireError, match="clock is -125 s from ours"):
        two.open(one.seal(ping(1), to=AT_2), source=AT_1)
    assert two.auth.stats.stale == 1
    behind.now = ours.now - MAX_CLOCK_SKEW + 5
    assert two.open(one.seal(ping(1), to=AT_2), source=AT_1) == ping(1)


def test_a_new_key_at_a_known_address_is_signed_to_after_paired_for() -> None:
    """Paired proofs go to the key last heard at an address; a node reinstalled
    there with a new key cannot check them, and gets signed frames again once
    PAIRED_FOR has passed without a word from the old key."""
    clock = Clock()
    one, old, new = node(1, clock), node(2, clock), node(9, clock)
    one.open(old.seal(ping(2), to=AT_1), source=AT_2)
    with pytest.raises(WireError, match="false paired proof"):
        new.open(one.seal(ping(1), to=AT_2), source=AT_1)
    clock.now += PAIRED_FOR + 1
    assert new.open(one.seal(ping(1), to=AT_2), source=AT_1) == ping(1)
    # and as soon as the new node speaks, it is paired with at once
    one.open(new.seal(ping(9), to=AT_1), source=AT_2)
    assert new.open(one.seal(ping(1, 2), to=AT_2), source=AT_1).msg_id == 2


def test_the_x25519_key_of_a_node_key_matches_its_public_half() -> None:
    for n in range(1, 20):
        me = Identity.generate() if n > 10 else identity(n)
        mine = x25519_private(me).public_key().public_bytes_raw()
        assert x25519_public(me.public_key).public_bytes_raw() == mine


def test_a_key_no_secret_can_be_agreed_with_is_refused_not_raised() -> None:
    """The identity point (y = 1) has no Montgomery form; the point of order
    two (y = -1) agrees on nothing (all zeros): neither may MAC a frame."""
    auth = Authenticator(identity(2))
    for y in (1, 2**255 - 19 - 1):
        public = y.to_bytes(32, "little")
        frame = bytes((1,)) + public + (int(1.8e9 * 1e6)).to_bytes(8, "big") + bytes(16) + b"x"
        with pytest.raises(AuthError, match="false paired proof"):
            auth.unwrap(frame, AT_1)
    assert auth.stats.forged == 2


def test_frames_without_a_proof_are_refused() -> None:
    two = node(2)
    for inside in (b"", b"\x07" + bytes(60), b"\x01" + bytes(10)):
        with pytest.raises(WireError, match="proof"):
            two.open(RING.seal(inside, b"\x02"), source=AT_1)
    assert two.auth.stats.unproven == 3
    other_swarm = Codec(KeyRing(bytes([5]) * 32), Authenticator(identity(1)))
    with pytest.raises(WireError, match="key not in our key ring"):
        two.open(other_swarm.seal(ping(1), to=AT_2), source=AT_1)


def test_a_false_proof_takes_no_place_in_the_peers_kept() -> None:
    """Only a sender whose proof held is kept (an LRU of AUTH_PEERS): frames
    with false proofs must not push real peers' replay windows out."""
    one, two = node(1), node(2)
    two.open(one.seal(ping(1), to=AT_2), source=AT_1)
    mallory = node(7)
    for to in (AT_2, None):  # (to AT_2 after 2 spoke to it: a MAC; else signed)
        if to is not None:
            mallory.open(two.seal(ping(2), to=AT_3), source=AT_2)
        inside = bytearray(RING.open(mallory.seal(ping(7), to=to)))
        inside[-1] ^= 1
        with pytest.raises(WireError, match="false"):
            two.open(RING.seal(bytes(inside), b"\x02"), source=AT_3)
    assert list(two.auth._peers) == [identity(1).public_key]
