"""The front door over real sockets: forwarding, failover, mid-stream continuation,
hop limits, auth and the bad-request table (fake upstreams, see swarm.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from hexamesh.limits import HANDSHAKE_TIMEOUT, MAX_BODY
from hexamesh.net.channel import ChannelKeys
from hexamesh.net.noise import HANDSHAKE_BYTES, LENGTH, PREAMBLE, Initiator
from hexamesh.serve.frontdoor import SERVED_BY
from hexamesh.serve.peerroute import PeerRoute, route_headers
from hexamesh.serve.relay import (
    CONNECT_TIMEOUT,
    Peer,
    UpstreamError,
    open_upstream,
    read_body,
    request_bytes,
)
from hexamesh.serve.requests import parse_completion
from hexamesh.serve.router import Priority
from hexamesh.serve.sse import CONTINUES
from hexamesh.wire import KeyRing
from tests.helpers import identity
from tests.serve.fake_upstream import Behaviour, Blackhole, answer
from tests.serve.swarm import MODEL, Door, entry_first_spare, link, link_in_order, start_door


async def peer_post(
    keyring: KeyRing, sender: int, to: Door, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` to ``to``'s peer port over the channel, as test node ``sender``."""
    host, port = to.peer_addr
    request = request_bytes("POST", host, port, "/v1/completions", body, headers)
    peer = Peer(to.view.node, ChannelKeys(identity(sender), keyring))
    up = await open_upstream(host, port, request, peer=peer)
    try:
        return up.status, up.headers, await read_body(up)
    finally:
        await up.aclose()


