"""Idle keep-alive connections to upstreams (the local vLLM, peers' front doors).

Why: a fresh connection per forwarded request costs a connect and an accept
on the two ends and a new connection object in the server (uvicorn in vLLM; a
sniffing task, a peer channel handshake and an HTTP connection in a peer),
all on the request's critical path before the first token. A busy agent
sends many requests to the same few upstreams, so it keeps the connections
that ended cleanly and reuses them.

Rules, in the spirit of HTTP client pools (httpx, Go's ``net/http``):

- a connection comes back only after its whole response was read (a chunked
  stream past its last chunk with nothing after it, or a body of exactly its
  content-length) and the server did not say ``connection: close``
  (``relay.UpstreamResponse.consumed``);
- it stays idle at most ``IDLE_TTL`` (a peer channel ``PEER_IDLE_TTL``: a new
  one costs a handshake), below the 5 s after which uvicorn (vLLM)
  closes an idle connection, so the server rarely closes one as we reuse it;
- before reuse, one zero-timeout poll: a connection that is readable (EOF,
  or stray bytes) is dropped;
- a request whose reused connection fails before any byte of the answer is
  sent again once on a fresh connection (``relay.open_upstream``): the server
  closed it idle while we were sending.

The pool is plain data touched only from the agent's trio thread (the relay
thread gives connections back through the trio side); it closes sockets
synchronously, which trio allows for sockets no task waits on.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from hexamesh.net.channel import PeerStream

__all__ = [
    "IDLE_TTL",
    "MAX_IDLE",
    "MAX_IDLE_PER_UPSTREAM",
    "PEER_IDLE_TTL",
    "PoolStats",
    "Upstream",
    "UpstreamPool",
]

IDLE_TTL = 3.0  # s an idle connection is kept; vLLM (uvicorn) drops its own after 5 s
# s an idle peer channel is kept: a peer's door waits IDLE_TIMEOUT (75 s), and
# a new channel costs a handshake (~0.25 ms of CPU each end, one round trip)
PEER_IDLE_TTL = 30.0
MAX_IDLE_PER_UPSTREAM = 32  # idle connections per upstream: twice the streams of a busy batch
MAX_IDLE = 256  # idle connections in all: file descriptors stay well under a 1,024 ulimit

Key = tuple[str, int]
Upstream = trio.SocketStream | PeerStream  # an engine's plain connection, or a peer channel


@dataclass(slots=True)
class PoolStats:
    reused: int = 0  # requests sent on a pooled connection
    stale: int = 0  # pooled connections found dead (at the peek, or failing before an answer)
    expired: int = 0  # pooled connections closed after IDLE_TTL unused
    kept: int = 0  # connections given back


class UpstreamPool:
    def __init__(
        self,
        *,
        ttl: float = IDLE_TTL,
        max_idle: int = MAX_IDLE_PER_UPSTREAM,
        max_total: int = MAX_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_idle = max_idle
        self.max_total = max_total
        self.stats = PoolStats()
        self._clock = clock
        self._idle: dict[Key, list[tuple[float, Upstream]]] = {}  # oldest first
        self._swept = clock()
        self._closed = False

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def has_idle(self, key: Key) -> bool:
        """Is a connection to ``key`` kept (possibly expired or closed since:
        ``take`` checks)?"""
        return bool(self._idle.get(key))

    def take(self, key: Key) -> Upstream | None:
        """The most recently used live idle connection to ``key``, or None."""
        now = self._clock()
        self._sweep(now)
        conns = self._idle.get(key)
        while conns:
            since, stream = conns.pop()
            if now - since > self._ttl(stream):
                self.stats.expired += 1
                _close(stream)
            elif not _quiet(stream):
                self.stats.stale += 1
                _close(stream)
            else:
                self.stats.reused += 1
                return stream
        return None

    def give(self, key: Key, stream: Upstream) -> None:
        """Keep ``stream`` (its last response read in full) for the next request to ``key``."""
        if self._closed:
            _close(stream)
            return
        now = self._clock()
        self._sweep(now)
        conns = self._idle.setdefault(key, [])
        conns.append((now, stream))
        self.stats.kept += 1
        while len(conns) > self.max_idle:
            _close(conns.pop(0)[1])
        if len(self) > self.max_total:  # close the oldest idle connection of any upstream
            oldest = min((c for c in self._idle.values() if c), key=lambda c: c[0][0])
            _close(oldest.pop(0)[1])

    def close(self) -> None:
        """Close every idle connection; any given back later is closed at once."""
        self._closed = True
        for conns in self._idle.values():
            for _, stream in conns:
                _close(stream)
        self._idle.clear()

    def _ttl(self, stream: Upstream) -> float:
        return max(self.ttl, PEER_IDLE_TTL) if isinstance(stream, PeerStream) else self.ttl

    def _sweep(self, now: float) -> None:
        """Close what expired, for every upstream (at most once per ``ttl``: an
        upstream nobody sends to any more must not hold sockets forever)."""
        if now - self._swept < self.ttl:
            return
        self._swept = now
        for key, conns in list(self._idle.items()):
            fresh = []
            for since, stream in conns:
                if now - since <= self._ttl(stream):
                    fresh.append((since, stream))
                else:
                    self.stats.expired += 1
                    _close(stream)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]


def _quiet(stream: Upstream) -> bool:
    """Is nothing waiting on this idle connection (no EOF, no stray bytes)?"""
    try:
        readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
    except (OSError, ValueError):  # closed under us
        return False
    return not readable


def _close(stream: Upstream) -> None:
    stream.socket.close()
