"""SSE helpers: chunk boundaries under any split, progress, continuation requests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hexamesh.limits import MAX_PENDING_CHUNK
from hexamesh.serve.requests import parse_completion
from hexamesh.serve.sse import (
    CONTINUES,
    LAST_CHUNK,
    ChunkError,
    ChunkScanner,
    chunk,
    continuation,
    dechunk,
    progress,
    settle_continuation,
)

EVENTS = [
    b"data: " + json.dumps({"id": "x", "choices": [{"text": f" t{i}"}]}).encode() + b"\n\n"
    for i in range(5)
]
STREAM = b"".join(chunk(e) for e in EVENTS) + LAST_CHUNK


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=12))
def test_scanner_lets_through_whole_chunks_only(cuts: list[int]) -> None:
    scanner = ChunkScanner()
    out = b""
    points = [*sorted(set(cuts)), len(STREAM)]
    start = 0
    for p in points:
        got = scanner.feed(STREAM[start:p])
        out += got
        start = p
        # whatever went out so far ends on a chunk boundary: it dechunks to whole events
        assert dechunk(out) == b"".join(EVENTS[: dechunk(out).count(b"data:")])
    assert out == STREAM and scanner.done


def test_progress_reads_what_the_client_has() -> None:
    sent = b"".join(chunk(e) for e in EVENTS[:3])
    p = progress(sent, chat=False)
    assert (p.text, p.tokens, p.stream_id, p.finished) == (" t0 t1 t2", 3, "x", False)


def test_continuation_of_a_completion_and_a_chat() -> None:
    req = parse_completion(
        json.dumps({"model": "m", "prompt": "hi", "max_tokens": 10}).encode(), chat=False
    )
    p = progress(b"".join(chunk(e) for e in EVENTS[:3]), chat=False)
    assert continuation(req, p) == {
        "model": "m",
        "prompt": "hi t0 t1 t2",
        "max_tokens": 7,  # a bound: each of the 3 events held at least one token
        CONTINUES: {"text": " t0 t1 t2", "counted": 3},
    }
    chat = parse_completion(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "q"}]}).encode(),
        chat=True,
    )
    body = continuation(chat, p)
    assert body is not None and body["messages"][-1] == {
        "role": "assistant",
        "content": " t0 t1 t2",
    }
    many = parse_completion(json.dumps({"model": "m", "prompt": "x", "n": 2}).encode(), chat=False)
    assert continuation(many, p) is None  # several choices cannot be continued


@pytest.mark.parametrize(
    ("key", "max_tokens", "text_tokens", "left"),
    [
        ("max_tokens", 7, 3, 7),  # one token per event: the bound was exact
        ("max_tokens", 7, 5, 5),  # two events held two tokens each
        ("max_completion_tokens", 7, 5, 5),
        ("max_tokens", 7, 20, 1),  # never below one: the stream had not ended
        ("max_tokens", 7, None, 7),  # the engine could not count: keep the bound
    ],
)
def test_settling_a_continuation_takes_off_the_uncounted_tokens(
    key: str, max_tokens: int, text_tokens: int | None, left: int
) -> None:
    body = {"model": "m", key: max_tokens, CONTINUES: {"text": " t0 t1", "counted": 3}}
    settled = settle_continuation(body, text_tokens)
    assert settled == {"model": "m", key: left}
    assert CONTINUES in body  # the caller's dict is left alone


def test_settling_a_request_that_is_no_continuation_changes_nothing() -> None:
    plain = {"model": "m", "max_tokens": 4}
    assert settle_continuation(plain, 9) == plain


@pytest.mark.parametrize(
    "stream",
    [
        b"zz\r\ndata: x\r\n",  # not hex
        b"-5\r\nhello\r\n",  # signed
        b"1_0\r\n0123456789abcdef\r\n",  # int() would take it
        b"5\r\nhelloXX",  # the data does not end with CRLF
        b"1" * 80,  # a size line that never ends
        b"ffffffffffffffffff\r\n",  # over 16 hex digits
    ],
)
def test_broken_chunk_framing_is_a_chunk_error(stream: bytes) -> None:
    with pytest.raises(ChunkError):
        ChunkScanner().feed(stream)


def test_a_chunk_that_never_ends_is_not_buffered_past_the_bound() -> None:
    scanner = ChunkScanner()
    scanner.feed(b"%x\r\n" % (64 * MAX_PENDING_CHUNK))  # announced: 64 MiB
    with pytest.raises(ChunkError, match="not ended"):
        for _ in range(40):
            scanner.feed(b"x" * 65536)
    assert len(scanner.pending) <= MAX_PENDING_CHUNK + 65536