async def stream_text(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[str, list[dict[str, Any]], httpx.Response]:
    events: list[dict[str, Any]] = []
    async with client.stream("POST", url, json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    text = ""
    for e in events:
        for c in e.get("choices", []):
            text += c.get("text") or (c.get("delta") or {}).get("content") or ""
    return text, events, r


def expected(body: dict[str, Any], chat: bool) -> str:
    return "".join(answer(body, chat))


def question(api: str, chat: bool, words: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The URL and body of a completion (or chat) request for ``words``."""
    url = f"{api}/{'chat/' if chat else ''}completions"
    if chat:
        messages = [{"role": "user", "content": words}]
        return url, {"model": MODEL, "messages": messages, "max_tokens": max_tokens}
    return url, {"model": MODEL, "prompt": words, "max_tokens": max_tokens}


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing.generate()


async def test_forward_to_a_peer_that_has_the_model(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, b)
        body = {"model": MODEL, "prompt": "one two three", "max_tokens": 5}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 200
        assert r.json()["choices"][0]["text"] == expected(body, False)
        assert r.headers[SERVED_BY] == b.view.node.hex()
        text, events, resp = await stream_text(
            client, f"{a.api}/completions", {**body, "stream": True}
        )
        assert text == expected(body, False) and len(events) == 5
        assert resp.headers[SERVED_BY] == b.view.node.hex()
        assert b.behaviour is not None and len(b.behaviour.served) == 2
        assert a.front.metrics.forwards._value.get() == 2
        # a server in view: the DHT's backups are asked for off the request path
        assert a.view.soon == [MODEL, MODEL]
        nursery.cancel_scope.cancel()


async def test_forwards_reuse_their_upstream_connections(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, b)
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        for stream in (False, True, True, False, True):
            if stream:
                text, _, _ = await stream_text(
                    client, f"{a.api}/completions", {**body, "stream": True}
                )
            else:
                r = await client.post(f"{a.api}/completions", json=body)
                text = r.json()["choices"][0]["text"]
            assert text == expected(body, False)
        # one connection a -> b and one b -> engine carried all five requests
        assert b.behaviour is not None and b.behaviour.connections == 1
        assert len(b.behaviour.served) == 5
        assert a.front.upstreams.stats.reused == 4
        assert b.front.upstreams.stats.reused == 4
        assert a.front.upstreams.stats.stale == b.front.upstreams.stats.stale == 0
        metrics = (await client.get(f"{a.api.removesuffix('/v1')}/metrics")).text
        assert "hexamesh_upstream_reused_total 4.0" in metrics
        assert "hexamesh_upstream_idle_connections 1.0" in metrics
        nursery.cancel_scope.cancel()


# What a dialler sends before its first request: the preamble, handshake messages 1 and 3.
HANDSHAKE_OUT = len(PREAMBLE) + 2 * LENGTH + HANDSHAKE_BYTES[0] + HANDSHAKE_BYTES[2]


def records_in(data: bytes) -> int:
    """Whole channel records in ``data`` (the bytes a dialler sent after its handshake)."""
    at = count = 0
    while len(data) - at >= LENGTH:
        at += LENGTH + int.from_bytes(data[at : at + LENGTH], "big")
        count += at <= len(data)
    return count


async def _drop_second_answer(
    listeners: list[trio.SocketListener], upstream: tuple[str, int], dropped: list[int]
) -> None:
    """A TCP proxy to ``upstream``. On its first connection it lets the second
    request reach the upstream, waits until the upstream starts answering,
    then closes both sides: the server has the request, the client nothing.
    It counts requests as the channel's records (one per request): it cannot
    read them."""
    connections = 0

    async def handle(client: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        server = await trio.open_tcp_stream(*upstream)
        async with client, server, trio.open_nursery() as nursery:

            async def answers() -> None:
                while data := await server.receive_some(65536):
                    if first and requests == 2:
                        dropped.append(1)
                        nursery.cancel_scope.cancel()
                        return
                    await client.send_all(data)

            requests = 0
            sent = b""
            nursery.start_soon(answers)
            while data := await client.receive_some(65536):
                sent += data
                requests = records_in(sent[HANDSHAKE_OUT:])
                await server.send_all(data)
            nursery.cancel_scope.cancel()

    await trio.serve_listeners(handle, listeners)


async def test_a_request_lost_on_a_reused_connection_is_resent_on_a_fresh_one(
    keyring: KeyRing,
) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        dropped: list[int] = []
        nursery.start_soon(_drop_second_answer, listeners, b.peer_addr, dropped)
        a.view.peers[b.view.node] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        for _ in range(3):
            r = await client.post(f"{a.api}/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected(body, False)
        assert dropped == [1]
        assert a.front.upstreams.stats.stale == 1
        assert b.behaviour is not None and len(b.behaviour.served) == 4  # one answer lost
        nursery.cancel_scope.cancel()


async def test_a_peer_of_another_swarm_is_skipped(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        stranger = await start_door(nursery, KeyRing.generate(), 2, engine=Behaviour())
        good = await start_door(nursery, keyring, 3, engine=Behaviour())
        link_in_order(a, stranger, good)
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers[SERVED_BY] == good.view.node.hex()
        assert stranger.behaviour is not None and stranger.behaviour.served == []
        assert a.front.metrics.failovers._value.get() == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("refusal", "client_sees"), [(404, 200), (400, 400)])
async def test_a_server_without_the_model_is_skipped_a_bad_request_is_not(
    keyring: KeyRing, refusal: int, client_sees: int
) -> None:
    """404: the view was stale (the server no longer has the model), so the
    next server is tried; 400: the request itself is at fault, and goes back."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        first = await start_door(nursery, keyring, 2, engine=Behaviour(status=refusal))
        good = await start_door(nursery, keyring, 3, engine=Behaviour())
        link_in_order(a, first, good)
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == client_sees, r.text
        assert good.behaviour is not None and len(good.behaviour.served) == (refusal == 404)
        nursery.cancel_scope.cancel()


async def test_a_connection_broken_mid_stream_is_not_reused(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1, engine=Behaviour(die_after=2))
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 4, "stream": True}
        for _ in range(2):
            await stream_text(client, f"{a.api}/completions", body)
        assert a.behaviour is not None and a.behaviour.connections == 2
        assert len(a.front.upstreams) == 0 and a.front.upstreams.stats.kept == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("chat", [False, True])
async def test_failover_before_the_first_token_is_invisible(keyring: KeyRing, chat: bool) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        dead = await start_door(nursery, keyring, 2, engine=Behaviour(die_before=True))
        busy = await start_door(nursery, keyring, 3, engine=Behaviour(status=503))
        good = await start_door(nursery, keyring, 4, engine=Behaviour())
        link_in_order(a, dead, busy, good)
        url, body = question(a.api, chat, "hi there", 4)
        text, _, resp = await stream_text(client, url, {**body, "stream": True})
        assert resp.status_code == 200
        assert text == expected(body, chat)
        assert resp.headers[SERVED_BY] == good.view.node.hex()
        assert a.front.metrics.failovers._value.get() == 2
        # The two that failed are tried last for a while: the next requests
        # go straight to the good one.
        for _ in range(2):
            _, _, resp = await stream_text(client, url, {**body, "stream": True})
            assert resp.headers[SERVED_BY] == good.view.node.hex()
        assert a.front.metrics.failovers._value.get() == 2
        first, *rest = a.front.ranked(MODEL, None)
        assert first.node == good.view.node and not first.doubtful
        assert {c.node for c in rest} == {dead.view.node, busy.view.node}
        assert all(c.doubtful for c in rest)
        nursery.cancel_scope.cancel()


async def test_a_server_that_does_not_answer_its_syn_costs_a_stagger_not_a_timeout(
    keyring: KeyRing,
) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        good = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, good)
        lost = b"z" * 20  # first choice: less loaded, across a "partition"
        with Blackhole() as hole:
            a.view.peers[lost] = hole
            a.view.loads = {lost: 0.0, good.view.node: 0.5}
            assert a.front.ranked(MODEL, None)[0].node == lost
            body = {"model": MODEL, "prompt": "hi there", "max_tokens": 4, "stream": True}
            start = trio.current_time()
            text, _, resp = await stream_text(client, f"{a.api}/completions", body)
            took = trio.current_time() - start
        assert resp.headers[SERVED_BY] == good.view.node.hex()
        assert text == expected(body, False)
        assert took < CONNECT_TIMEOUT  # dialled the next after DIAL_STAGGER
        assert a.front.ranked(MODEL, None)[-1].node == lost  # and it is shunned
        nursery.cancel_scope.cancel()


async def test_a_job_whose_server_does_not_answer_its_syn_runs_elsewhere_soon(
    keyring: KeyRing,
) -> None:
    """The jobs' path (``fetch``) races dials as requests do."""
    async with trio.open_nursery() as nursery:
        a = await start_door(nursery, keyring, 1)
        good = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, good)
        lost = b"z" * 20
        with Blackhole() as hole:
            a.view.peers[lost] = hole
            a.view.loads = {lost: 0.0, good.view.node: 0.5}
            assert a.front.ranked(MODEL, None)[0].node == lost
            req = parse_completion(
                json.dumps({"model": MODEL, "prompt": "hi there", "max_tokens": 4}).encode(),
                chat=False,
            )
            start = trio.current_time()
            data, served = await a.front.fetch(req, Priority.MEDIUM)
            took = trio.current_time() - start
        assert served == good.view.node.hex()
        assert json.loads(data)["choices"][0]["text"] == expected(
            {"prompt": "hi there", "max_tokens": 4}, False
        )
        assert took < CONNECT_TIMEOUT
        assert a.front.ranked(MODEL, None)[-1].node == lost
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("chat", [False, True])
async def test_mid_stream_death_continues_on_another_server(keyring: KeyRing, chat: bool) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a, _, spare = await entry_first_spare(nursery, keyring, Behaviour(die_after=3))
        url, body = question(a.api, chat, "a b c", 8)
        text, events, _ = await stream_text(client, url, {**body, "stream": True})
        assert text == expected(body, chat)  # one uninterrupted answer
        assert len({e["id"] for e in events}) == 1 and len({e["created"] for e in events}) == 1
        roles = [e for e in events if (e["choices"][0].get("delta") or {}).get("role")]
        assert len(roles) == (1 if chat else 0)
        assert spare.behaviour is not None
        sent = spare.behaviour.served[0]
        assert sent["max_tokens"] == 5
        if chat:
            assert sent["messages"][-1] == {"role": "assistant", "content": " w3 w4 w5"}
            assert sent["continue_final_message"] is True
        else:
            assert sent["prompt"] == "a b c w3 w4 w5"
        assert a.front.metrics.continuations._value.get() == 1
        nursery.cancel_scope.cancel()


