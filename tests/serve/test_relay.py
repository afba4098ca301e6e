"""Opening an upstream: IP literals connected directly, names resolved, clear errors."""

import socket

import pytest
import trio

from hexamesh.serve.relay import (
    CONNECT_TIMEOUT,
    DialError,
    UpstreamError,
    dial_first,
    open_upstream,
    read_body,
)
from hexamesh.serve.upstreampool import UpstreamPool
from tests.serve.fake_upstream import Blackhole

REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"


async def _serve_once(listeners: list[trio.SocketListener]) -> None:
    stream = await listeners[0].accept()
    async with stream:
        got = b""
        while b"\r\n\r\n" not in got:
            got += await stream.receive_some(4096)
        assert got == REQUEST
        await stream.send_all(ANSWER)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_upstream_answers_by_ip_literal_or_by_name(host: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_once, listeners)
        up = await open_upstream(host, port, REQUEST)
        try:
            assert up.status == 200
            assert await read_body(up) == b"hello"
        finally:
            await up.aclose()
    await listeners[0].aclose()


async def test_a_closed_port_is_a_clear_upstream_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError, match=f"cannot connect to 127.0.0.1:{port}"):
        await open_upstream("127.0.0.1", port, REQUEST)


KEEP_REQUEST = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"


async def _keep_alive_server(
    listeners: list[trio.SocketListener], accepted: list[int], drop_second: bool
) -> None:
    """Answers each request on a connection (keep-alive); with ``drop_second``
    the first connection reads its second request and closes without an
    answer, as a server does that timed the idle connection out just then."""

    async def handle(stream: trio.SocketStream) -> None:
        accepted.append(1)
        first_conn = len(accepted) == 1
        async with stream:
            for n in range(10):
                got = b""
                while b"\r\n\r\n" not in got:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    got += data
                if drop_second and first_conn and n == 1:
                    return
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize("drop_second", [False, True])
async def test_a_pooled_connection_is_reused_and_a_dropped_one_replaced(drop_second: bool) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    pool = UpstreamPool()
    accepted: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keep_alive_server, listeners, accepted, drop_second)
        for _ in range(3):
            up = await open_upstream("127.0.0.1", port, KEEP_REQUEST, pool)
            assert up.status == 200 and up.keep_alive
            assert await read_body(up) == b"ok"
            assert up.consumed
            await up.aclose()  # back to the pool
        assert len(pool) == 1
        # every request answered; one connection, or two when the first was dropped
        assert len(accepted) == (2 if drop_second else 1)
        assert pool.stats.reused == 2
        assert pool.stats.stale == (1 if drop_second else 0)
        pool.close()
        nursery.cancel_scope.cancel()


async def test_a_response_that_says_close_is_not_pooled() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    pool = UpstreamPool()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_once, listeners)
        up = await open_upstream("127.0.0.1", port, REQUEST, pool)
        assert await read_body(up) == b"hello"
        assert not up.keep_alive
        await up.aclose()
        assert len(pool) == 0
    await listeners[0].aclose()


def _closed_port() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


async def test_dial_first_passes_over_a_server_that_does_not_answer_its_syn() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    good = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    pool = UpstreamPool()
    with Blackhole() as hole:
        start = trio.current_time()
        first, stream = await dial_first([hole, good], pool, stagger=0.25)
        took = trio.current_time() - start
    assert first == 1 and stream is not None
    # the second was dialled after the stagger, not after the first's timeout
    assert 0.25 <= took < CONNECT_TIMEOUT
    await stream.aclose()
    await listeners[0].aclose()


async def test_dial_first_moves_on_at_once_when_a_server_refuses() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    good = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    with trio.fail_after(0.2):  # well under the stagger: the refusal starts the next dial
        first, stream = await dial_first([_closed_port(), good], UpstreamPool(), stagger=1.0)
    assert first == 1 and stream is not None
    await stream.aclose()
    with pytest.raises(DialError, match="cannot connect"):
        await dial_first([_closed_port(), _closed_port()], UpstreamPool())
    await listeners[0].aclose()


async def test_dial_first_takes_a_kept_connection_without_dialling() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    good = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    pool = UpstreamPool()
    kept = await trio.open_tcp_stream(*good)
    pool.give(good, kept)
    with Blackhole() as hole:
        # the kept connection to the second wins the moment the second is tried
        assert await dial_first([good, hole], pool) == (0, None)
        first, stream = await dial_first([hole, good], pool, stagger=0.05)
    assert (first, stream) == (1, None) and pool.has_idle(good)
    pool.close()
    await listeners[0].aclose()
