"""The relay loop: whole chunks only, head with the first chunk, outcomes,
backpressure from a slow client, stalls, cancellation (socketpairs)."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from hexamesh.serve.pumpthread import Outcome, PumpThread, StreamJob
from hexamesh.serve.sse import LAST_CHUNK, chunk, dechunk


@pytest.fixture
def pumps():  # type: ignore[no-untyped-def]
    p = PumpThread()
    yield p
    p.close()


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets():  # type: ignore[no-untyped-def]
    yield
    while OPEN:
        OPEN.pop().close()


def pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    up_theirs, up_ours = socket.socketpair()
    client_ours, client_theirs = socket.socketpair()
    for s in (up_ours, client_ours):
        s.setblocking(False)
    OPEN.extend((up_theirs, up_ours, client_ours, client_theirs))
    return up_theirs, up_ours, client_ours, client_theirs


def job(up: socket.socket, client: socket.socket, **kw) -> StreamJob:  # type: ignore[no-untyped-def]
    return StreamJob(
        up_fd=up.fileno(),
        client_fd=client.fileno(),
        chunked=kw.pop("chunked", True),
        head=kw.pop("head", b"HEAD\r\n\r\n"),
        first=kw.pop("first", b""),
        stall_timeout=kw.pop("stall_timeout", 5.0),
    )


def read_all(s: socket.socket) -> bytes:
    s.settimeout(2)
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except TimeoutError:
            return out
        if not data:
            return out
        out += data


async def test_a_whole_stream_with_the_head_first(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    events = [b"data: %d\n\n" % i for i in range(5)]
    body = b"".join(chunk(e) for e in events) + LAST_CHUNK
    j = job(up, client, first=body[:7])  # part of the body came with the upstream's head
    theirs.sendall(body[7:])
    assert await pumps.relay(j) is Outcome.DONE
    client.close()
    got = read_all(reader)
    assert got == b"HEAD\r\n\r\n" + body
    assert dechunk(b"".join(j.sent)) == b"".join(events)


async def test_upstream_death_mid_chunk_leaves_the_client_whole_chunks(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    whole = chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n")
    theirs.sendall(whole + chunk(b"data: 3\n\n")[:6])
    theirs.close()
    j = job(up, client)
    assert await pumps.relay(j) is Outcome.UPSTREAM_FAILED
    client.close()
    assert read_all(reader) == b"HEAD\r\n\r\n" + whole
    assert b"".join(j.sent) == whole


async def test_nothing_reaches_the_client_when_upstream_dies_before_a_chunk(
    pumps: PumpThread,
) -> None:
    theirs, up, client, reader = pairs()
    theirs.sendall(b"1a\r\ndata: par")
    theirs.close()
    assert await pumps.relay(job(up, client)) is Outcome.UPSTREAM_FAILED
    client.close()
    assert read_all(reader) == b""  # not even the head: failover stays invisible


async def test_a_client_that_left(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    reader.close()
    theirs.sendall(chunk(b"data: 1\n\n"))
    assert await pumps.relay(job(up, client)) is Outcome.CLIENT_GONE


async def test_a_stall_counts_as_upstream_failure(pumps: PumpThread) -> None:
    _theirs, up, client, _reader = pairs()
    with trio.fail_after(5):
        assert await pumps.relay(job(up, client, stall_timeout=0.2)) is Outcome.UPSTREAM_FAILED


async def test_a_slow_client_gets_everything_through_backpressure(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = [chunk(b"data: " + b"x" * 3000 + b"\n\n") for _ in range(200)]
    body = b"".join(big) + LAST_CHUNK
    got = bytearray()

    def drain() -> None:
        reader.settimeout(5)
        while len(got) < len(body) + 8:
            got.extend(reader.recv(1000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, theirs.sendall, body))
        nursery.start_soon(trio.to_thread.run_sync, drain)
        assert await pumps.relay(job(up, client)) is Outcome.DONE
    assert bytes(got) == b"HEAD\r\n\r\n" + body


async def test_cancelling_hands_the_sockets_back(pumps: PumpThread) -> None:
    theirs, up, client, _reader = pairs()
    with trio.move_on_after(0.2) as scope:
        await pumps.relay(job(up, client))
    assert scope.cancelled_caught
    # the loop let go of both sockets: the same ones can be relayed again
    theirs.sendall(chunk(b"data: 1\n\n") + LAST_CHUNK)
    assert await pumps.relay(job(up, client)) is Outcome.DONE


def relay_soon(nursery: trio.Nursery, pumps: PumpThread, j: StreamJob) -> list[Outcome]:
    """Relay ``j`` in the background; its outcome lands in the list returned."""
    outcome: list[Outcome] = []

    async def relay() -> None:
        outcome.append(await pumps.relay(j))

    nursery.start_soon(relay)
    return outcome


async def test_abandoning_a_silent_upstream_ends_the_job_at_once(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    whole = chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n")
    theirs.sendall(whole)  # then silence, the connection open (a frozen server)
    j = job(up, client, stall_timeout=60.0)
    async with trio.open_nursery() as nursery:
        outcome = relay_soon(nursery, pumps, j)
        with trio.fail_after(2):
            while b"".join(j.sent) != whole:
                await trio.sleep(0.01)
        with trio.fail_after(2):  # not the 60 s stall timeout
            pumps.abandon(j)
            while not outcome:
                await trio.sleep(0.01)
    assert outcome == [Outcome.UPSTREAM_FAILED]
    client.close()
    assert read_all(reader) == b"HEAD\r\n\r\n" + whole
    assert b"".join(j.sent) == whole


async def test_a_job_abandoned_before_it_starts_sends_nothing(pumps: PumpThread) -> None:
    theirs, up, client, reader = pairs()
    theirs.sendall(chunk(b"data: 1\n\n"))
    j = job(up, client, first=chunk(b"data: 0\n\n"))
    pumps.abandon(j)  # the verdict came before the relay started
    with trio.fail_after(2):
        assert await pumps.relay(j) is Outcome.UPSTREAM_FAILED
    client.close()
    assert read_all(reader) == b""
    assert j.sent == []


async def test_abandoning_mid_write_lets_the_client_have_the_whole_chunk(
    pumps: PumpThread,
) -> None:
    """A chunk half written to a slow client is finished before the job ends:
    what follows (a continuation) must start on a chunk boundary."""
    theirs, up, client, reader = pairs()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = chunk(b"data: " + b"x" * 200_000 + b"\n\n")
    theirs.sendall(big[:1000])
    j = job(up, client, stall_timeout=60.0)
    async with trio.open_nursery() as nursery:
        outcome = relay_soon(nursery, pumps, j)
        nursery.start_soon(partial(trio.to_thread.run_sync, theirs.sendall, big[1000:]))
        with trio.fail_after(2):
            while not j.sent:  # the chunk is whole upstream and being written
                await trio.sleep(0.01)
        pumps.abandon(j)
        await trio.sleep(0.2)
        assert not outcome  # still writing: the client has not read
        got = await trio.to_thread.run_sync(read_all, reader)
        with trio.fail_after(2):
            while not outcome:
                await trio.sleep(0.01)
    assert outcome == [Outcome.UPSTREAM_FAILED]
    assert got == b"HEAD\r\n\r\n" + big