async def _when(check: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


@pytest.mark.parametrize("chat", [False, True])
async def test_a_stream_whose_server_is_declared_dead_goes_on_at_once(
    keyring: KeyRing, chat: bool
) -> None:
    """A frozen server keeps its connection open and sends nothing: the stream
    would wait STALL_TIMEOUT (60 s). The comb's verdict cuts it at once and
    another server continues it."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        a, frozen, spare = await entry_first_spare(nursery, keyring, Behaviour(freeze_after=3))
        url, body = question(a.api, chat, "a b c", 8)
        got: list[tuple[str, list[dict[str, Any]]]] = []

        async def ask() -> None:
            text, events, _ = await stream_text(client, url, {**body, "stream": True})
            got.append((text, events))

        nursery.start_soon(ask)
        node = frozen.view.node
        await _when(lambda: frozen.behaviour is not None and frozen.behaviour.served)
        await trio.sleep(0.2)  # the three tokens are through; the server is silent
        assert a.front.deaths.waiting(node) == 1
        assert not got
        started = trio.current_time()
        a.front.server_died(node)
        await _when(lambda: got)
        assert trio.current_time() - started < 2.0  # not the stall timeout
        text, events = got[0]
        assert text == expected(body, chat)  # one uninterrupted answer
        assert len({e["id"] for e in events}) == 1
        assert spare.behaviour is not None and spare.behaviour.served[0]["max_tokens"] == 5
        assert a.front.metrics.continuations._value.get() == 1
        assert a.front.deaths.cut == 1 and a.front.deaths.waiting(node) == 0
        assert a.front.ranked(MODEL, None)[-1].node == node  # and it is tried last
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_whose_server_is_declared_dead_before_answering_fails_over(
    keyring: KeyRing, stream: bool
) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        a, frozen, spare = await entry_first_spare(nursery, keyring, Behaviour(freeze_before=True))
        body = {"model": MODEL, "prompt": "hi there", "max_tokens": 4, "stream": stream}
        got: list[tuple[str, httpx.Response]] = []

        async def ask() -> None:
            if stream:
                text, _, resp = await stream_text(client, f"{a.api}/completions", body)
            else:
                resp = await client.post(f"{a.api}/completions", json=body)
                text = resp.json()["choices"][0]["text"]
            got.append((text, resp))

        nursery.start_soon(ask)
        node = frozen.view.node
        await _when(lambda: a.front.deaths.waiting(node))  # waiting for its answer
        await trio.sleep(0.1)
        assert not got
        a.front.server_died(node)
        a.front.server_died(spare.view.node)  # nobody waits on it: nothing happens
        await _when(lambda: got, timeout=2.0)
        text, resp = got[0]
        assert resp.status_code == 200 and text == expected(body, False)
        assert resp.headers[SERVED_BY] == spare.view.node.hex()
        assert a.front.metrics.failovers._value.get() == 1
        assert a.front.deaths.cut == 1
        nursery.cancel_scope.cancel()


async def test_a_job_whose_server_is_declared_dead_runs_elsewhere(keyring: KeyRing) -> None:
    """The jobs' path (``fetch``, one non-streamed answer) is cut the same way."""
    async with trio.open_nursery() as nursery:
        a, frozen, spare = await entry_first_spare(nursery, keyring, Behaviour(freeze_before=True))
        req = parse_completion(
            json.dumps({"model": MODEL, "prompt": "hi there", "max_tokens": 4}).encode(),
            chat=False,
        )
        got: list[tuple[bytes, str]] = []

        async def fetch() -> None:
            got.append(await a.front.fetch(req, Priority.MEDIUM))

        nursery.start_soon(fetch)
        await _when(lambda: a.front.deaths.waiting(frozen.view.node))
        a.front.server_died(frozen.view.node)
        await _when(lambda: got, timeout=2.0)
        data, served = got[0]
        assert served == spare.view.node.hex()
        assert json.loads(data)["choices"][0]["text"] == expected(
            {"prompt": "hi there", "max_tokens": 4}, False
        )
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tokenize", [True, False])
async def test_a_continuation_counts_merged_events_in_tokens(
    keyring: KeyRing, tokenize: bool
) -> None:
    """vLLM merges tokens into one event when its frontend falls behind: the
    continuation asks the serving engine how many tokens the text so far is,
    so the answer keeps to max_tokens (the event count would overshoot)."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        dying = await start_door(nursery, keyring, 2, engine=Behaviour(die_after=4, per_event=2))
        spare = await start_door(
            nursery, keyring, 3, engine=Behaviour(per_event=2, tokenize=tokenize)
        )
        link_in_order(a, dying, spare)
        body = {"model": MODEL, "prompt": "a b c", "max_tokens": 8, "stream": True}
        text, _, _ = await stream_text(client, f"{a.api}/completions", body)
        assert spare.behaviour is not None
        sent = spare.behaviour.served[0]
        assert CONTINUES not in sent  # never reaches an engine
        assert sent["prompt"] == "a b c w3 w4 w5 w6"  # two events, four tokens
        if tokenize:
            assert spare.behaviour.tokenized == [
                {"model": MODEL, "prompt": " w3 w4 w5 w6", "add_special_tokens": False}
            ]
            assert sent["max_tokens"] == 4
            assert text == expected(body, False)  # exactly max_tokens tokens
        else:  # an engine without /tokenize: the events' bound, two tokens over
            assert sent["max_tokens"] == 6
            assert text.split() == [f"w{i}" for i in range(3, 13)]
        nursery.cancel_scope.cancel()


async def test_clients_may_not_send_the_continuation_marker(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1, engine=Behaviour())
        body = {"model": MODEL, "prompt": "x", "max_tokens": 4, CONTINUES: {"text": "x"}}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == CONTINUES
        assert a.behaviour is not None and a.behaviour.served == []
        nursery.cancel_scope.cancel()


async def test_when_every_server_dies_mid_stream_the_stream_ends_with_an_error(
    keyring: KeyRing,
) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        d1 = await start_door(nursery, keyring, 2, engine=Behaviour(die_after=2))
        d2 = await start_door(nursery, keyring, 3, engine=Behaviour(die_after=1))
        link_in_order(a, d1, d2)
        body = {"model": MODEL, "prompt": "x", "max_tokens": 8, "stream": True}
        with trio.fail_after(10):
            text, events, resp = await stream_text(client, f"{a.api}/completions", body)
        assert resp.status_code == 200
        assert text == " w1 w2 w3"  # two from the first, one from the second
        assert "every server" in events[-1]["error"]["message"]
        nursery.cancel_scope.cancel()


async def test_no_server_at_all_is_a_clean_5xx_not_a_hang(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        d1 = await start_door(nursery, keyring, 2, engine=Behaviour(die_before=True))
        link(a, d1)
        r = await client.post(
            f"{a.api}/completions", json={"model": MODEL, "prompt": "x", "stream": True}
        )
        assert r.status_code == 502
        assert "every server" in r.json()["error"]["message"]
        nursery.cancel_scope.cancel()


async def test_hop_limit_and_no_loops(keyring: KeyRing) -> None:
    """After 2 forwards a request is served locally or refused; no path is revisited."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2)
        c = await start_door(nursery, keyring, 3, engine=Behaviour())
        link(a, b)
        link(b, a, c)  # b knows a (on the path: never back) and c
        body = json.dumps({"model": MODEL, "prompt": "p", "max_tokens": 2}).encode()
        # forwarded once (by a): b may forward once more, to c and not back to a
        status, headers, _ = await peer_post(keyring, 1, b, route_headers(a.view.node, None), body)
        assert status == 200 and headers[SERVED_BY] == c.view.node.hex()
        # forwarded twice already: b has no local engine, so it must refuse
        route = PeerRoute(a.view.node, 1, (a.view.node,))
        status, _, answer = await peer_post(
            keyring, 9, b, route_headers(identity(9).node_id, route), body
        )
        assert status == 503
        assert "forwarded 2 times" in json.loads(answer)["error"]["message"]
        # a route that does not end at the node that sent it is refused
        status, _, answer = await peer_post(keyring, 9, b, route_headers(a.view.node, None), body)
        assert status == 403 and "does not end at" in json.loads(answer)["error"]["message"]
        # route headers from a client on the API port are no route: b forwards as for any client
        r = await client.post(
            f"{b.api}/completions", content=body, headers=dict(route_headers(a.view.node, route))
        )
        assert r.status_code == 200 and r.headers[SERVED_BY] == c.view.node.hex()
        assert c.behaviour is not None and len(c.behaviour.served) == 2
        nursery.cancel_scope.cancel()


BAD_REQUESTS = [
    ("POST", "/v1/completions", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/completions", json.dumps({"prompt": "x"}).encode(), 400, "`model` is required"),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": "nope", "prompt": "x"}).encode(),
        404,
        "models served: tiny",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -1}).encode(),
        400,
        "max_tokens",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(),
        400,
        "stream",
    ),
    ("POST", "/v1/completions", json.dumps({"model": MODEL}).encode(), 400, "prompt"),
    (
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": []}).encode(),
        400,
        "messages",
    ),
    ("POST", "/v1/completions", b"x" * (MAX_BODY + 1), 413, "limit"),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "kv_transfer_params": {}}).encode(),
        400,
        "unsupported field(s): `kv_transfer_params`",
    ),
    (
        "POST",
        "/v1/chat/completions",
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "chat_template": "x"}
        ).encode(),
        400,
        "`chat_template`",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "n": 1000}).encode(),
        400,
        "`n` must be an integer from 1 to 8",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "logprobs": 10**6}).encode(),
        400,
        "`logprobs`",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "stop": ["s"] * 5000}).encode(),
        400,
        "`stop` holds more than 4096 items",
    ),
    (
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": [[[[[[]]]]]] * 1})
        .encode()
        .replace(b"[]", b"[" * 40 + b"]" * 40),
        400,
        "nests deeper than 32 levels",
    ),
    ("GET", "/v1/completions", b"", 405, "POST"),
    ("GET", "/v1/nothing", b"", 404, "no such endpoint"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), BAD_REQUESTS)
