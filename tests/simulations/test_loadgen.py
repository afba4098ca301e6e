"""The benchmarks' lean client against the stand-in vLLM server of the front
door's tests (tests/serve/fake_upstream.py) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from simulations.loadgen import LeanClient, LoadError
from tests.serve.fake_upstream import Behaviour, serve_fake

MODEL = "tiny"


@asynccontextmanager
async def serving(behaviour: Behaviour) -> AsyncIterator[str]:
    """The stand-in serving ``MODEL`` as ``behaviour`` says; yields its URL."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_fake, MODEL, behaviour)
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_tokens_come_from_usage_over_one_kept_alive_connection() -> None:
    engine = Behaviour(per_event=2)  # merged events: usage still counts tokens
    async with serving(engine) as url, LeanClient(url) as client:
        first = await client.stream(model=MODEL, prompt="x", max_tokens=7)
        second = await client.stream(model=MODEL, prompt="x", max_tokens=3)
    assert (first.tokens, first.usage_reported) == (7, True)
    assert second.tokens == 3
    assert first.ttft_s is not None and first.ttft_s > 0
    asked = engine.served[0]
    assert asked["stream"] is True and asked["model"] == MODEL and asked["max_tokens"] == 7
    assert len(engine.served) == 2 and engine.connections == 1 and client.reconnects == 0


async def test_without_usage_each_event_counts_as_a_token() -> None:
    async with serving(Behaviour(usage=False, per_event=2)) as url, LeanClient(url) as client:
        got = await client.stream(model=MODEL, prompt="x", max_tokens=4)
    assert (got.tokens, got.usage_reported) == (2, False)  # two events of two tokens


async def test_an_idle_connection_the_server_closed_is_replaced_once() -> None:
    engine = Behaviour(keep_alive=False)  # as uvicorn does to idle connections
    async with serving(engine) as url, LeanClient(url) as client:
        for _ in range(3):
            assert (await client.stream(model=MODEL, prompt="x", max_tokens=2)).tokens == 2
    assert client.reconnects == 2 and engine.connections == 3 and len(engine.served) == 3


async def test_an_error_status_raises_with_the_servers_message() -> None:
    async with serving(Behaviour()) as url, LeanClient(url) as client:
        with pytest.raises(LoadError, match=r"404.*`nope` does not exist"):
            await client.stream(model="nope", prompt="x", max_tokens=2)


async def test_an_error_event_or_a_cut_stream_raises() -> None:
    async with serving(Behaviour(error_after=1)) as url, LeanClient(url) as client:
        with pytest.raises(LoadError, match="failed mid-stream"):
            await client.stream(model=MODEL, prompt="x", max_tokens=2)
    async with serving(Behaviour(die_after=1)) as url, LeanClient(url) as client:
        with pytest.raises(LoadError, match="before its end"):
            await client.stream(model=MODEL, prompt="x", max_tokens=2)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanClient("https://example.org")
