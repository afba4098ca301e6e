"""The peer channel over TCP: ``dial`` and ``accept`` run the handshake
(``noise``), then ``PeerStream`` carries HTTP inside it.

A ``PeerStream`` quacks like the ``trio.SocketStream`` it wraps (``socket``,
``send_all``, ``receive_some``, ``aclose``), so the HTTP code above it is the
same for both; ``receive_some`` may return more than asked (every record that
came whole), never a partial record. The streaming relay (``pumpthread``)
reads and writes the socket itself and calls the channel's ``sealer`` and
``opener`` directly: nothing per token goes through trio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from hexamesh.identity import Identity
from hexamesh.limits import HANDSHAKE_TIMEOUT
from hexamesh.net.noise import (
    HANDSHAKE_BYTES,
    LENGTH,
    PREAMBLE,
    ChannelError,
    Initiator,
    Responder,
    Session,
)
from hexamesh.wire import KeyRing

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ChannelBroken",
    "ChannelKeys",
    "PeerStream",
    "accept",
    "dial",
    "is_channel",
]

RECV_SIZE = 65536  # bytes per read


class ChannelBroken(trio.BrokenResourceError):
    """A record that does not verify: the connection is cut (a broken
    connection to every caller, which fails the request over)."""


@dataclass(frozen=True)
class ChannelKeys:
    """What a node needs to dial and accept channels: its node key and the swarm's keys."""

    identity: Identity
    keyring: KeyRing
    # nodes an operator revoked: no channel with them, either way
    revoked: Callable[[bytes], bool] = lambda node: False
    # secrets of open invites (``hexamesh.invites``): a dialler may hold one
    # instead of the swarm key, for a channel that only redeems it
    invites: Callable[[], tuple[bytes, ...]] = lambda: ()


class PeerStream:
    """HTTP's stream inside a finished handshake; ``peer`` is the other end's node id."""

    def __init__(
        self,
        stream: trio.SocketStream,
        session: Session,
        initial: bytes = b"",
        invite: bytes | None = None,
    ) -> None:
        self.stream = stream
        self.invite = invite  # the invite's secret the dialler came with, None for a member
        self.session = session
        self.peer = session.peer
        self.sealer = session.sealer
        self.opener = session.opener
        self._early = initial  # records read along with the handshake

    @property
    def idle(self) -> bool:
        """Holds nothing read ahead: no partial record, no unread early bytes."""
        return not self._early and not self.opener.pending

    @property
    def socket(self) -> trio.socket.SocketType:
        return self.stream.socket

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.stream.setsockopt(level, option, value)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(self.sealer.seal(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The plaintext of the next whole record(s); b"" at a clean end."""
        while True:
            if self._early:
                raw, self._early = self._early, b""
            else:
                raw = await self.stream.receive_some(RECV_SIZE)
            if not raw:
                if self.opener.pending:
                    raise trio.BrokenResourceError("the peer closed in the middle of a record")
                return b""
            try:
                plain = self.opener.open(raw)
            except ChannelError as e:
                raise ChannelBroken(str(e)) from None
            if plain:
                return plain

    async def aclose(self) -> None:
        await self.stream.aclose()


@contextlib.contextmanager
def _bounded(what: str) -> Iterator[None]:
    """A handshake's exchange, within ``HANDSHAKE_TIMEOUT``; a silence or a
    broken connection is a ChannelError."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            yield
    except trio.TooSlowError:
        raise ChannelError(f"{what} did not come within {HANDSHAKE_TIMEOUT:g} s") from None
    except trio.BrokenResourceError as e:
        raise ChannelError(f"the connection broke during the handshake: {e}") from None


async def _read_exactly(stream: trio.SocketStream, buf: bytearray, n: int) -> None:
    while len(buf) < n:
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            raise ChannelError("the other end closed during the handshake")
        buf += data


async def dial(stream: trio.SocketStream, keys: ChannelKeys, expect: bytes) -> PeerStream:
    """Run the dialler's side on a fresh connection to the node ``expect``;
    raises ChannelError (wrong node, not a member, too slow) or OSError."""
    if keys.revoked(expect):
        raise ChannelError("that node is revoked")
    initiator = Initiator(keys.identity, keys.keyring.primary, expect)
    first = initiator.first()
    buf = bytearray()
    want = LENGTH + HANDSHAKE_BYTES[1]
    with _bounded("the listener's answer"):
        await stream.send_all(PREAMBLE + len(first).to_bytes(LENGTH, "big") + first)
        await _read_exactly(stream, buf, want)
    if int.from_bytes(buf[:LENGTH], "big") != HANDSHAKE_BYTES[1]:
        raise ChannelError("the other end does not speak the peer channel")
    third, session = initiator.third(bytes(buf[LENGTH:want]))
    with _bounded("sending the last handshake message"):
        await stream.send_all(len(third).to_bytes(LENGTH, "big") + third)
    return PeerStream(stream, session, bytes(buf[want:]))


async def accept(stream: trio.SocketStream, initial: bytes, keys: ChannelKeys) -> PeerStream:
    """Run the listener's side; ``initial``: bytes read already (the sniffed
    start). Raises ChannelError (not a member, malformed, too slow) or OSError."""
    buf = bytearray(initial)
    head = len(PREAMBLE) + LENGTH
    ring, invites = keys.keyring.keys, keys.invites()
    responder = Responder(keys.identity, (*ring, *invites))
    with _bounded("the dialler's handshake"):
        await _read_exactly(stream, buf, head)
        size = int.from_bytes(buf[len(PREAMBLE) : head], "big")
        if bytes(buf[: len(PREAMBLE)]) != PREAMBLE or size != HANDSHAKE_BYTES[0]:
            raise ChannelError("not a peer channel handshake")
        await _read_exactly(stream, buf, head + size)
        second = responder.second(bytes(buf[head : head + size]))
        del buf[: head + size]
        await stream.send_all(len(second).to_bytes(LENGTH, "big") + second)
        want = LENGTH + HANDSHAKE_BYTES[2]
        await _read_exactly(stream, buf, want)
    if int.from_bytes(buf[:LENGTH], "big") != HANDSHAKE_BYTES[2]:
        raise ChannelError("handshake message 3 has the wrong size")
    session = responder.finish(bytes(buf[LENGTH:want]))
    if keys.revoked(session.peer):
        raise ChannelError("the dialler's node is revoked")
    matched = responder.matched if responder.matched is not None else 0
    invite = None if matched < len(ring) else invites[matched - len(ring)]
    return PeerStream(stream, session, bytes(buf[want:]), invite=invite)


def is_channel(first: bytes) -> bool:
    """Do a connection's first bytes open a peer channel?"""
    return first[: len(PREAMBLE)] == PREAMBLE[: len(first)] and bool(first)