async def test_bad_requests_get_openai_errors(
    keyring: KeyRing, method: str, path: str, body: bytes, status: int, says: str
) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1, engine=Behaviour())
        r = await client.request(method, a.api.removesuffix("/v1") + path, content=body)
        assert r.status_code == status
        error = r.json()["error"]
        assert says in error["message"] and "type" in error
        # the connection and the server are still good afterwards
        ok = await client.post(
            f"{a.api}/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}
        )
        assert ok.status_code == 200
        nursery.cancel_scope.cancel()


async def test_api_keys_and_the_peer_channel(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a: Door = await start_door(nursery, keyring, 1, engine=Behaviour(), api_keys=("sekrit",))
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await client.post(
            f"{a.api}/completions", json=body, headers={"authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        r = await client.post(
            f"{a.api}/completions", json=body, headers={"authorization": "Bearer sekrit"}
        )
        assert r.status_code == 200
        assert (await client.get(f"{a.api.removesuffix('/v1')}/health")).status_code == 200
        peer = f"http://{a.peer_addr[0]}:{a.peer_addr[1]}/v1/completions"
        headers = {
            "authorization": "Bearer sekrit",
            **dict(route_headers(identity(7).node_id, None)),
        }
        r = await client.post(peer, json=body, headers=headers)
        assert r.status_code == 403  # plain HTTP: the peer port speaks the channel only
        assert "peer channel" in r.json()["error"]["message"]
        raw = json.dumps(body).encode()
        with pytest.raises(UpstreamError):  # another swarm: the handshake's first message fails
            await peer_post(KeyRing.generate(), 7, a, route_headers(identity(7).node_id, None), raw)
        assert a.front.channels_refused == 1
        status, _, _ = await peer_post(keyring, 7, a, route_headers(identity(7).node_id, None), raw)
        assert status == 200
        nursery.cancel_scope.cancel()


async def test_models_and_metrics(keyring: KeyRing) -> None:
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, b)
        models = (await client.get(f"{a.api}/models")).json()
        assert [m["id"] for m in models["data"]] == [MODEL]
        await stream_text(
            client,
            f"{a.api}/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True},
        )
        text = (await client.get(f"{a.api.removesuffix('/v1')}/metrics")).text
        assert 'hexamesh_requests_total{endpoint="/v1/completions",status="200"} 1.0' in text
        assert "hexamesh_tokens_total 3.0" in text
        assert "hexamesh_forwards_total 1.0" in text
        nursery.cancel_scope.cancel()


# What a listener sends before its first record: handshake message 2.
HANDSHAKE_IN = LENGTH + HANDSHAKE_BYTES[1]


async def _tamper(
    listeners: list[trio.SocketListener], upstream: tuple[str, int], record: int, seen: list[int]
) -> None:
    """A TCP proxy to ``upstream`` that flips one bit in the ``record``-th
    record of the answers (0: the response head), as a router on the path could."""

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*upstream)
        async with client, server, trio.open_nursery() as nursery:

            async def answers() -> None:
                got = bytearray()
                flipped = False
                while data := await server.receive_some(65536):
                    start = len(got)
                    got += data
                    at, i = HANDSHAKE_IN, 0
                    while not flipped and at + LENGTH <= len(got):
                        size = int.from_bytes(got[at : at + LENGTH], "big")
                        if i == record and at + LENGTH + size <= len(got):
                            got[at + LENGTH + size - 1] ^= 1  # the last byte of its tag
                            flipped = True
                            seen.append(1)
                        at, i = at + LENGTH + size, i + 1
                    await client.send_all(bytes(got[start:]))

            nursery.start_soon(answers)
            while data := await client.receive_some(65536):
                await server.send_all(data)
            nursery.cancel_scope.cancel()

    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize("record", [0, 3])
