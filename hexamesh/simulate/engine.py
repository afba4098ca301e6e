"""A vLLM server as a queue with measured service times (sans-IO, for the simulator).

Theory of operation
-------------------
vLLM batches every running request into each decode step, so its total
throughput grows with the batch while each stream slows down: at one stream
the tiny model decodes ~590 tokens/s, at sixteen ~5,400 tokens/s between them
(``docs/reports/engine.md``). :class:`EngineProfile` holds such measured
points; :func:`EngineProfile.total_tok_s` interpolates between them on a
log-log scale and holds the last one flat beyond (the curve is not measured
past it). :class:`SimEngine` is processor sharing on that curve: every
running request advances at ``total_tok_s(running) / running`` tokens per
second, recomputed whenever a request starts or ends. A request first waits
``ttft_s`` (prefill and the first token), then decodes its tokens; past
``max_num_seqs`` running, new requests wait in FIFO order, as vLLM's
scheduler makes them.

Prefix caching, as vLLM's automatic prefix cache: a request that names a
``prefix`` (a conversation) finds as many of its prompt tokens cached as the
server kept of that prefix's last request (its prompt and its answer), and
prefills only the rest, at ``prefill_tok_s``; what a server keeps is the
least recently used first out of ``kv_tokens``.

The load the agent would dance is computed by the real
:class:`~hexamesh.engine.load.EngineLoad` from the same metrics vLLM exports
(running, waiting, KV use), so routing in a simulation sees what it sees on a
real server.

Time is passed in; nothing here sleeps or schedules. The caller asks
:meth:`SimEngine.next_event` when something next happens and calls
:meth:`SimEngine.advance` then.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from hexamesh.engine.load import EngineLoad

__all__ = ["TINY_CPU", "EngineProfile", "SimEngine", "SimRequest"]

_EPS = 1e-6  # tokens (and seconds) below which float residue counts as done


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineProfile:
    name: str
    # (concurrent streams, total tokens/s), measured; increasing in streams.
    points: tuple[tuple[int, float], ...]
    ttft_s: float  # prefill and first token at low load (measured p50)
    max_num_seqs: int  # running requests at most; the rest wait
    startup_s: float  # from the server's start to its model answering (measured)
    kv_tokens: int  # KV-cache capacity in tokens (prompt + generated, all running)
    prefill_tok_s: float = math.inf  # prompt tokens prefilled per second, past ttft_prompt
    ttft_prompt: int = 32  # prompt tokens ttft_s was measured with (its prefill included)

    def __post_init__(self) -> None:
        if not self.points or any(c <= 0 or t <= 0 for c, t in self.points):
            raise ValueError("an engine profile needs positive (streams, tokens/s) points")
        if [c for c, _ in self.points] != sorted({c for c, _ in self.points}):
            raise ValueError("profile points must have increasing stream counts")

    def total_tok_s(self, streams: int) -> float:
        """Tokens per second of all ``streams`` running requests together."""
        if streams <= 0:
            return 0.0
        counts = [c for c, _ in self.points]
        i = bisect.bisect_left(counts, streams)
        if i < len(counts) and counts[i] == streams:
            return self.points[i][1]
        if i == 0:  # below the first point: one stream's rate each
            c0, t0 = self.points[0]
            return t0 / c0 * streams
        if i == len(counts):  # past the last point: flat, not extrapolated
            return self.points[-1][1]
        (c0, t0), (c1, t1) = self.points[i - 1], self.points[i]
        f = (math.log(streams) - math.log(c0)) / (math.log(c1) - math.log(c0))
        return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))


# The tiny model on vLLM's CPU build, 2-core VM (docs/reports/engine.md, a5511ca):
# 592 / 1,280 / 5,410 tokens/s at 1 / 4 / 16 streams, TTFT p50 9.6 ms at one,
# server startup 62.8 s.
# The simulated server admits 32 at once (the curve is flat past 16), and holds
# 32 requests of 1,024 tokens in its cache (KV space 1 GiB at this model's size
# is far more; 32k tokens keeps the KV share of the load meaningful).
TINY_CPU = EngineProfile(
    name="tiny-cpu",
    points=((1, 592.0), (4, 1280.0), (16, 5410.0)),
    ttft_s=0.0096,
    max_num_seqs=32,
    startup_s=62.8,
    kv_tokens=32 * 1024,
    # 1,500 prompt tokens take 32 ms more than 20 do (44 against 12 ms TTFT,
    # prefix cache off, 2026-12-08): ~46,000 tokens/s
    prefill_tok_s=46_000.0,
)


@dataclass(slots=True, eq=False)
class SimRequest:
    """One request on one server (a continuation is a new one elsewhere)."""

    key: int  # the caller's id
    prompt_tokens: int
    tokens: int  # to generate, at least 1
    arrived: float
    started: float | None = None  # admitted to the batch
    first_token: float | None = None
    done_tokens: float = 0.0
    finished: float | None = None
    prefix: int | None = None  # a conversation: its prompt starts with that prefix's last one
    cached: int = 0  # prompt tokens found in the prefix cache when admitted


@dataclass(slots=True)
class SimEngine:
    profile: EngineProfile
    running: list[SimRequest] = field(default_factory=list)
    waiting: deque[SimRequest] = field(default_factory=deque)
    generated: float = 0.0  # tokens, all requests, ever
    prefixes: OrderedDict[int, int] = field(default_factory=OrderedDict)  # prefix -> tokens kept
    prefix_queries: int = 0  # prompt tokens of requests with a prefix, admitted
    prefix_hits: int = 0  # of those, found in the cache
    _at: float = 0.0  # when progress was last brought up to date

    def submit(self, req: SimRequest, now: float) -> None:
        """Queue ``req`` (call ``advance(now)`` first: what finished before it
        arrived is the caller's to collect)."""
        if req.tokens < 1:
            raise ValueError("a request generates at least one token")
        self._check(now)
        self.waiting.append(req)
        self._admit(now)

    def cancel(self, key: int, now: float) -> SimRequest | None:
        """Drop a request (its client went away); returns it if it was here.
        Call ``advance(now)`` first."""
        self._check(now)
        for queue in (self.running, self.waiting):
            for req in queue:
                if req.key == key:
                    queue.remove(req)
                    self._admit(now)
                    return req
        return None

    def advance(self, now: float) -> list[SimRequest]:
        """Bring every running request up to ``now``; returns those that finished."""
        done: list[SimRequest] = []
        while True:
            step_end = max(self._at, min(now, self._next_change()))
            self._progress(step_end)
            finished = [r for r in self.running if r.tokens - r.done_tokens < _EPS]
            for r in finished:
                r.finished = step_end
                self.running.remove(r)
                self._keep(r)
            if finished:
                done.extend(finished)
                self._admit(step_end)
            elif step_end >= now:
                return done

    def next_event(self) -> float | None:
        """When a running request next reaches its first token or its end."""
        change = self._next_change()
        return None if math.isinf(change) else change

    def load(self) -> EngineLoad:
        """What the agent would scrape from this server now."""
        used = sum(r.prompt_tokens + r.done_tokens for r in self.running)
        metrics = {
            "vllm:num_requests_running": float(len(self.running)),
            "vllm:num_requests_waiting": float(len(self.waiting)),
            "vllm:kv_cache_usage_perc": min(1.0, used / self.profile.kv_tokens),
        }
        return EngineLoad.from_samples(metrics, None, 1.0, self.profile.max_num_seqs)

    def _check(self, now: float) -> None:
        if now > self._at + _EPS and self.running:
            raise RuntimeError("advance(now) before changing the batch")
        self._at = max(self._at, now)

    # -- processor sharing ------------------------------------------------

    def _decoding(self) -> list[SimRequest]:
        return [r for r in self.running if r.first_token is not None]

    def _rate(self) -> float:
        """Tokens per second of each decoding stream."""
        n = len(self._decoding())
        return self.profile.total_tok_s(n) / n if n else 0.0

    def _next_change(self) -> float:
        soonest = math.inf
        rate = self._rate()
        for r in self.running:
            if r.first_token is None:
                soonest = min(soonest, self._due(r))
            elif rate > 0:
                soonest = min(soonest, self._at + max(0.0, r.tokens - r.done_tokens) / rate)
        return soonest

    def _progress(self, until: float) -> None:
        if until > self._at:
            rate = self._rate()
            elapsed = until - self._at
            for r in self._decoding():
                step = min(rate * elapsed, r.tokens - r.done_tokens)
                r.done_tokens += step
                self.generated += step
            self._at = until
        for r in self.running:
            due = None if r.started is None else self._due(r)
            if r.first_token is None and due is not None and due <= until + _EPS:
                r.first_token = due
                r.done_tokens = 1.0  # the first token
                self.generated += 1.0

    def _due(self, r: SimRequest) -> float:
        """When ``r``'s first token comes: its prefill of what was not cached."""
        assert r.started is not None
        uncached = max(0, r.prompt_tokens - r.cached - self.profile.ttft_prompt)
        return r.started + self.profile.ttft_s + uncached / self.profile.prefill_tok_s

    def _admit(self, now: float) -> None:
        while self.waiting and len(self.running) < self.profile.max_num_seqs:
            req = self.waiting.popleft()
            req.started = now
            if req.prefix is not None:
                held = self.prefixes.get(req.prefix, 0)
                req.cached = min(held, req.prompt_tokens)
                self.prefix_queries += req.prompt_tokens
                self.prefix_hits += req.cached
            self.running.append(req)

    def _keep(self, r: SimRequest) -> None:
        """A finished request's prompt and answer stay cached, least recently used out."""
        if r.prefix is None:
            return
        self.prefixes[r.prefix] = r.prompt_tokens + r.tokens
        self.prefixes.move_to_end(r.prefix)
        while sum(self.prefixes.values()) > self.profile.kv_tokens and len(self.prefixes) > 1:
            self.prefixes.popitem(last=False)
