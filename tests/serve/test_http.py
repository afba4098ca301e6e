"""The front door's HTTP/1.1 request side: parsing, keep-alive, limits, timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from hexamesh.limits import HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_BODY, MAX_HEAD, READ_TIMEOUT
from hexamesh.net.admission import Admission
from hexamesh.serve.http import HttpConnection
from hexamesh.serve.requests import ApiError

POST = (
    b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    b"X-Hexamesh-Node: ab\r\nContent-Length: 15\r\n\r\n"
    b'{"model": "m"}\n'
)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[HttpConnection, trio.SocketStream]]:
    server, client = trio.socket.socketpair()
    server_stream, client_stream = trio.SocketStream(server), trio.SocketStream(client)
    yield HttpConnection(server_stream), client_stream
    await server_stream.aclose()
    await client_stream.aclose()


async def test_a_request_split_into_single_bytes_is_parsed(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair

    async def dribble() -> None:
        for i in range(len(POST)):
            await client.send_all(POST[i : i + 1])
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        request = await conn.next_request()
    assert request is not None
    assert (request.method, request.target, request.path) == (
        "POST",
        "/v1/completions?x=1",
        "/v1/completions",
    )
    assert request.headers["x-hexamesh-node"] == "ab"  # names lower-cased
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"model": "m"}\n'
    assert request.keep_alive


async def test_pipelined_requests_come_out_in_order_then_none_at_eof(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    get = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    await client.send_all(POST + get + POST)
    await client.send_eof()
    got = [await conn.next_request() for _ in range(4)]
    assert [r.method if r else None for r in got] == ["POST", "GET", "POST", None]
    assert got[1] is not None and got[1].body == b""
    assert got[2] is not None and got[2].body == b'{"model": "m"}\n'


async def test_initial_bytes_count_as_the_start_of_the_stream() -> None:
    server, client = trio.socket.socketpair()
    conn = HttpConnection(trio.SocketStream(server), initial=POST[:10])
    async with trio.SocketStream(client) as c:
        await c.send_all(POST[10:])
        request = await conn.next_request()
    assert request is not None and request.body == b'{"model": "m"}\n'
    await conn.aclose()


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
async def test_keep_alive_follows_the_version_and_connection_header(
    pair: tuple[HttpConnection, trio.SocketStream], head: bytes, keep_alive: bool
) -> None:
    conn, client = pair
    await client.send_all(head)
    request = await conn.next_request()
    assert request is not None and request.keep_alive is keep_alive


async def test_a_chunked_body_is_reassembled(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    await client.send_all(
        b"POST /v1/jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    request = await conn.next_request()
    assert request is not None and request.body == b"abcde"


async def test_a_repeated_header_keeps_the_last_value(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    await client.send_all(b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    request = await conn.next_request()
    assert request is not None and request.headers["x-a"] == "2"


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT-HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ],
)
async def test_malformed_requests_are_400_and_end_the_connection(
    pair: tuple[HttpConnection, trio.SocketStream], garbage: bytes
) -> None:
    conn, client = pair
    await client.send_all(garbage)
    with pytest.raises(ApiError) as err:
        await conn.next_request()
    assert err.value.status == 400 and "malformed HTTP request" in err.value.message
    assert conn.closed


async def refused_while_sending(
    conn: HttpConnection, send: Callable[[], Awaitable[None]]
) -> ApiError:
    """The error the door answers ``next_request`` with while ``send`` runs
    (the door stops reading at a limit, so ``send`` may never finish)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with pytest.raises(ApiError) as err:
            await conn.next_request()
        nursery.cancel_scope.cancel()
    return err.value