async def test_a_tampered_answer_on_the_peer_channel_fails_over(
    keyring: KeyRing, record: int
) -> None:
    """A bit flipped on the way (in the response head, or mid-stream) is
    caught by the record's tag: the request goes to the spare (or the stream
    goes on there), and the client sees one intact answer."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        chosen_engine = Behaviour(token_delay=0.01)
        a, chosen, spare = await entry_first_spare(nursery, keyring, chosen_engine)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        seen: list[int] = []
        nursery.start_soon(_tamper, listeners, chosen.peer_addr, record, seen)
        a.view.peers[chosen.view.node] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        url, body = question(a.api, False, "a b c", 8)
        text, _, _ = await stream_text(client, url, {**body, "stream": True})
        assert seen == [1]
        assert text == expected(body, False)
        assert spare.behaviour is not None and len(spare.behaviour.served) == 1
        # mid-stream: continued after what the client had; at the head: failed over
        assert (spare.behaviour.served[0]["prompt"] != "a b c") == (record > 0)
        assert a.front.metrics.continuations._value.get() == (record > 0)
        assert a.front.metrics.failovers._value.get() == (record == 0)
        nursery.cancel_scope.cancel()


async def test_a_captured_forward_replayed_to_a_peer_is_refused(keyring: KeyRing) -> None:
    """Someone on the path records a whole forward (handshake and request) and
    plays it back, to the same peer or another: no handshake finishes, nothing
    is served, nothing is answered but a closed connection."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        c = await start_door(nursery, keyring, 3, engine=Behaviour())
        captured = bytearray()

        async def recording(client_side: trio.SocketStream) -> None:
            server = await trio.open_tcp_stream(*b.peer_addr)
            async with client_side, server, trio.open_nursery() as inner:

                async def answers() -> None:
                    while data := await server.receive_some(65536):
                        await client_side.send_all(data)

                inner.start_soon(answers)
                while data := await client_side.receive_some(65536):
                    captured.extend(data)
                    await server.send_all(data)
                inner.cancel_scope.cancel()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, recording, listeners)
        a.view.peers[b.view.node] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 200 and b.behaviour is not None and len(b.behaviour.served) == 1
        assert b"one two" not in captured  # the prompt never crossed in clear
        for target in (b, c):
            replay = await trio.open_tcp_stream(*target.peer_addr)
            async with replay:
                await replay.send_all(bytes(captured))
                answer = bytearray()
                with trio.fail_after(5):
                    while data := await replay.receive_some(65536):
                        answer += data
            assert len(answer) <= HANDSHAKE_IN  # a message 2 at most, then the door closes
            assert target.front.channels_refused == 1
        assert len(b.behaviour.served) == 1
        assert c.behaviour is not None and c.behaviour.served == []
        nursery.cancel_scope.cancel()


