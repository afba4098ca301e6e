"""The trio driver: runs one sans-IO core over a real (or in-memory) transport.

Shape copied from aioquic's asyncio layer: feed the core what arrives, send
what it hands back, sleep until the time it asks for, repeat. Everything runs
in one nursery owned by :meth:`CoreDriver.run`:

* ``_receive_loop``: datagram -> open + decode -> ``core.receive``;
* ``_accept_loop``: incoming streams, each read by a short-lived task;
* ``_send_loop``: the single writer of the datagram socket, fed by a bounded
  queue (full queue = the datagram is dropped and counted, as a full socket
  buffer would);
* ``_stream_sender`` workers: envelopes over one datagram go over a stream;
* the timer loop in ``run`` itself.

After every step of the core (a message, a timer, a ``poke``) the driver
sends what it handed out: envelopes to the transport, and events (the core's
results) to the service that subscribed to their type (``subscribe``), over
a bounded trio channel. Nothing calls a service back and nothing polls a
core: a service waits on its channel. An event whose subscriber lags a full
buffer behind is dropped and counted, as is one nobody subscribed to.

A stream opens with a sealed ``StreamHello`` naming the sender's datagram port,
so what arrives on it is attributed to the sender's real address, not to its
ephemeral TCP port. Bad input (a frame that fails to open or decode, a stream
that stalls or lies) is dropped, counted and logged at DEBUG, with one
warning per ``limits.DROP_WARN_INTERVAL`` for all senders together (a source
address is free to forge). A core that raises on a message or a timer, or
hands out a message that cannot be sealed, loses that one unit of work: it is
reported to ``faults`` (counted by component, logged once a minute per kind),
and the driver goes on. Nothing a peer sends reaches the nursery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from hexamesh.faults import Component, Faults
from hexamesh.identity import short_id
from hexamesh.limits import DROP_WARN_INTERVAL
from hexamesh.net.base import Addr, Core, FrameStream, Transport
from hexamesh.wire import (
    MAX_DATAGRAM,
    MAX_STREAM_FRAME,
    Codec,
    EncodeError,
    Envelope,
    Message,
    UnknownKeyError,
    WireError,
    message,
)

__all__ = ["EVENT_BUFFER", "CoreDriver", "DriverConfig", "DriverStats", "StreamHello"]

log = logging.getLogger(__name__)

TIMER_FAILURE_PAUSE = 0.1  # s the timer loop waits after a core's timer failed
# Events a subscriber may lag behind before more are dropped (and counted). A
# service reads its channel at once; a burst bigger than this is a mass failure
# heard in one step, or forged news, and the oldest news is what matters least.
EVENT_BUFFER = 1024


@message(0x0003)
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamHello(Message):
    """First frame on every stream: the datagram port the sender listens on."""

    port: int


@dataclass(frozen=True, kw_only=True)
class DriverConfig:
    send_queue: int = 1024  # datagrams waiting for the socket; more are dropped
    stream_queue: int = 64  # large envelopes waiting for a stream; more are dropped
    stream_senders: int = 4  # concurrent outgoing streams
    stream_readers: int = 32  # concurrent incoming streams; more wait in the backlog
    stream_timeout: float = 5.0  # s to connect, or to read one frame, before giving up
    frames_per_stream: int = 64  # frames one incoming stream may carry


@dataclass
class DriverStats:
    received: int = 0  # envelopes handed to the core
    malformed: int = 0  # frames that failed to open or decode (dropped)
    sent: int = 0  # envelopes queued for sending
    send_dropped: int = 0  # queue full
    oversize: int = 0  # envelopes too large even for a stream (a local bug)
    streams_sent: int = 0
    stream_errors: int = 0  # outgoing or incoming streams that failed
    core_errors: int = 0  # units of work a core failed on (reported to ``faults``)
    events: int = 0  # events handed to subscribers
    events_dropped: int = 0  # a subscriber's channel was full
    events_unrouted: int = 0  # nobody subscribed to the event's type


class _StreamTransport(Transport, Protocol):
    async def accept_stream(self) -> tuple[Addr, FrameStream]: ...


class CoreDriver:
    def __init__(
        self,
        core: Core,
        transport: Transport,
        codec: Codec,
        *,
        node_id: bytes,
        config: DriverConfig | None = None,
        clock: Callable[[], float] = trio.current_time,
        faults: Faults | None = None,
    ) -> None:
        self.core = core
        self.transport = transport
        self.codec = codec
        self.node_id = node_id
        self.config = config or DriverConfig()
        self.stats = DriverStats()
        self._clock = clock
        self._wakeup = trio.Event()
        self._send_in, self._send_out = trio.open_memory_channel[tuple[Addr, bytes]](
            self.config.send_queue
        )
        self._stream_in, self._stream_out = trio.open_memory_channel[tuple[Addr, Envelope]](
            self.config.stream_queue
        )
        self._readers = trio.Semaphore(self.config.stream_readers)
        self._routes: dict[type, trio.MemorySendChannel[Any]] = {}
        self.faults = faults or Faults()
        self._warned_at = -math.inf  # the last warning about unopenable frames
        self._unwarned = 0  # unopenable frames since that warning

    # -- public -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._send_loop)
            for _ in range(self.config.stream_senders):
                nursery.start_soon(self._stream_sender)
            if hasattr(self.transport, "accept_stream"):
                nursery.start_soon(self._accept_loop, nursery)
            task_status.started()
            await self._timer_loop()

    def poke(self) -> None:
        """Call after driving the core directly (e.g. ``core.watch(...)``)."""
        self._flush()
        self._wakeup.set()
        self._hand_out()

    def subscribe(self, *kinds: type, buffer: int = EVENT_BUFFER) -> trio.MemoryReceiveChannel[Any]:
        """A channel of the core's events of these types, from now on. A type
        has one subscriber at a time; closing the channel ends the subscription
        (the type may then be subscribed again)."""
        for kind in kinds:
            held = self._routes.get(kind)
            if held is not None and held.statistics().open_receive_channels:
                raise ValueError(f"{kind.__name__} events have a subscriber already")
        send, receive = trio.open_memory_channel[Any](buffer)
        for kind in kinds:
            self._routes[kind] = send
        return receive

    def _hand_out(self) -> None:
        """The core's events since the last step, each to its type's subscriber."""
        try:
            events = self.core.events()
        except Exception as e:
            self._core_failed(e, "collecting events")
            return
        routes = self._routes
        for event in events:
            channel = routes.get(type(event))
            if channel is None:
                self.stats.events_unrouted += 1
                continue
            try:
                channel.send_nowait(event)
                self.stats.events += 1
            except trio.WouldBlock:
                self.stats.events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.stats.events_unrouted += 1
                for kind in [k for k, c in routes.items() if c is channel]:
                    del routes[kind]

    # -- inbound ----------------------------------------------------------

    def _warn_dropped(self, sender: Addr, error: WireError) -> None:
        """Say so when frames do not open: most often a node started with
        another swarm's key, which otherwise looks like a dead seed to it. One
        warning per ``DROP_WARN_INTERVAL`` for all senders together: a source
        address costs a forger nothing, so a table per sender would be his."""
        now = self._clock()
        if now - self._warned_at < DROP_WARN_INTERVAL:
            self._unwarned += 1
            log.debug("%s: dropped frame from %s: %s", short_id(self.node_id), sender, error)
            return
        more = f"{self._unwarned} more since the last warning" if self._unwarned else ""
        hint = "another swarm's key?" if isinstance(error, UnknownKeyError) else ""
        self._warned_at, self._unwarned = now, 0
        log.warning(
            "%s: dropped a frame from %s: %s%s",
            short_id(self.node_id),
            sender,
            error,
            f" ({'; '.join(x for x in (hint, more) if x)})" if hint or more else "",
        )

    def _core_failed(self, error: Exception, what: str, kind: type[Message] | None = None) -> None:
        self.stats.core_errors += 1
        self.faults.caught(component_of(kind), error, what)

    def _handle(self, sender: Addr, data: bytes, limit: int) -> None:
        try:
            env = self.codec.open(data, limit=limit, source=sender)
        except WireError as e:
            self.stats.malformed += 1
            self._warn_dropped(sender, e)
            return
        if isinstance(env.message, StreamHello):
            self.stats.malformed += 1  # only valid as the first frame of a stream
            return
        self.stats.received += 1
        try:
            self.core.receive(env, sender, self._clock())
        except Exception as e:
            self._core_failed(e, f"a {type(env.message).__name__} from {sender}", type(env.message))
        self.poke()

    async def _receive_loop(self) -> None:
        while True:
            sender, data = await self.transport.receive()
            self._handle(sender, data, MAX_DATAGRAM)

    async def _accept_loop(self, nursery: trio.Nursery) -> None:
        transport: _StreamTransport = self.transport  # type: ignore[assignment]
        while True:
            peer, stream = await transport.accept_stream()
            await self._readers.acquire()  # bound concurrent readers
            nursery.start_soon(self._read_stream, peer, stream)

    async def _read_stream(self, peer: Addr, stream: FrameStream) -> None:
        timeout = self.config.stream_timeout
        try:
            with trio.fail_after(timeout):
                hello = self.codec.open(await stream.receive_frame(), limit=MAX_STREAM_FRAME)
            if not isinstance(hello.message, StreamHello):
                raise WireError("stream did not start with StreamHello")
            sender = (peer[0], hello.message.port)
            for _ in range(self.config.frames_per_stream):
                with trio.fail_after(timeout):
                    frame = await stream.receive_frame()
                self._handle(sender, frame, MAX_STREAM_FRAME)
        except EOFError:
            pass
        except (WireError, trio.TooSlowError, OSError, trio.BrokenResourceError) as e:
            self.stats.stream_errors += 1
            log.debug("%s: incoming stream from %s: %s", short_id(self.node_id), peer, e)
        finally:
            self._readers.release()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    # -- outbound ---------------------------------------------------------

    def _flush(self) -> None:
        try:
            out = self.core.outbox()
        except Exception as e:
            self._core_failed(e, "collecting the outbox")
            return
        for addr, env in out:
            try:
                sealed = self.codec.seal(env, limit=MAX_STREAM_FRAME, to=addr)
            except EncodeError as e:
                self.stats.oversize += 1
                log.error("%s: cannot send to %s: %s", short_id(self.node_id), addr, e)
                continue
            except Exception as e:  # a value the wire cannot carry (a counter past 2^64)
                self._core_failed(e, f"sealing a {type(env.message).__name__}", type(env.message))
                continue
            try:
                if len(sealed) <= MAX_DATAGRAM:
                    self._send_in.send_nowait((addr, sealed))
                else:
                    # Sealed again when its stream opens, after its hello: a
                    # proof's counter is the time of sealing, and a receiver
                    # takes one far below the newest it has seen as a replay.
                    self._stream_in.send_nowait((addr, env))
                self.stats.sent += 1
            except trio.WouldBlock:
                self.stats.send_dropped += 1

    async def _send_loop(self) -> None:
        async for addr, data in self._send_out:
            await self.transport.send(addr, data)

    async def _stream_sender(self) -> None:
        port = self.transport.local_address[1]
        async for addr, env in self._stream_out:
            hello = Envelope(sender=self.node_id, msg_id=0, message=StreamHello(port=port))
            try:
                with trio.fail_after(self.config.stream_timeout):
                    stream = await self.transport.open_stream(addr)
                    try:
                        await stream.send_frame(self.codec.seal(hello, to=addr))
                        await stream.send_frame(
                            self.codec.seal(env, limit=MAX_STREAM_FRAME, to=addr)
                        )
                    finally:
                        await stream.aclose()
                self.stats.streams_sent += 1
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                self.stats.stream_errors += 1
                log.debug("%s: stream to %s failed: %s", short_id(self.node_id), addr, e)

    # -- timers -----------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            self._flush()
            deadline = self.core.next_timer()
            self._wakeup = trio.Event()
            # The core's clock may differ from trio's (the DHT runs on Unix time).
            wake_at = (
                math.inf if deadline is None else trio.current_time() + deadline - self._clock()
            )
            with trio.move_on_at(wake_at) as waited:
                await self._wakeup.wait()
            now = self._clock()
            if deadline is not None and (now >= deadline or waited.cancelled_caught):
                # Woken by the deadline itself: due, even if converting between the
                # two clocks left ``now`` a rounding error short of it.
                now = max(now, deadline)
                failed = False
                try:
                    self.core.handle_timer(now)
                except Exception as e:
                    self._core_failed(e, "a timer")
                    failed = True
                for error, what, kind in self._core_errors():
                    self._core_failed(error, what, kind)
                    failed = True
                self._hand_out()
                if failed:
                    # A timer that fails before it moves on stays due: without
                    # a pause the loop would spin on it.
                    await trio.sleep(TIMER_FAILURE_PAUSE)

    def _core_errors(self) -> list[tuple[Exception, str, type[Message] | None]]:
        """What a composite core (``Mux``) caught from its parts' timers."""
        take = getattr(self.core, "take_errors", None)
        return take() if take is not None else []


_COMPONENTS = {
    0x00: Component.NET,
    0x01: Component.DHT,
    0x02: Component.COMB,
    0x03: Component.PLACEMENT,
}


def component_of(kind: type[Message] | None) -> Component:
    """The component a message type belongs to (its type id's range, see wire.py)."""
    if kind is None:
        return Component.DRIVER
    return _COMPONENTS.get(kind.TYPE_ID >> 8, Component.DRIVER)
