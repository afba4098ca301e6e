"""HTTP/1.1 server connections: requests parsed by httptools, responses written raw.

Why not an ASGI server for the front door: the forward path must move a
streamed answer with as few Python operations per token as possible, and an
ASGI stack (hypercorn + starlette + httpx) spends about 100 µs of CPU per
streamed token on the chunk events alone (measured, issue 7). So httptools
(llhttp, the parser of Node.js and uvicorn) parses each request (the part
where malformed input lives), the route is decided on the parsed request,
and the answer is written to the socket as bytes: small JSON responses in
one write, streams by the relay (``relay.py``) straight from the upstream
socket. Parsing costs ~3 µs a request here where h11 took ~40: a forwarded
request is parsed twice (the entry's door, then the server's), and both lie
on its path to the first token.

A connection may be a peer channel (``net.channel.PeerStream``): the request
is read through it like any stream, and every write is sealed first
(``sealer``); ``peer`` is then the node id its handshake proved.

One parser per connection: pipelined requests queue up and are answered in
order.

Limits (``hexamesh.limits``): a request head over ``MAX_HEAD`` bytes is 431,
a body over ``MAX_BODY`` is 413; a request whose head is not whole within
``HEAD_TIMEOUT`` of its first byte, or whose body is not within
``READ_TIMEOUT``, gets 408 and the connection is closed; a client silent
for ``IDLE_TIMEOUT`` between requests is disconnected (and may be sooner,
when the port is full: ``net.admission``). The connection is closed after a
request to upgrade it (WebSocket, CONNECT): nothing here speaks another
protocol.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from dataclasses import dataclass, field

import httptools
import trio

from hexamesh.limits import HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_BODY, MAX_HEAD, READ_TIMEOUT
from hexamesh.net.admission import Ticket
from hexamesh.net.channel import PeerStream
from hexamesh.net.noise import Sealer
from hexamesh.serve.requests import ApiError

__all__ = ["HttpConnection", "Request", "response_head"]

RECV_SIZE = 65536  # bytes per read

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str] = field(repr=False)  # lower-cased names; a repeated name: last wins
    body: bytes = field(repr=False)
    keep_alive: bool = True

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def bearer(self) -> str | None:
        """The credential of an ``Authorization: Bearer`` header, None without one."""
        scheme, _, key = self.headers.get("authorization", "").partition(" ")
        return key.strip() or None if scheme.lower() == "bearer" else None


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Parsed:
    """httptools' callbacks: what the parser found, request by request."""

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self.done: deque[Request] = deque()  # whole requests, in the order they came
        self.begun = False  # a request has begun and is not whole yet
        self.in_head = False  # ... and its head has not ended
        self.head_bytes = 0  # bytes of its URL and headers handed to us so far
        self.head_reads = 0  # bytes of the reads that began and ended inside its head
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.method = ""

    def on_message_begin(self) -> None:
        self._reset()
        self.begun = self.in_head = True
        self.head_bytes = self.head_reads = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count(len(name) + len(value) + 4)

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.method = self._conn.parser.get_method().decode("ascii")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise _BodyTooLarge

    def on_message_complete(self) -> None:
        self.done.append(
            Request(
                method=self.method,
                target=self.url.decode("latin-1"),
                headers=self.headers,
                body=bytes(self.body),
                keep_alive=self._conn.parser.should_keep_alive(),
            )
        )
        self.begun = False
        self._reset()


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the request head is over ``MAX_HEAD``."""


class _BodyTooLarge(Exception):
    """Raised from a parser callback: the body is over ``MAX_BODY``."""


class HttpConnection:
    """One accepted connection: ``next_request()``, then a response, repeat."""

    def __init__(
        self,
        stream: trio.SocketStream | PeerStream,
        initial: bytes = b"",
        ticket: Ticket | None = None,
    ) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        channel = stream if isinstance(stream, PeerStream) else None
        self.peer: bytes | None = channel.peer if channel else None  # the proven sender
        self.sealer: Sealer | None = channel.sealer if channel else None
        self._parsed = _Parsed(self)
        self.parser = httptools.HttpRequestParser(self._parsed)
        self._initial = initial
        self._ticket = ticket  # its place on the port: evictable while idle
        self.closed = False

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; raises ApiError on bad input (the connection is then done)."""
        parsed = self._parsed
        was_in_head = parsed.in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self.closed = True
            if isinstance(e.__context__, _HeadTooLarge):
                raise ApiError(431, f"request head is over the {MAX_HEAD}-byte limit") from None
            if isinstance(e.__context__, _BodyTooLarge):
                raise ApiError(413, f"request body is over the {MAX_BODY}-byte limit") from None
            raise
        except httptools.HttpParserUpgrade:
            self.closed = True  # what came before it is answered; nothing after
            return
        except httptools.HttpParserError as e:
            self.closed = True
            raise ApiError(400, f"malformed HTTP request: {e}") from None
        if was_in_head and parsed.in_head:
            # All of this read is head and the parser may hold a header it
            # has not handed us yet: bound that too (one endless header line).
            parsed.head_reads += len(data)
            if parsed.head_reads > MAX_HEAD:
                self.closed = True
                raise ApiError(431, f"request head is over the {MAX_HEAD}-byte limit")

    async def next_request(self) -> Request | None:
        """The next request, or None when the client is done; raises ApiError on bad input."""
        done = self._parsed.done
        if self._initial:
            data, self._initial = self._initial, b""
            self._feed(data)
        idle_until = trio.current_time() + IDLE_TIMEOUT
        began: float | None = None  # when the request's first byte came
        while not done:
            if self.closed:
                return None
            parsed = self._parsed
            if parsed.begun and began is None:
                began = trio.current_time()
            if began is None:
                deadline = idle_until
            else:
                deadline = began + (HEAD_TIMEOUT if parsed.in_head else READ_TIMEOUT)
            with trio.move_on_at(deadline) as scope:
                if began is None and self._ticket is not None:
                    self._ticket.idle(scope)  # between requests: may be evicted
                try:
                    data = await self.stream.receive_some(RECV_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                finally:
                    if self._ticket is not None:
                        self._ticket.busy()
            if scope.cancelled_caught or not data:
                self.closed = True
                if scope.cancelled_caught and began is not None:
                    part = "head" if parsed.in_head else "body"
                    limit = HEAD_TIMEOUT if parsed.in_head else READ_TIMEOUT
                    raise ApiError(408, f"the request's {part} did not come within {limit:g} s")
                return None
            self._feed(data)
        return done.popleft()

    async def send(self, data: bytes) -> None:
        """Write all of ``data`` to the client (raises BrokenPipeError if it left)."""
        await write_all(self.fd, data if self.sealer is None else self.sealer.seal(data))

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
        keep_alive: bool = True,
    ) -> None:
        head = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        if not keep_alive:
            head.append(("connection", "close"))
            self.closed = True
        await self.send(response_head(status, head) + body)

    async def respond_error(self, err: ApiError, *, keep_alive: bool = True) -> None:
        await self.respond(err.status, err.body(), headers=err.headers, keep_alive=keep_alive)

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


async def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything to a non-blocking socket fd, waiting when its buffer is full.

    The common case (the kernel takes it all) costs one syscall and no trip
    through the scheduler: this is on the per-token path.
    """
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                raise BrokenPipeError(e.errno, "peer closed the connection") from None
            raise
        view = view[n:]