async def test_many_headers_over_the_head_limit_are_431(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    header = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    head = b"GET / HTTP/1.1\r\n" + header * (MAX_HEAD // len(header) + 2) + b"\r\n"

    async def send() -> None:
        # the door stops reading at the limit, so this may never finish
        with trio.move_on_after(5):
            await client.send_all(head)

    error = await refused_while_sending(conn, send)
    assert error.status == 431 and conn.closed


async def test_one_endless_header_line_is_cut_off_at_the_head_limit(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    sent = 0

    async def send() -> None:
        nonlocal sent
        await client.send_all(b"GET / HTTP/1.1\r\nX-Endless: ")
        while True:  # never ends the line: the parser would hold it all
            await client.send_all(b"e" * 4096)
            sent += 4096

    error = await refused_while_sending(conn, send)
    assert error.status == 431
    assert sent < 4 * MAX_HEAD  # refused on the way, not after the client gave up


async def test_a_body_over_the_limit_is_413(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    body = b"x" * (MAX_BODY + 1)

    async def send() -> None:
        with trio.move_on_after(5):
            await client.send_all(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
            await client.send_all(body)

    error = await refused_while_sending(conn, send)
    assert error.status == 413 and conn.closed


async def test_a_chunked_body_over_the_limit_is_413(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    piece = b"x" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)

    async def send() -> None:
        with trio.move_on_after(5):
            await client.send_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(MAX_BODY // len(piece) + 2):
                await client.send_all(chunk)

    error = await refused_while_sending(conn, send)
    assert error.status == 413


async def test_an_upgrade_request_is_answered_and_nothing_after_it(
    pair: tuple[HttpConnection, trio.SocketStream],
) -> None:
    conn, client = pair
    await client.send_all(
        b"GET /health HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + POST
    )
    first = await conn.next_request()
    assert first is not None and first.path == "/health"
    assert conn.closed
    assert await conn.next_request() is None


async def test_an_idle_client_is_let_go(
    pair: tuple[HttpConnection, trio.SocketStream], mock_clock: trio.testing.MockClock
) -> None:
    conn, _ = pair
    mock_clock.autojump_threshold = 0
    started = trio.current_time()
    assert await conn.next_request() is None
    assert trio.current_time() - started == pytest.approx(IDLE_TIMEOUT)
    assert conn.closed


async def test_a_slow_head_gets_408_after_the_head_timeout(
    pair: tuple[HttpConnection, trio.SocketStream], mock_clock: trio.testing.MockClock
) -> None:
    conn, client = pair
    mock_clock.autojump_threshold = 0
    await client.send_all(POST[:30])  # a slowloris: the head never ends
    started = trio.current_time()
    with pytest.raises(ApiError) as e:
        await conn.next_request()
    assert e.value.status == 408 and "head" in e.value.message
    assert trio.current_time() - started == pytest.approx(HEAD_TIMEOUT)
    assert conn.closed


async def test_a_slow_body_gets_408_after_the_read_timeout(
    pair: tuple[HttpConnection, trio.SocketStream], mock_clock: trio.testing.MockClock
) -> None:
    conn, client = pair
    mock_clock.autojump_threshold = 0
    head_end = POST.index(b"\r\n\r\n") + 4
    await client.send_all(POST[: head_end + 2])  # the head whole, the body begun
    started = trio.current_time()
    with pytest.raises(ApiError) as e:
        await conn.next_request()
    assert e.value.status == 408 and "body" in e.value.message
    assert trio.current_time() - started == pytest.approx(READ_TIMEOUT)


async def test_an_idle_connection_is_evicted_for_a_new_one_at_the_bound(
    pair: tuple[HttpConnection, trio.SocketStream], mock_clock: trio.testing.MockClock
) -> None:
    conn, _ = pair
    admission = Admission(total=1, per_source=8)
    ticket = admission.admit("10.0.0.1")
    assert ticket is not None
    idle = HttpConnection(conn.stream, ticket=ticket)
    async with trio.open_nursery() as nursery:
        got: list[object] = []

        async def wait() -> None:
            got.append(await idle.next_request())

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        newcomer = admission.admit("10.0.0.2")  # the port is full: the idle one goes
        assert newcomer is not None and admission.stats.evicted == 1
    assert got == [None] and idle.closed
    assert trio.current_time() == 0  # at once, not after IDLE_TIMEOUT
