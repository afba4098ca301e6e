"""Moving an answer from an upstream server (vLLM or a peer) to the client.

``open_upstream`` connects, sends the request and reads the response head;
``read_body`` reads a whole (non-streamed) answer. A streamed answer is then
moved by ``pumpthread.PumpThread``: one ``os.read`` of up to 64 KiB, a
chunk-boundary check (:class:`sse.ChunkScanner`), one ``os.write`` to the
client, no SSE parsing. The bytes sent are kept by reference, so that if the
upstream dies mid-stream the front door can read what the client already has
and continue elsewhere (``sse.progress``).

Connections that ended cleanly go back to an ``upstreampool.UpstreamPool``
when the caller has one (``UpstreamResponse.aclose`` after ``consumed``), and
``open_upstream`` takes one from it first.

``dial_first`` races connections to several candidate servers, each started
``DIAL_STAGGER`` after the one before unless that one failed already (RFC
8305's happy eyeballs, over servers instead of address families), and pools
the first that connects. On a LAN a SYN is answered in well under a
millisecond; a connect still pending after 250 ms is most likely going
nowhere (a host across a partition, a dead machine), and waiting out
``CONNECT_TIMEOUT`` for it cost every such request 3 s (``hexamesh simulate``).

A peer is reached through the peer channel (``net.channel``): the handshake
is part of connecting (so a dial race counts it), the node id dialled is
pinned, and a pooled connection is reused only for the node it reached.

Dead upstreams are noticed by EOF/RST, by TCP keepalive (a vanished host:
about ``KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL`` s), and by
``STALL_TIMEOUT`` of silence mid-stream.
"""

from __future__ import annotations

import socket as _stdlib_socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from hexamesh.limits import MAX_RESPONSE_BODY, MAX_RESPONSE_HEAD
from hexamesh.net.channel import ChannelKeys, PeerStream, dial
from hexamesh.net.noise import ChannelError, Opener
from hexamesh.net.udp import ip_family
from hexamesh.serve.http import RECV_SIZE
from hexamesh.serve.sse import ChunkError, ChunkScanner, dechunk
from hexamesh.serve.upstreampool import Upstream, UpstreamPool

__all__ = [
    "DialError",
    "Peer",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "dial_first",
    "open_upstream",
    "read_body",
]

CONNECT_TIMEOUT = 3.0  # s; a peer on the LAN answers a SYN in under a millisecond
DIAL_STAGGER = 0.25  # s a connect may take before the next candidate is dialled too (RFC 8305)
FIRST_BYTE_TIMEOUT = 120.0  # s until the response head: covers queueing in a busy vLLM
STALL_TIMEOUT = 60.0  # s of silence mid-stream before the upstream counts as dead
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 2, 3  # s, s, probes


@dataclass(frozen=True, slots=True)
class Peer:
    """Whom a connection to a peer must reach, and the keys to prove we are a member."""

    node: bytes
    keys: ChannelKeys


class UpstreamError(Exception):
    """The upstream could not be reached or broke off (before the client saw anything)."""


class DialError(UpstreamError):
    """None of the ``tried`` servers ``dial_first`` raced connected."""

    def __init__(self, message: str, tried: int) -> None:
        super().__init__(message)
        self.tried = tried


@dataclass(slots=True)
class UpstreamResponse:
    stream: Upstream
    status: int
    headers: dict[str, str] = field(repr=False)
    rest: bytes = field(repr=False)  # body bytes read along with the head
    fd: int = -1
    keep_alive: bool = False  # the server will take another request on this connection
    pool: UpstreamPool | None = field(default=None, repr=False)
    key: tuple[str, int] = ("", 0)
    consumed: bool = False  # the whole response was read, nothing after it: reusable
    on_close: Callable[[], None] | None = field(default=None, repr=False)  # once, at aclose

    def _clean(self) -> bool:
        """Nothing of a peer channel's is read ahead (a partial record, bytes
        that came with the handshake): else reuse would break its records."""
        return not isinstance(self.stream, PeerStream) or self.stream.idle

    @property
    def opener(self) -> Opener | None:
        """The channel's receiving half (a peer), for the relay thread; None: plain."""
        return self.stream.opener if isinstance(self.stream, PeerStream) else None

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    async def aclose(self) -> None:
        """Give the connection back to the pool if it can carry another request, else close."""
        done, self.on_close = self.on_close, None
        if done is not None:
            done()
        if self.pool is not None and self.consumed and self.keep_alive and self._clean():
            self.pool.give(self.key, self.stream)
            return
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


