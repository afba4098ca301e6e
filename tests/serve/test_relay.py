"""Opening an upstream: IP literals connected directly, names resolved, clear errors."""

import socket

import pytest
import trio

from hexamesh.serve.relay import UpstreamError, open_upstream, read_body

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
