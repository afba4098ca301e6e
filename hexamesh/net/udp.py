"""The real transport: trio UDP for datagrams, TCP on the same port for streams.

As in memberlist, one port number serves both: UDP for the small, frequent
messages (probes, gossip, DHT RPCs) and TCP for anything over one datagram.
The TCP port also takes peers' forwards: the first byte tells them apart (a
frame's length prefix starts with 0) and every other connection goes to the
handler given to ``serve_http`` (the front door's ``serve_peer``: the peer
channel's handshake, then HTTP inside it; plain HTTP is answered 403).
Streams carry frames with a 4-byte big-endian length prefix; a frame over
``max_frame`` or a peer that stalls mid-frame ends the stream with an error.

Anyone can connect, so every TCP connection is admitted first
(``net.admission``: at most ``CONNECTIONS_PER_SOURCE`` from one address and
``PEER_HTTP_CONNECTIONS`` in all, an idle HTTP connection evicted for a new
one at the bound) and must say what it is within ``SNIFF_TIMEOUT``.
Accepted streams wait in a bounded queue (``STREAM_BACKLOG``); when it is
full new ones are closed at once and counted. Running out of descriptors
makes the accept loop pause (``ACCEPT_BACKOFF``), never end; one connection
that fails in any way is reported to ``faults`` and closed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket as _stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from hexamesh.faults import Component, Faults
from hexamesh.limits import (
    ACCEPT_BACKOFF,
    CONNECTIONS_PER_SOURCE,
    PEER_HTTP_CONNECTIONS,
    SNIFF_TIMEOUT,
    STREAM_BACKLOG,
)
from hexamesh.net.admission import Admission, Ticket
from hexamesh.net.base import Addr, FrameStream, peer_addr
from hexamesh.wire import MAX_STREAM_FRAME, WireError

__all__ = [
    "HttpHandler",
    "TcpFrameStream",
    "TransportStats",
    "UdpTransport",
    "ip_family",
    "open_udp_transport",
]

# (connection, its first bytes, its place on the port): the front door
HttpHandler = Callable[[trio.SocketStream, bytes, Ticket], Awaitable[None]]

log = logging.getLogger(__name__)

RECV_BUFFER = 65536  # bytes; larger than any datagram, so nothing is truncated
BIND_ATTEMPTS = 20  # with port 0: tries to find a port free for both UDP and TCP
# accept() errors that mean "out of a resource for now" (as trio's serve_listeners)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_LENGTH = 4


@dataclass
class TransportStats:
    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    send_errors: int = 0  # sendto failed (unreachable, no route, buffer full)
    streams_refused: int = 0  # backlog full
    http_refused: int = 0  # HTTP connections with no handler
    accept_errors: int = 0  # accept() failed (out of descriptors, ...): the loop paused
    silent: int = 0  # connections that said nothing within SNIFF_TIMEOUT


class TcpFrameStream:
    """Length-prefixed frames over a trio stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame: int = MAX_STREAM_FRAME,
        initial: bytes = b"",
        ticket: Ticket | None = None,
    ) -> None:
        self._stream = stream
        self._buffer = bytearray(initial)
        self.max_frame = max_frame
        self._ticket = ticket  # its place on the port, given back when it closes

    async def send_frame(self, frame: bytes) -> None:
        if len(frame) > self.max_frame:
            raise ValueError(f"frame of {len(frame)} bytes over the {self.max_frame}-byte limit")
        await self._stream.send_all(len(frame).to_bytes(_LENGTH, "big") + frame)

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            chunk = await self._stream.receive_some(RECV_BUFFER)
            if not chunk:
                if self._buffer:
                    raise WireError("stream closed in the middle of a frame")
                raise EOFError
            self._buffer += chunk

    async def receive_frame(self) -> bytes:
        await self._fill(_LENGTH)
        size = int.from_bytes(self._buffer[:_LENGTH], "big")
        if size > self.max_frame:
            raise WireError(f"frame of {size} bytes over the {self.max_frame}-byte limit")
        await self._fill(_LENGTH + size)
        frame = bytes(self._buffer[_LENGTH : _LENGTH + size])
        del self._buffer[: _LENGTH + size]
        return frame

    async def aclose(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
        await self._stream.aclose()


def ip_family(host: str) -> int | None:
    """``AF_INET`` or ``AF_INET6`` for an IP literal; None for a host name."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return _stdlib_socket.AF_INET6 if version == 6 else _stdlib_socket.AF_INET


class UdpTransport:
    """Bound UDP socket plus a TCP listener on the same port."""

    def __init__(
        self, udp: trio.socket.SocketType, tcp: trio.socket.SocketType, faults: Faults | None = None
    ) -> None:
        self._udp = udp
        self._listener = trio.SocketListener(tcp)
        host, port = udp.getsockname()[:2]
        self._local: Addr = (host, port)
        self.stats = TransportStats()
        self._streams_in, self._streams_out = trio.open_memory_channel[tuple[Addr, TcpFrameStream]](
            STREAM_BACKLOG
        )
        self._http_handler: HttpHandler | None = None  # ``serve_http``; refused until then
        self.admission = Admission(total=PEER_HTTP_CONNECTIONS, per_source=CONNECTIONS_PER_SOURCE)
        self.faults = faults or Faults()

    @property
    def local_address(self) -> Addr:
        return self._local

    def serve_http(self, handler: HttpHandler) -> None:
        """Hand HTTP connections on this port to ``handler`` (the front door, once
        it is built: it needs the comb, which needs this transport)."""
        self._http_handler = handler

    async def send(self, addr: Addr, data: bytes) -> None:
        if peer_addr(*addr) is None:  # a name or a bad port a peer gave: never resolved
            self.stats.send_errors += 1
            return
        try:
            await self._udp.sendto(data, addr)
        except (OSError, OverflowError, ValueError) as e:
            self.stats.send_errors += 1
            log.debug("sendto %s failed: %s", addr, e)
            return
        self.stats.datagrams_sent += 1
        self.stats.bytes_sent += len(data)

    async def receive(self) -> tuple[Addr, bytes]:
        while True:
            try:
                data, addr = await self._udp.recvfrom(RECV_BUFFER)
            except OSError as e:
                # ICMP errors from earlier sends can surface here on some systems.
                log.debug("recvfrom error ignored: %s", e)
                continue
            self.stats.datagrams_received += 1
            self.stats.bytes_received += len(data)
            return (addr[0], addr[1]), data

    async def open_stream(self, addr: Addr) -> FrameStream:
        if peer_addr(*addr) is None:
            raise OSError(f"not an address to dial: {addr!r}")
        stream = await trio.open_tcp_stream(addr[0], addr[1])
        return TcpFrameStream(stream)

    async def accept_stream(self) -> tuple[Addr, TcpFrameStream]:
        """The next incoming stream and the peer's (host, ephemeral port)."""
        return await self._streams_out.receive()

    async def _accept_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await self._listener.accept()
                except OSError as e:
                    # Out of descriptors (a flood, or a leak elsewhere): wait for
                    # some to close. Any other error of one accept: the same.
                    self.stats.accept_errors += 1
                    if e.errno not in ACCEPT_CAPACITY_ERRNOS:
                        self.faults.caught(Component.TRANSPORT, e, "an accept")
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                try:
                    source = str(stream.socket.getpeername()[0])
                except OSError:  # gone already
                    await _close(stream)
                    continue
                ticket = self.admission.admit(source)
                if ticket is None:
                    await _close(stream)
                    continue
                nursery.start_soon(self._contained, stream, ticket)

    async def _contained(self, stream: trio.SocketStream, ticket: Ticket) -> None:
        """One connection; whatever it does, it ends here (reported if it raised)."""
        handed_over = False
        try:
            handed_over = await self._sniff(stream, ticket)
        except Exception as e:
            self.faults.caught(Component.TRANSPORT, e, f"a connection from {ticket.source}")
        finally:
            if not handed_over:
                ticket.release()
                await _close(stream)

    async def _sniff(self, stream: trio.SocketStream, ticket: Ticket) -> bool:
        """Frames (first byte 0: a length prefix under 16 MiB) or HTTP (a method
        name). True when a frame stream was queued (its reader closes it)."""
        first = b""
        with (
            trio.move_on_after(SNIFF_TIMEOUT),
            contextlib.suppress(OSError, trio.BrokenResourceError),
        ):
            first = await stream.receive_some(RECV_BUFFER)
        if not first:  # silent, gone or timed out (a port scanner waiting for a banner)
            self.stats.silent += 1
            return False
        if first[0] == 0:
            peer = stream.socket.getpeername()
            framed = TcpFrameStream(stream, initial=first, ticket=ticket)
            try:
                self._streams_in.send_nowait(((peer[0], peer[1]), framed))
            except trio.WouldBlock:
                self.stats.streams_refused += 1
                return False
            return True
        if self._http_handler is None:
            self.stats.http_refused += 1
            return False
        await self._http_handler(stream, first, ticket)
        return False

    async def aclose(self) -> None:
        self._udp.close()
        await self._listener.aclose()


async def _bind(host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    family = ip_family(host) or _stdlib_socket.AF_INET  # a name binds IPv4
    for _ in range(BIND_ATTEMPTS if port == 0 else 1):
        udp = trio.socket.socket(family, _stdlib_socket.SOCK_DGRAM)
        try:
            await udp.bind((host, port))
        except OSError as e:
            udp.close()
            raise OSError(e.errno, f"UDP {host}:{port}: {e.strerror}") from None
        bound_port = udp.getsockname()[1]
        tcp = trio.socket.socket(family, _stdlib_socket.SOCK_STREAM)
        tcp.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        try:
            await tcp.bind((host, bound_port))
        except OSError as e:
            udp.close()
            tcp.close()
            if e.errno == errno.EADDRINUSE and port == 0:
                continue  # the TCP side of this port is taken; draw another
            raise OSError(e.errno, f"TCP {host}:{bound_port}: {e.strerror}") from None
        tcp.listen(128)
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()


@asynccontextmanager
async def open_udp_transport(
    host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None
) -> AsyncIterator[UdpTransport]:
    """Bind UDP and TCP on ``host:port`` (0 = any free port) for the block's duration."""
    udp, tcp = await _bind(host, port)
    transport = UdpTransport(udp, tcp, faults)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport._accept_loop)
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await transport.aclose()
