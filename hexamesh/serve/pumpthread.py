"""The stream relay's hot loop: one thread, one epoll, every stream of the agent.

Why a thread: a streamed token is one small read and one small write, and
what it costs is the wake-up around them (see ``COALESCE_MAX``). Measured on the 2-core machine
(one 64-byte chunk every 2 ms): a trio task doing ``wait_readable`` + read +
write spends ~100 µs of CPU per chunk (trio re-registers the fd, runs its
scheduler, resumes the task); a bare ``epoll`` loop spends ~28 µs. Under load
one epoll wake serves every stream that has data. So the front door decides
the route in trio, then hands the two sockets to this loop and awaits the
outcome; nothing per token goes through trio.

Per stream the loop does what ``relay.pump`` describes: read up to 64 KiB,
forward whole HTTP chunks only (``sse.ChunkScanner``), the response head with
the first chunk, keep a reference to what was sent. A client that reads
slowly gets backpressure (the upstream is not read while our output waits for
the client). Outcomes: ``DONE`` (the last chunk passed), ``UPSTREAM_FAILED``
(EOF, reset, or ``stall_timeout`` of silence: the caller may continue the
stream elsewhere), ``CLIENT_GONE``. ``abandon`` ends a job as
``UPSTREAM_FAILED`` from outside (its server was declared dead), after the
client has the chunk being written, so the stream can go on elsewhere.

Thread safety: a job's sockets belong to the loop from ``submit`` until its
outcome is posted; the trio side does not touch them meanwhile. Cancelling
(the trio side was cancelled) asks the loop to drop the job and waits for the
acknowledgement, so trio never closes a socket the loop still uses.

A peer channel (``net.channel``) on either side: the job carries its halves,
``up_open`` (records from a peer we forwarded to, opened before the chunk
check) and ``client_seal`` (records to the peer that forwarded to us, sealed
just before the write); a record that does not open fails the upstream over,
as broken framing does.

Containment: an upstream whose framing is broken (``sse.ChunkError``), or
anything else one job raises, ends that job as ``UPSTREAM_FAILED`` (reported
to ``faults``); the loop goes on with the others. Should the loop itself die,
every job it held ends as ``UPSTREAM_FAILED`` and the next ``relay`` starts a
new thread: a stream may fail, later ones never hang.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from hexamesh.faults import Component, Faults
from hexamesh.net.noise import ChannelError, Opener, Sealer
from hexamesh.serve.sse import ChunkError, ChunkScanner, chunk

__all__ = ["Outcome", "PumpThread", "StreamJob"]

log = logging.getLogger(__name__)

RECV_SIZE = 65536  # bytes per read
POLL_TIMEOUT = 0.5  # s; the loop checks stalls at least this often
# With several streams open, wait after a wake before polling again, so one
# wake serves every stream whose token arrived meanwhile (vLLM sends a step's
# tokens for all its requests within a millisecond or so). A wake costs
# ~50-110 µs of CPU on the 2-core VM (measured: an epoll loop fed by another
# process), far more than relaying a token; one stream alone is never delayed.
# The wait grows with the streams open (more tokens to gather per wake) up to
# COALESCE_MAX: relay benchmark at 16 streams, 19-21 µs/token with a fixed
# 2 ms, 16 with 4 ms; 4 ms is well under a token's interval per stream at 16.
COALESCE_PER_STREAM = 0.0005  # s
COALESCE_MAX = 0.004  # s


class Outcome(enum.Enum):
    DONE = "done"
    UPSTREAM_FAILED = "upstream failed"
    CLIENT_GONE = "client gone"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class StreamJob:
    up_fd: int
    client_fd: int
    chunked: bool  # upstream frames its body in HTTP chunks (else: we frame each read)
    head: bytes | None  # our response head, sent with the first whole chunk
    first: bytes  # body bytes read along with the upstream's head
    stall_timeout: float
    sent: list[bytes] = field(default_factory=list)  # whole chunks the client has
    up_open: Opener | None = None  # the upstream is a peer channel: its receiving half
    client_seal: Sealer | None = None  # the client is a peer channel: its sending half
    outcome: Outcome | None = None
    # loop-private state
    scanner: ChunkScanner = field(default_factory=ChunkScanner)
    out: memoryview | None = None  # bytes waiting for the client to read
    last: float = 0.0
    done_cb: Callable[[], None] | None = None
    abandoned: bool = False  # set by ``PumpThread.abandon`` (any thread)


class PumpThread:
    """The loop; started on first use, stopped by ``close``."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._inbox: queue.SimpleQueue[tuple[str, StreamJob]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.faults = faults or Faults()
        self.restarts = 0  # times the loop died and a new one was started

    def _ensure(self) -> None:
        with self._lock:
            if self._thread is not None and not self._thread.is_alive():
                self._thread = None  # it died (and failed its jobs): start another
                self.restarts += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._contained, name="hexamesh-pump", daemon=True
                )
                self._thread.start()

    def _contained(self) -> None:
        """The loop; if it dies, its jobs fail (never hang) and ``relay`` restarts it."""
        held: set[StreamJob] = set()
        try:
            self._run(held)
        except BaseException as e:  # the thread's last word: nothing above it would log it
            self.faults.caught(Component.RELAY, e, "the relay loop (restarted on next use)")
            for job in held:
                if job.outcome is None:
                    job.outcome = Outcome.UPSTREAM_FAILED
                    if job.done_cb is not None:
                        job.done_cb()
            # jobs posted but not taken yet: failed too, so no relay waits for ever
            while True:
                try:
                    _, job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job.outcome is None:
                    job.outcome = Outcome.UPSTREAM_FAILED
                    if job.done_cb is not None:
                        job.done_cb()

    def _post(self, what: str, job: StreamJob) -> None:
        self._inbox.put((what, job))
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already
            os.write(self._wake_w, b"x")

    async def relay(self, job: StreamJob) -> Outcome:
        """Run ``job`` on the loop; returns its outcome (``job.sent`` holds what was sent)."""
        self._ensure()
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()

        def done() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

        job.done_cb = done
        self._post("add", job)
        try:
            await finished.wait()
        except trio.Cancelled:
            self._post("cancel", job)
            with trio.CancelScope(shield=True):
                await finished.wait()
            raise
        assert job.outcome is not None
        return job.outcome

    def abandon(self, job: StreamJob) -> None:
        """Give up on ``job``'s upstream (safe from any thread): it ends as
        ``UPSTREAM_FAILED`` once the client has any chunk half written."""
        job.abandoned = True
        self._post("abandon", job)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=2.0)

    # -- the loop (its own thread) -----------------------------------------

    def _run(self, jobs: set[StreamJob]) -> None:
        """``jobs``: the jobs the loop holds (the caller fails them if it dies)."""
        ep = select.epoll()
        ep.register(self._wake_r, select.EPOLLIN)
        by_fd: dict[int, StreamJob] = {}  # up_fd and client_fd -> job

        def finish(job: StreamJob, outcome: Outcome) -> None:
            for fd in (job.up_fd, job.client_fd):
                if by_fd.pop(fd, None) is not None:
                    with contextlib.suppress(OSError, ValueError):
                        ep.unregister(fd)
            jobs.discard(job)
            job.outcome = outcome
            if job.done_cb is not None:
                job.done_cb()

        def send(job: StreamJob, data: bytes) -> bool:
            """Write to the client; False: it must wait (backpressure). Raises if it left."""
            if job.client_seal is not None:
                data = job.client_seal.seal(data)
            view = memoryview(data)
            while view:
                try:
                    n = os.write(job.client_fd, view)
                except BlockingIOError:
                    job.out = view
                    ep.modify(job.up_fd, 0)  # stop reading upstream until the client drains
                    by_fd[job.client_fd] = job
                    ep.register(job.client_fd, select.EPOLLOUT)
                    return False
                view = view[n:]
            return True

        def forward(job: StreamJob, data: bytes) -> None:
            out = job.scanner.feed(data) if job.chunked else chunk(data)
            if out:
                payload = out if job.head is None else job.head + out
                job.head = None
                job.sent.append(out)
                if not send(job, payload):
                    return
            if job.scanner.done:
                finish(job, Outcome.DONE)

        def on_upstream(job: StreamJob) -> None:
            try:
                data = os.read(job.up_fd, RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                finish(job, Outcome.UPSTREAM_FAILED)
                return
            if not data:
                unframed_end = not job.chunked and job.head is None
                if unframed_end:
                    try:
                        if send(job, b"0\r\n\r\n"):
                            finish(job, Outcome.DONE)
                            return
                    except OSError:
                        finish(job, Outcome.CLIENT_GONE)
                        return
                finish(job, Outcome.UPSTREAM_FAILED)
                return
            job.last = time.monotonic()
            if job.up_open is not None:
                try:
                    data = job.up_open.open(data)
                except ChannelError as e:
                    log.info("a peer's stream does not verify: %s", e)
                    finish(job, Outcome.UPSTREAM_FAILED)
                    return
                if not data:
                    return  # a record's first part: the rest comes with the next read
            try:
                forward(job, data)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET) and not isinstance(
                    e, (BrokenPipeError, ConnectionError)
                ):
                    log.debug("relay write failed: %s", e)
                finish(job, Outcome.CLIENT_GONE)
            except ChunkError as e:  # the upstream's framing is broken: fail it over
                log.info("upstream sent a broken stream: %s", e)
                finish(job, Outcome.UPSTREAM_FAILED)

        def contained(job: StreamJob, step: Callable[[StreamJob], None]) -> None:
            """One job's step; anything it raises ends that job only."""
            try:
                step(job)
            except Exception as e:
                self.faults.caught(Component.RELAY, e, "a relayed stream")
                if job in jobs:
                    finish(job, Outcome.UPSTREAM_FAILED)

        def on_client_writable(job: StreamJob) -> None:
            assert job.out is not None
            try:
                n = os.write(job.client_fd, job.out)
            except BlockingIOError:
                return
            except OSError:
                finish(job, Outcome.CLIENT_GONE)
                return
            job.out = job.out[n:]
            job.last = time.monotonic()
            if job.out:
                return
            job.out = None
            ep.unregister(job.client_fd)
            del by_fd[job.client_fd]
            if job.scanner.done:
                finish(job, Outcome.DONE)
            elif job.abandoned:
                finish(job, Outcome.UPSTREAM_FAILED)
            else:
                ep.modify(job.up_fd, select.EPOLLIN)

        while not self._closed:
            if len(jobs) > 1:
                time.sleep(min(COALESCE_MAX, COALESCE_PER_STREAM * len(jobs)))
            events = ep.poll(POLL_TIMEOUT if jobs else -1)  # idle: sleep until woken
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    while True:
                        try:
                            what, job = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if what == "abandon":
                            if job in jobs and job.out is None:
                                finish(job, Outcome.UPSTREAM_FAILED)
                            continue  # mid-write: on_client_writable ends it
                        if what == "add":
                            if job.abandoned:  # before it started
                                finish(job, Outcome.UPSTREAM_FAILED)
                                continue
                            jobs.add(job)
                            job.last = time.monotonic()
                            by_fd[job.up_fd] = job
                            ep.register(job.up_fd, select.EPOLLIN)
                            if job.first:
                                first, job.first = job.first, b""
                                try:
                                    forward(job, first)
                                except OSError:
                                    finish(job, Outcome.CLIENT_GONE)
                                except Exception as e:  # ChunkError, or a bug
                                    if not isinstance(e, ChunkError):
                                        self.faults.caught(Component.RELAY, e, "a stream's start")
                                    finish(job, Outcome.UPSTREAM_FAILED)
                        elif job in jobs:
                            finish(job, Outcome.CANCELLED)
                        elif job.outcome is None:  # cancelled before it was added
                            job.outcome = Outcome.CANCELLED
                            if job.done_cb is not None:
                                job.done_cb()
                    continue
                owner = by_fd.get(fd)
                if owner is None:
                    continue
                if fd == owner.client_fd:
                    contained(owner, on_client_writable)
                else:
                    contained(owner, on_upstream)
            now = time.monotonic()
            for job in [j for j in jobs if now - j.last > j.stall_timeout]:
                finish(job, Outcome.UPSTREAM_FAILED)
        ep.close()
