"""An in-memory network for trio tests: a terrible network on purpose.

Like trio's ``testing/_fake_net.py`` and the "terrible network" of its DTLS
tests, this lets drivers run under ``trio.testing.MockClock`` with datagrams
that are delayed, lost, duplicated or cut off by a partition, deterministically
for a seeded ``random.Random``. Streams are reliable (``memory_stream_pair``)
but refused across a partition or to a closed endpoint.

One scheduler task owns all delayed datagrams (a heap), so a million in-flight
messages cost a million heap entries, not a million tasks.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio
import trio.testing

from hexamesh.net.base import Addr, FrameStream
from hexamesh.net.udp import TcpFrameStream, TransportStats

__all__ = ["MemoryNetwork", "MemoryTransport", "open_memory_network"]

INBOX_SIZE = 1024  # datagrams queued per endpoint, like a socket buffer; more are dropped
STREAM_BACKLOG = 16  # pending incoming streams per endpoint

Delay = Callable[[random.Random], float]


def _no_delay(rng: random.Random) -> float:
    return 0.0


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, addr: Addr) -> None:
        self._network = network
        self._addr = addr
        self.stats = TransportStats()
        self._inbox_in, self._inbox_out = trio.open_memory_channel[tuple[Addr, bytes]](INBOX_SIZE)
        self._streams_in, self._streams_out = trio.open_memory_channel[tuple[Addr, TcpFrameStream]](
            STREAM_BACKLOG
        )
        self.closed = False

    @property
    def local_address(self) -> Addr:
        return self._addr

    async def send(self, addr: Addr, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.stats.datagrams_sent += 1
        self.stats.bytes_sent += len(data)
        self._network._submit(self._addr, addr, data)

    async def receive(self) -> tuple[Addr, bytes]:
        src, data = await self._inbox_out.receive()
        self.stats.datagrams_received += 1
        self.stats.bytes_received += len(data)
        return src, data

    async def open_stream(self, addr: Addr) -> FrameStream:
        await trio.lowlevel.checkpoint()
        peer = self._network._reachable(self._addr, addr)
        if peer is None:
            raise ConnectionRefusedError(f"{addr} is unreachable")
        mine, theirs = trio.testing.memory_stream_pair()
        try:
            peer._streams_in.send_nowait((self._addr, TcpFrameStream(theirs)))
        except trio.WouldBlock:
            peer.stats.streams_refused += 1
            raise ConnectionRefusedError(f"{addr} refused the stream (backlog full)") from None
        return TcpFrameStream(mine)

    async def accept_stream(self) -> tuple[Addr, TcpFrameStream]:
        return await self._streams_out.receive()

    def _deliver(self, src: Addr, data: bytes) -> None:
        try:
            self._inbox_in.send_nowait((src, data))
        except trio.WouldBlock:
            self._network.overflowed += 1

    def close(self) -> None:
        """Take the endpoint off the network (a crashed or stopped node)."""
        self.closed = True
        self._network._endpoints.pop(self._addr, None)


class MemoryNetwork:
    def __init__(
        self,
        rng: random.Random,
        *,
        delay: Delay = _no_delay,
        loss: float = 0.0,
        duplicate: float = 0.0,
    ) -> None:
        self.rng = rng
        self.delay = delay
        self.loss = loss
        self.duplicate = duplicate
        self._endpoints: dict[Addr, MemoryTransport] = {}
        self._groups: dict[Addr, int] = {}
        self._heap: list[tuple[float, int, Addr, Addr, bytes]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()
        self.delivered = 0
        self.lost = 0
        self.partitioned = 0
        self.overflowed = 0
        self.duplicated = 0

    def endpoint(self, addr: Addr) -> MemoryTransport:
        if addr in self._endpoints:
            raise ValueError(f"address {addr} is taken")
        transport = MemoryTransport(self, addr)
        self._endpoints[addr] = transport
        return transport

    def partition(self, *groups: Iterable[Addr]) -> None:
        """Only endpoints in one group can talk; unnamed ones form group 0."""
        self._groups = {addr: n for n, group in enumerate(groups, 1) for addr in group}

    def heal(self) -> None:
        self._groups = {}

    def _reachable(self, src: Addr, dst: Addr) -> MemoryTransport | None:
        peer = self._endpoints.get(dst)
        if peer is None or self._groups.get(src, 0) != self._groups.get(dst, 0):
            return None
        return peer

    def _submit(self, src: Addr, dst: Addr, data: bytes) -> None:
        if self._reachable(src, dst) is None:
            self.partitioned += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 1
        if self.duplicate and self.rng.random() < self.duplicate:
            self.duplicated += 1
            copies = 2
        now = trio.current_time()
        for _ in range(copies):
            heapq.heappush(
                self._heap, (now + self.delay(self.rng), next(self._seq), src, dst, data)
            )
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup = trio.Event()
            if not self._heap:
                await self._wakeup.wait()
                continue
            with trio.move_on_at(self._heap[0][0]):
                await self._wakeup.wait()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, src, dst, data = heapq.heappop(self._heap)
                peer = self._reachable(src, dst)
                if peer is None:
                    self.partitioned += 1
                    continue
                self.delivered += 1
                peer._deliver(src, data)


@asynccontextmanager
async def open_memory_network(
    rng: random.Random,
    *,
    delay: Delay = _no_delay,
    loss: float = 0.0,
    duplicate: float = 0.0,
) -> AsyncIterator[MemoryNetwork]:
    network = MemoryNetwork(rng, delay=delay, loss=loss, duplicate=duplicate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network._run)
        try:
            yield network
        finally:
            nursery.cancel_scope.cancel()
