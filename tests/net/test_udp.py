"""Real sockets on 127.0.0.1 (ladder rung 5), within one trio process."""

import random
import socket

import trio

from hexamesh.net.driver import CoreDriver
from hexamesh.net.rtt import RttConfig, RttProbe
from hexamesh.net.udp import ip_family, open_udp_transport
from hexamesh.wire import Envelope
from tests.helpers import Blob, RecordingCore, codec, nid


async def test_udp_and_tcp_share_one_port_and_frames_round_trip() -> None:
    with trio.fail_after(10):
        async with open_udp_transport("127.0.0.1", 0) as a, open_udp_transport("127.0.0.1", 0) as b:
            assert a.local_address[1] != 0
            await a.send(b.local_address, b"hello")
            assert await b.receive() == (a.local_address, b"hello")
            stream = await a.open_stream(b.local_address)
            await stream.send_frame(b"x" * 100_000)
            peer, incoming = await b.accept_stream()
            assert peer[0] == "127.0.0.1"
            assert await incoming.receive_frame() == b"x" * 100_000
            await stream.aclose()
            await incoming.aclose()


async def test_drivers_ping_and_stream_over_loopback() -> None:
    with trio.fail_after(10):
        async with (
            open_udp_transport("127.0.0.1", 0) as ta,
            open_udp_transport("127.0.0.1", 0) as tb,
            open_udp_transport("127.0.0.1", 0) as tc,
            trio.open_nursery() as nursery,
        ):
            a = RttProbe(nid(1), RttConfig(), random.Random(1))
            b = RttProbe(nid(2), RttConfig(), random.Random(2))
            c = RecordingCore()
            da = CoreDriver(a, ta, codec(1), node_id=nid(1))
            db = CoreDriver(b, tb, codec(2), node_id=nid(2))
            dc = CoreDriver(c, tc, codec(3), node_id=nid(3))
            for driver in (da, db, dc):
                await nursery.start(driver.run)
            a.ping(tb.local_address, trio.current_time())
            da.poke()
            big = Envelope(sender=nid(3), msg_id=9, message=Blob(data=bytes(30_000)))
            c.send(ta.local_address, big)
            dc.poke()
            while a.srtt(tb.local_address) is None or da.stats.received < 2:
                await trio.sleep(0.01)
            assert 0 < a.srtt(tb.local_address) < 1.0  # type: ignore[operator]
            assert dc.stats.streams_sent == 1
            assert db.stats.received == 1  # the ping
            assert da.stats.malformed == db.stats.malformed == 0
            nursery.cancel_scope.cancel()


def test_ip_family_tells_literals_from_names() -> None:
    assert ip_family("127.0.0.1") == socket.AF_INET
    assert ip_family("::1") == ip_family("fe80::1%eth0") == socket.AF_INET6
    assert ip_family("localhost") is None
    assert ip_family("node-7.lan") is None
