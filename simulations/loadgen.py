"""A lean streaming client for the serving benchmarks: the load generator must
not be what is measured.

The benchmarks run the client on the same two cores as vLLM and the agents.
The tests' ``EngineClient`` (httpx: a line iterator, one ``json.loads`` per event) spends
150-280 µs of CPU per streamed token on the 2-core VM, measured: more than
both agents' relays together, on the core they share with vLLM's frontend.
So the throughput runs and the time-to-first-token pairs use this client:

* one HTTP/1.1 connection kept alive per client, through the front door's
  own upstream client and pool (a new one if the server closed it while
  idle: uvicorn does after 5 s);
* 64 KiB reads, framing followed with the relay's own ``ChunkScanner``;
* no JSON per event: the first ``data:`` event's arrival is the time to first
  token; the token count is the stream's ``usage`` (asked for with
  ``stream_options.include_usage``, parsed once, at the end), or the number of
  events when the server sends no usage.

A stream is a completion request; ``StreamResult`` says what came back.
Errors (a 4xx/5xx, an ``error`` event, a closed connection mid-stream) raise
``LoadError`` with the server's words.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import trio

from hexamesh.serve.relay import (
    UpstreamError,
    UpstreamResponse,
    open_upstream,
    read_body,
    request_bytes,
)
from hexamesh.serve.sse import DONE, ChunkScanner, dechunk, events
from hexamesh.serve.upstreampool import UpstreamPool

__all__ = ["LeanClient", "LoadError", "StreamResult", "closed_loop", "ttft_added", "workload"]

RECV_SIZE = 65536  # bytes per read: under load one read takes many tokens


class LoadError(Exception):
    """The server refused or broke a stream."""


@dataclass(frozen=True, slots=True)
class StreamResult:
    tokens: int  # usage.completion_tokens, else the events that came
    ttft_s: float | None  # request sent -> first data event; None if none came
    usage_reported: bool  # tokens is the server's count
    served_by: str | None = None  # x-hexamesh-served-by: the node whose engine answered


def workload(tokens: int) -> dict[str, Any]:
    """The benchmarks' request: ``tokens`` tokens, EOS ignored, greedy."""
    return {
        "model": "tiny",
        "prompt": "the swarm",
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0.0,
    }


class LeanClient:
    """Streams completions from one OpenAI-style server, one stream at a time
    (a closed-loop worker holds one client).

    The HTTP/1.1 exchange is the front door's own upstream client
    (``serve.relay.open_upstream`` over an ``UpstreamPool``): a connection
    kept alive between streams, dropped when the server closed it while idle
    and the request sent once more on a fresh one.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"{base_url!r}: only plain http://host:port URLs")
        self.host = url.hostname
        self.port = url.port or 80
        self.target = url.path.rstrip("/") + "/v1/completions"
        self._headers = [("authorization", f"Bearer {api_key}")] if api_key else []
        self._headers += list(headers)
        self._pool = UpstreamPool()

    @property
    def reconnects(self) -> int:
        """Kept-alive connections the server had closed."""
        return self._pool.stats.stale

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.close()

    async def stream(self, **request: Any) -> StreamResult:
        """POST /v1/completions with ``stream`` on and usage asked for."""
        body = json.dumps(
            {**request, "stream": True, "stream_options": {"include_usage": True}},
            separators=(",", ":"),
        ).encode()
        wire = request_bytes(
            "POST", self.host, self.port, self.target, body, self._headers, keep_alive=True
        )
        start = time.perf_counter()
        try:
            up = await open_upstream(self.host, self.port, wire, self._pool)
        except UpstreamError as e:
            raise LoadError(str(e)) from None
        try:
            if up.status >= 400 or not up.chunked:
                payload = await read_body(up)
                raise LoadError(f"{up.status}: {payload[:300].decode(errors='replace')}")
            got = await _read_stream(up, start)
            return dataclasses.replace(got, served_by=up.headers.get("x-hexamesh-served-by"))
        except UpstreamError as e:
            raise LoadError(str(e)) from None
        finally:
            await up.aclose()  # back to the pool if read to its end


async def _read_stream(up: UpstreamResponse, start: float) -> StreamResult:
    scanner = ChunkScanner()
    whole: list[bytes] = []
    ttft: float | None = None
    data = up.rest
    while True:
        if data:
            out = scanner.feed(data)
            if out:
                if ttft is None and b"data:" in dechunk(out):
                    ttft = time.perf_counter() - start
                whole.append(out)
            if scanner.done:
                break
        data = await up.stream.receive_some(RECV_SIZE)
        if not data:
            raise LoadError("the server closed the stream before its end")
    up.consumed = not scanner.pending
    return _count(b"".join(whole), ttft)


def _count(chunked: bytes, ttft: float | None) -> StreamResult:
    """Tokens of a whole stream: the last event's usage, else one per event."""
    found = [e for e in events(dechunk(chunked)) if e != DONE]
    for data in found:
        if data.startswith(b'{"error"'):
            raise LoadError(f"error event: {data[:300].decode(errors='replace')}")
    if found:
        try:
            last = json.loads(found[-1])
        except ValueError:
            raise LoadError(f"bad event: {found[-1][:200]!r}") from None
        usage = last.get("usage") if isinstance(last, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            return StreamResult(usage["completion_tokens"], ttft, True)
    return StreamResult(len(found), ttft, False)


async def closed_loop(
    base_url: str, concurrency: int, requests: int, **request: Any
) -> dict[str, Any]:
    """``requests`` streams by ``concurrency`` workers, each with its own
    client and starting its next stream as soon as its last ended: tokens,
    tokens/s, each stream's time to first token (ms), reconnects."""
    left = requests
    tokens = 0
    ttfts: list[float] = []
    reconnects = 0

    async def worker() -> None:
        nonlocal left, tokens, reconnects
        async with LeanClient(base_url) as client:
            while left > 0:
                left -= 1
                got = await client.stream(**request)
                tokens += got.tokens
                if got.ttft_s is not None:
                    ttfts.append(got.ttft_s * 1000)
            reconnects += client.reconnects

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    wall = time.perf_counter() - start
    return {"tok_s": tokens / wall, "tokens": tokens, "ttfts": ttfts, "reconnects": reconnects}


async def ttft_added(
    base_url: str, through_url: str, pairs: int, *, warm: int, pause: float, **request: Any
) -> list[float]:
    """Time to first token added by sending ``through_url`` instead of to
    ``base_url``: one stream to each, back to back (which goes first
    alternates), each over its own kept-alive connection, ``pause`` s apart;
    the difference per pair in ms. The first ``warm`` pairs open the
    connections and are not counted, nor is a pair where either side got no
    token."""
    added: list[float] = []
    async with LeanClient(base_url) as base, LeanClient(through_url) as through:
        for i in range(pairs + warm):
            got: dict[str, float | None] = {}
            order = [("base", base), ("through", through)]
            for name, client in order if i % 2 else order[::-1]:
                got[name] = (await client.stream(**request)).ttft_s
                await trio.sleep(pause)
            b, t = got["base"], got["through"]
            if i >= warm and b is not None and t is not None:
                added.append((t - b) * 1000)
    return added