async def test_half_handshakes_and_junk_on_the_peer_port_are_closed_and_counted(
    keyring: KeyRing,
) -> None:
    """What an outsider (or a member that stops halfway) can send to the peer
    port: each connection is closed within the handshake timeout, counted,
    and the door goes on serving."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, b)
        member = Initiator(identity(3), keyring.primary, b.view.node).first()
        outsider = Initiator(identity(4), KeyRing.generate().primary, b.view.node).first()
        tries = {
            "preamble only": PREAMBLE,
            "junk after the preamble": PREAMBLE + b"\xff" * 300,
            "an outsider's message 1": PREAMBLE + len(outsider).to_bytes(LENGTH, "big") + outsider,
            "a member's message 1, then silence": PREAMBLE
            + len(member).to_bytes(LENGTH, "big")
            + member,
        }
        answers: dict[str, bytes] = {}

        async def attack(name: str, data: bytes) -> None:
            conn = await trio.open_tcp_stream(*b.peer_addr)
            async with conn:
                await conn.send_all(data)
                got = b""
                with trio.fail_after(HANDSHAKE_TIMEOUT + 2):
                    while chunk := await conn.receive_some(65536):
                        got += chunk
                answers[name] = got

        async with trio.open_nursery() as attacks:
            for name, data in tries.items():
                attacks.start_soon(attack, name, data)
        assert answers["a member's message 1, then silence"][LENGTH:] != b""  # message 2 came
        assert all(
            answers[n] == b"" for n in tries if "member's" not in n
        )  # nothing, not even a key
        assert b.front.channels_refused == len(tries)
        r = await client.post(f"{a.api}/completions", json={"model": MODEL, "prompt": "x y"})
        assert r.status_code == 200
        nursery.cancel_scope.cancel()


async def test_a_forged_dance_can_no_longer_redirect_traffic(keyring: KeyRing) -> None:
    """A member relays a dance saying that server b is at the member's own
    address (it holds the swarm key, so it finishes handshakes): the entry
    pins b's node id, the member's key answers instead, the handshake fails,
    and the request goes to the next server. The member sees no prompt."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, keyring, 1)
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        spare = await start_door(nursery, keyring, 3, engine=Behaviour())
        liar = await start_door(nursery, keyring, 7, engine=Behaviour())
        link_in_order(a, b, spare)
        a.view.peers[b.view.node] = liar.peer_addr  # the forged dance
        body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
        r = await client.post(f"{a.api}/completions", json=body)
        assert r.status_code == 200 and r.headers[SERVED_BY] == spare.view.node.hex()
        assert liar.behaviour is not None and liar.behaviour.served == []
        assert b.behaviour is not None and b.behaviour.served == []
        nursery.cancel_scope.cancel()