def _keepalive(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE, 1)
    if hasattr(_stdlib_socket, "TCP_KEEPIDLE"):
        sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(
            _stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL
        )
        sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def request_bytes(
    method: str,
    host: str,
    port: int,
    target: str,
    body: bytes,
    headers: list[tuple[str, str]],
    *,
    keep_alive: bool = False,  # True when the connection may go back to a pool afterwards
) -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *([] if keep_alive else ["connection: close"]),
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """(status, headers with lower-cased names, keep-alive) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    three_digits = len(code) == 3 and code.isascii() and code.isdigit()
    if not parts[0].startswith("HTTP/1.") or not three_digits:
        raise UpstreamError(f"malformed status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    http10 = parts[0] == "HTTP/1.0"  # keep-alive only when asked for
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    return int(code), headers, keep_alive


async def _connect(host: str, port: int, peer: Peer | None = None) -> Upstream:
    """A TCP connection, and the peer channel's handshake over it when the
    other end is a ``peer``. Peers and engines are addressed by IP literal,
    which needs no resolving and no happy eyeballs: a plain connect costs
    ~100 µs of CPU for both ends here where ``trio.open_tcp_stream`` costs
    ~240. Raises OSError (ChannelError included: see ``_ChannelFailed``)."""
    family = ip_family(host)
    if family is None:  # a host name
        stream = await trio.open_tcp_stream(host, port)
    else:
        sock = trio.socket.socket(family, _stdlib_socket.SOCK_STREAM)
        try:
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        stream = trio.SocketStream(sock)
    try:
        _keepalive(stream.socket)
        stream.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    except OSError:
        stream.socket.close()
        raise
    if peer is None:
        return stream
    try:
        return await dial(stream, peer.keys, peer.node)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        if isinstance(e, ChannelError):
            raise _ChannelFailed(f"peer channel to {host}:{port}: {e}") from None
        raise


class _ChannelFailed(OSError):
    """The handshake failed: to callers, a connection that could not be made."""


def _reaches(stream: Upstream, peer: Peer | None) -> bool:
    """Does a pooled connection reach whom we want (a peer: the node it was dialled as)?"""
    if peer is None:
        return not isinstance(stream, PeerStream)
    return isinstance(stream, PeerStream) and stream.peer == peer.node


class _Stale(Exception):
    """A pooled connection broke before any byte of the answer: the server had closed it."""


async def dial_first(
    addrs: Sequence[tuple[str, int]],
    pool: UpstreamPool,
    stagger: float = DIAL_STAGGER,
    peers: Sequence[Peer] | None = None,  # whom each address must reach (None: plain)
) -> tuple[int, Upstream | None]:
    """Which of ``addrs`` can take a request soonest: the first with an idle
    pooled connection (returned as ``(i, None)``: ``open_upstream`` takes it
    from the pool), or the first to connect, dialled in order ``stagger``
    apart, the next at once when one fails (``(i, its new connection)``).
    The other dials are abandoned. Raises DialError if none connects within
    ``CONNECT_TIMEOUT`` of its start."""
    if not addrs:
        raise DialError("no server to dial", 0)
    if pool.has_idle(addrs[0]):
        return 0, None  # the common case: a kept-alive connection, no dialling at all
    winner: int | None = None
    won: Upstream | None = None
    errors: list[str] = []

    async def dial(i: int, done: trio.Event) -> None:
        nonlocal winner, won
        host, port = addrs[i]
        try:
            if pool.has_idle(addrs[i]):
                stream = None
            else:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream = await _connect(host, port, peers[i] if peers else None)
        except (OSError, trio.TooSlowError) as e:
            errors.append(f"cannot connect to {host}:{port}: {e or 'timed out'}")
            done.set()
            return
        if winner is None:
            winner, won = i, stream
            nursery.cancel_scope.cancel()
        elif stream is not None:
            pool.give(addrs[i], stream)  # connected in the same instant: keep it for later

    async with trio.open_nursery() as nursery:
        for i in range(len(addrs)):
            failed = trio.Event()
            nursery.start_soon(dial, i, failed)
            if i + 1 < len(addrs):
                with trio.move_on_after(stagger):
                    await failed.wait()
    if winner is None:
        raise DialError("; ".join(errors), len(addrs))
    return winner, won


async def open_upstream(
    host: str,
    port: int,
    request: bytes,
    pool: UpstreamPool | None = None,
    stream: Upstream | None = None,
    peer: Peer | None = None,
) -> UpstreamResponse:
    """Connect (or take a pooled connection, or use ``stream``, just connected
    by ``dial_first``), send ``request``, read the response head; raises
    UpstreamError. With a ``pool`` the request must have
    been built with ``keep_alive=True``. ``peer``: the node to reach over the
    peer channel (None: a plain engine)."""
    key = (host, port)
    if stream is not None:
        return await _exchange(stream, host, port, request, pool, reused=False)
    if pool is not None:
        stream = pool.take(key)
        if stream is not None and not _reaches(stream, peer):
            pool.stats.stale += 1  # the address changed hands (a restart with a new key)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            stream = None
        if stream is not None:
            try:
                return await _exchange(stream, host, port, request, pool, reused=True)
            except _Stale:
                pool.stats.stale += 1  # sent again below, once, on a fresh connection
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await _connect(host, port, peer)
    except (OSError, trio.TooSlowError) as e:
        raise UpstreamError(f"cannot connect to {host}:{port}: {e or 'timed out'}") from None
    return await _exchange(stream, host, port, request, pool, reused=False)


async def _exchange(
    stream: Upstream,
    host: str,
    port: int,
    request: bytes,
    pool: UpstreamPool | None,
    *,
    reused: bool,
) -> UpstreamResponse:
    """Send ``request`` on ``stream`` and read the response head (closes it on failure)."""
    buf = b""
    try:
        with trio.fail_after(FIRST_BYTE_TIMEOUT):
            await stream.send_all(request)
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    raise UpstreamError(f"{host}:{port} closed before answering")
                buf += data
                if len(buf) > MAX_RESPONSE_HEAD:
                    raise UpstreamError(f"{host}:{port} sent an oversized response head")
        head, _, rest = buf.partition(b"\r\n\r\n")
        status, headers, keep_alive = parse_head(head)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, UpstreamError) as e:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        if reused and not buf and not isinstance(e, trio.TooSlowError):
            raise _Stale from None
        if isinstance(e, UpstreamError):
            raise
        raise UpstreamError(f"{host}:{port} failed before answering: {e or 'timed out'}") from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return UpstreamResponse(
        stream,
        status,
        headers,
        rest,
        stream.socket.fileno(),
        keep_alive=keep_alive,
        pool=pool,
        key=(host, port),
    )


async def read_body(up: UpstreamResponse) -> bytes:
    """A whole (non-streamed) body: by content-length, chunked, or to EOF."""
    buf = bytearray(up.rest)
    scanner = ChunkScanner() if up.chunked else None
    out = bytearray()
    try:
        length = _content_length(up.headers)
        if scanner is not None:
            out += scanner.feed(bytes(buf))
        with trio.fail_after(STALL_TIMEOUT):
            while True:
                if scanner is not None and scanner.done:
                    up.consumed = not scanner.pending
                    return dechunk(bytes(out))
                if length is not None and len(buf) >= length:
                    up.consumed = len(buf) == length
                    return bytes(buf[:length])
                data = await up.stream.receive_some(RECV_SIZE)
                if not data:
                    if length is None and scanner is None:
                        return bytes(buf)
                    raise UpstreamError("upstream closed in the middle of the answer")
                if scanner is not None:
                    out += scanner.feed(data)
                else:
                    buf += data
                if len(buf) + len(out) > MAX_RESPONSE_BODY:
                    raise UpstreamError("answer over the size limit")
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as e:
        raise UpstreamError(f"upstream failed mid-answer: {e or 'stalled'}") from None
    except ChunkError as e:
        raise UpstreamError(f"upstream sent a broken answer: {e}") from None


def _content_length(headers: dict[str, str]) -> int | None:
    """A response's content-length; UpstreamError if it is not a number."""
    text = headers.get("content-length")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise UpstreamError(f"bad content-length {text[:40]!r}")
    return int(text)
