"""HTTP/1.1 server connections: requests parsed by h11, responses written raw.

Why not an ASGI server for the front door: the forward path must move a
streamed answer with as few Python operations per token as possible, and an
ASGI stack (hypercorn + starlette + httpx) spends about 100 µs of CPU per
streamed token on the chunk events alone (measured, issue 7). So h11 parses
each request (the part where malformed input lives), the route is decided on
the parsed request, and the answer is written to the socket as bytes: small
JSON responses in one write, streams by the relay (``relay.py``) straight
from the upstream socket. One fresh h11 state machine per request keeps
keep-alive simple: bytes after a request carry over to the next.

Limits: a request head over ``MAX_HEAD`` bytes is 431, a body over
``requests.MAX_BODY`` is 413, a client silent for ``IDLE_TIMEOUT`` between
requests (or ``READ_TIMEOUT`` within one) is disconnected.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

import h11
import trio

from hexamesh.serve.requests import MAX_BODY, ApiError

__all__ = ["HttpConnection", "Request", "response_head"]

MAX_HEAD = 64 * 1024  # bytes of request line + headers
IDLE_TIMEOUT = 75.0  # s a keep-alive connection may sit idle (above common client pools' 60 s)
READ_TIMEOUT = 30.0  # s to receive a whole request once it has begun
RECV_SIZE = 65536  # bytes per read

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
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


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpConnection:
    """One accepted connection: ``next_request()``, then a response, repeat."""

    def __init__(self, stream: trio.SocketStream, initial: bytes = b"") -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self._pending = initial
        self.closed = False

    async def next_request(self) -> Request | None:
        """The next request, or None when the client is done; raises ApiError on bad input."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if self._pending:
            conn.receive_data(self._pending)
            self._pending = b""
        request: h11.Request | None = None
        body = bytearray()
        deadline = trio.current_time() + IDLE_TIMEOUT
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                self.closed = True
                status = e.error_status_hint
                raise ApiError(
                    431 if status == 431 else 400, f"malformed HTTP request: {e}"
                ) from None
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline) as scope:
                    try:
                        data = await self.stream.receive_some(RECV_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                if scope.cancelled_caught:
                    self.closed = True
                    return None
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                deadline = trio.current_time() + READ_TIMEOUT
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    self.closed = True
                    raise ApiError(413, f"request body is over the {MAX_BODY}-byte limit")
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                self._pending = conn.trailing_data[0]
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
                keep_alive = _keep_alive(request)
                return Request(
                    method=request.method.decode("ascii"),
                    target=request.target.decode("latin-1"),
                    headers=headers,
                    body=bytes(body),
                    keep_alive=keep_alive,
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                self.closed = True
                return None

    async def send(self, data: bytes) -> None:
        """Write all of ``data`` to the client (raises BrokenPipeError if it left)."""
        await write_all(self.fd, data)

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


def _keep_alive(request: h11.Request) -> bool:
    if request.http_version == b"1.0":
        return any(k == b"connection" and v.lower() == b"keep-alive" for k, v in request.headers)
    return not any(k == b"connection" and b"close" in v.lower() for k, v in request.headers)


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
