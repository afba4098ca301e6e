"""The upstream pool: LIFO reuse, expiry, dead connections dropped, bounded, closable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from hexamesh.serve.upstreampool import UpstreamPool

KEY = ("127.0.0.1", 8000)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Pair = Callable[[], tuple[trio.SocketStream, trio.SocketStream]]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """Connected socket pairs (pooled end, server end), all closed after the test."""
    made: list[trio.socket.SocketType] = []

    def make() -> tuple[trio.SocketStream, trio.SocketStream]:
        a, b = trio.socket.socketpair()
        made.extend((a, b))
        return trio.SocketStream(a), trio.SocketStream(b)

    yield make
    for sock in made:
        sock.close()


def is_closed(stream: trio.SocketStream) -> bool:
    return stream.socket.fileno() == -1


async def test_the_most_recently_used_connection_comes_back_first(pair: Pair) -> None:
    pool = UpstreamPool(clock=Clock())
    (a, _pa), (b, _pb) = pair(), pair()
    assert pool.take(KEY) is None
    pool.give(KEY, a)
    pool.give(KEY, b)
    assert pool.take(KEY) is b
    assert pool.take(KEY) is a
    assert pool.take(KEY) is None
    assert pool.take(("127.0.0.1", 8001)) is None
    assert pool.stats.reused == 2


async def test_an_idle_connection_expires_after_the_ttl(pair: Pair) -> None:
    clock = Clock()
    pool = UpstreamPool(ttl=3.0, clock=clock)
    a, _peer = pair()
    pool.give(KEY, a)
    clock.now += 3.5
    assert pool.take(KEY) is None
    assert is_closed(a)
    assert pool.stats.expired == 1


async def test_expired_connections_of_upstreams_nobody_asks_for_are_swept(pair: Pair) -> None:
    clock = Clock()
    pool = UpstreamPool(ttl=3.0, clock=clock)
    a, _pa = pair()
    b, _pb = pair()
    pool.give(KEY, a)
    clock.now += 3.5
    pool.give(("10.0.0.2", 9000), b)  # any use of the pool sweeps the others
    assert is_closed(a)
    assert len(pool) == 1


async def test_a_connection_the_server_closed_is_dropped_not_reused(pair: Pair) -> None:
    pool = UpstreamPool(clock=Clock())
    alive, _alive_peer = pair()
    dead, dead_peer = pair()
    pool.give(KEY, alive)
    pool.give(KEY, dead)
    dead_peer.socket.close()  # the server closed it while idle: EOF waits
    assert pool.take(KEY) is alive
    assert is_closed(dead)
    assert pool.stats.stale == 1


async def test_stray_bytes_make_a_connection_unusable(pair: Pair) -> None:
    pool = UpstreamPool(clock=Clock())
    a, peer = pair()
    pool.give(KEY, a)
    await peer.send_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert pool.take(KEY) is None
    assert is_closed(a)


async def test_the_idle_connections_per_upstream_are_bounded_oldest_closed_first(
    pair: Pair,
) -> None:
    pool = UpstreamPool(max_idle=2, clock=Clock())
    streams = [pair() for _ in range(3)]
    for s, _ in streams:
        pool.give(KEY, s)
    assert len(pool) == 2
    assert is_closed(streams[0][0])
    assert not is_closed(streams[2][0])


async def test_close_closes_the_idle_and_later_give_backs(pair: Pair) -> None:
    pool = UpstreamPool(clock=Clock())
    a, _pa = pair()
    b, _pb = pair()
    pool.give(KEY, a)
    pool.close()
    assert is_closed(a)
    pool.give(KEY, b)
    assert is_closed(b)
    assert pool.take(KEY) is None


async def test_idle_connections_in_all_are_bounded_the_oldest_closed(pair: Pair) -> None:
    clock = Clock()
    pool = UpstreamPool(max_total=3, clock=clock)
    streams = []
    for i in range(4):  # four upstreams, one connection each, a second apart
        s, _ = pair()
        streams.append(s)
        pool.give(("127.0.0.1", 9000 + i), s)
        clock.now += 1
    assert len(pool) == 3
    assert is_closed(streams[0]) and not any(is_closed(s) for s in streams[1:])
    assert pool.take(("127.0.0.1", 9000)) is None
    assert pool.take(("127.0.0.1", 9003)) is streams[3]
