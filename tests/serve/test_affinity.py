"""Prefix affinity: checkpoints of a prompt's prefix, the table that remembers
servers by them, the router's term, and a front door sending a conversation's
next turn back to the server that served the last."""

from __future__ import annotations

import httpx
import trio

from hexamesh.serve.affinity import (
    BLOCK_CHARS,
    AffinityTable,
    marks_of,
    parse_marks,
)
from hexamesh.serve.router import Candidate, rank
from hexamesh.wire import KeyRing
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, link, start_door

A, B = b"a" * 20, b"b" * 20
SYSTEM = "".join(f"rule {i}: answer in the swarm's voice. " for i in range(120))  # ~4.5 KB


def chat(*turns: str) -> dict[str, object]:
    messages = [{"role": "system", "content": SYSTEM}]
    messages += [{"role": "user", "content": t} for t in turns]
    return {"model": MODEL, "messages": messages, "max_tokens": 2}


def test_checkpoints_name_prefixes_at_powers_of_two_and_the_end() -> None:
    assert marks_of({"prompt": "short"}, chat=False) is None
    long = "x" * (BLOCK_CHARS * 11 + 7)
    marks = marks_of({"prompt": long}, chat=False)
    assert marks is not None and marks.blocks == 11
    assert [n for n, _ in marks.points] == list(range(1, 12))  # steps of an eighth of 8
    longer = marks_of({"prompt": long + "y" * BLOCK_CHARS * 39}, chat=False)
    assert longer is not None and longer.blocks == 50
    assert [n for n, _ in longer.points] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 50]
    assert dict(longer.points)[8] == dict(marks.points)[8]  # the prefix is shared
    assert dict(longer.points)[50] != dict(marks.points)[11]
    huge = marks_of({"prompt": "x" * 1024 * 1024}, chat=False)
    assert huge is not None and len(huge.points) <= 21
    one, two = marks_of(chat("hi"), chat=True), marks_of(chat("hi", "more"), chat=True)
    assert one is not None and two is not None and one.root == two.root
    with_tools = marks_of({**chat("hi"), "tools": [{"type": "function"}]}, chat=True)
    assert with_tools is not None and with_tools.root != one.root  # tools come first
    assert parse_marks(marks.header()) == marks
    for bad in ("", "x", "3:zz", "0:0011223344556677", "1:00112233"):
        assert parse_marks(bad) is None


def test_the_table_remembers_for_a_while_within_a_bound() -> None:
    now = [0.0]
    table = AffinityTable(lambda: now[0], ttl=60, capacity=8)
    marks = marks_of({"prompt": "z" * BLOCK_CHARS * 9}, chat=False)
    shorter = marks_of({"prompt": "z" * BLOCK_CHARS * 4}, chat=False)
    assert marks is not None and shorter is not None
    assert table.lookup(marks) == {}
    table.learn(shorter, A)
    assert table.lookup(marks) == {A: 4 / 9}  # A holds four of nine blocks
    table.learn(marks, B)
    assert table.lookup(marks) == {B: 1.0}
    table.forget(B, marks)
    assert table.lookup(marks) == {}  # B refused it; A's entries were taken by B's
    table.learn(marks, B)
    now[0] = 61.0
    assert table.lookup(marks) == {}  # too old: its cache may have evicted it
    for i in range(20):
        other = marks_of({"prompt": f"{i}" * BLOCK_CHARS * 2}, chat=False)
        assert other is not None
        table.learn(other, A)
    assert len(table) == 8
    table.forget(A)
    assert len(table) == 0


def test_affinity_outweighs_a_small_load_difference_not_saturation() -> None:
    a = Candidate(node=A, load=0.3, distance=1)
    b = Candidate(node=B, load=0.1, distance=1)
    assert rank([a, b])[0].node == B
    assert rank([a, b], cached={A: 1.0})[0].node == A
    assert rank([a, b], cached={A: 0.1})[0].node == B  # a little of the prompt: load wins
    full = Candidate(node=A, load=0.97, distance=1)
    assert rank([full, b], cached={A: 1.0})[0].node == B  # saturated: load wins
    # equal servers: distinct prefixes spread over them, each one always the same way
    firsts = {
        rank([a, Candidate(node=B, load=0.3, distance=1)], salt=bytes([i]))[0].node
        for i in range(32)
    }
    assert firsts == {A, B}


async def test_the_next_turn_goes_back_to_the_server_of_the_last() -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        entry = await start_door(nursery, ring, 1)
        b = await start_door(nursery, ring, 2, engine=Behaviour())
        c = await start_door(nursery, ring, 3, engine=Behaviour())
        link(entry, b, c)
        url = f"{entry.api}/chat/completions"
        r = await client.post(url, json=chat("first"))
        first = r.headers["x-hexamesh-served-by"]
        other = c if first == b.view.node.hex() else b
        server = b if other is c else c
        entry.view.loads = {server.view.node: 0.3, other.view.node: 0.0}  # the other is idler
        for turn in range(2, 6):
            r = await client.post(url, json=chat("first", *[f"turn {i}" for i in range(turn)]))
            assert r.headers["x-hexamesh-served-by"] == first
        assert len(server.front.affinity) > 0  # the hint came with the forward
        assert entry.front.affinity.hits == 4
        entry.front.server_died(server.view.node)
        entry.view.peers.pop(server.view.node)
        r = await client.post(url, json=chat("first", "after"))
        assert r.headers["x-hexamesh-served-by"] == other.view.node.hex()
        nursery.cancel_scope.cancel()


def test_a_forwards_checkpoints_are_bounded() -> None:
    assert parse_marks("1:0011223344556677," + "9" * 4300 + ":0011223344556677") is None
    assert parse_marks("4:0011223344556677,2:0011223344556677") is None  # out of order
    assert parse_marks(f"{1 << 25}:0011223344556677") is None
