"""The benchmarks' lean client against a stand-in server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio

from simulations.loadgen import LeanClient, LoadError


def _event(obj: object) -> bytes:
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _token(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "text": text, "finish_reason": None}], "usage": None})


END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

Handler = Callable[[trio.SocketStream, dict[str, object]], Awaitable[bool]]


async def _read_request(stream: trio.SocketStream, buf: bytes) -> tuple[dict[str, object], bytes]:
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return json.loads(body[:length]), body[length:]


@dataclass
class Seen:
    requests: list[dict[str, object]] = field(default_factory=list)
    connections: int = 0


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, Seen]]:
    """A server on 127.0.0.1 whose ``handler`` answers each request (False:
    close the connection after it); yields its URL and what it saw."""
    seen = Seen()

    async def connection(stream: trio.SocketStream) -> None:
        seen.connections += 1
        buf = b""
        async with stream:
            while True:
                try:
                    request, buf = await _read_request(stream, buf)
                except EOFError:
                    return
                seen.requests.append(request)
                if not await handler(stream, request):
                    return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}", seen
        nursery.cancel_scope.cancel()


async def _with_usage(stream: trio.SocketStream, request: dict[str, object]) -> bool:
    n = int(request["max_tokens"])  # type: ignore[call-overload]
    await stream.send_all(STREAM_HEAD)
    for i in range(n):
        await stream.send_all(_token(f" t{i}"))
    if request.get("stream_options") == {"include_usage": True}:
        usage = {"prompt_tokens": 2, "completion_tokens": n, "total_tokens": n + 2}
        await stream.send_all(_event({"choices": [], "usage": usage}))
    await stream.send_all(END)
    return True


async def test_tokens_come_from_usage_over_one_kept_alive_connection() -> None:
    async with serving(_with_usage) as (url, seen), LeanClient(url) as client:
        first = await client.stream(model="tiny", prompt="x", max_tokens=7)
        second = await client.stream(model="tiny", prompt="x", max_tokens=3)
    assert (first.tokens, first.usage_reported) == (7, True)
    assert second.tokens == 3
    assert first.ttft_s is not None and first.ttft_s > 0
    asked = seen.requests[0]
    assert asked["stream"] is True and asked["model"] == "tiny" and asked["max_tokens"] == 7
    assert len(seen.requests) == 2 and seen.connections == 1 and client.reconnects == 0


async def test_without_usage_each_event_counts_as_a_token() -> None:
    async def no_usage(stream: trio.SocketStream, request: dict[str, object]) -> bool:
        await stream.send_all(STREAM_HEAD + _token("a") + _token("b") + _token("c") + END)
        return True

    async with serving(no_usage) as (url, _), LeanClient(url) as client:
        got = await client.stream(model="tiny", prompt="x", max_tokens=3)
    assert (got.tokens, got.usage_reported) == (3, False)


async def test_an_idle_connection_the_server_closed_is_replaced_once() -> None:
    async def one_per_connection(stream: trio.SocketStream, request: dict[str, object]) -> bool:
        await _with_usage(stream, request)
        return False  # close after each answer, as uvicorn does to idle connections

    async with serving(one_per_connection) as (url, seen), LeanClient(url) as client:
        for _ in range(3):
            assert (await client.stream(model="tiny", prompt="x", max_tokens=2)).tokens == 2
    assert client.reconnects == 2 and seen.connections == 3 and len(seen.requests) == 3


async def test_an_error_status_raises_with_the_servers_message() -> None:
    async def refuse(stream: trio.SocketStream, request: dict[str, object]) -> bool:
        body = json.dumps({"error": {"message": "model 'nope' does not exist"}}).encode()
        head = b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n" % len(body)
        await stream.send_all(head + body)
        return True

    async with serving(refuse) as (url, _), LeanClient(url) as client:
        with pytest.raises(LoadError, match=r"404.*does not exist"):
            await client.stream(model="nope", prompt="x", max_tokens=2)


async def test_an_error_event_or_a_cut_stream_raises() -> None:
    async def error_event(stream: trio.SocketStream, request: dict[str, object]) -> bool:
        await stream.send_all(
            STREAM_HEAD + _token("a") + _event({"error": {"message": "boom"}}) + END
        )
        return True

    async def cut(stream: trio.SocketStream, request: dict[str, object]) -> bool:
        await stream.send_all(STREAM_HEAD + _token("a"))
        return False

    async with serving(error_event) as (url, _), LeanClient(url) as client:
        with pytest.raises(LoadError, match="boom"):
            await client.stream(model="tiny", prompt="x", max_tokens=2)
    async with serving(cut) as (url, _), LeanClient(url) as client:
        with pytest.raises(LoadError, match="before its end"):
            await client.stream(model="tiny", prompt="x", max_tokens=2)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanClient("https://example.org")
