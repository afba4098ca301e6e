"""Reading and rewriting OpenAI server-sent-event streams (only on failover).

The relay forwards chunked SSE bytes untouched; it keeps a reference to
what it sent and only parses it here when the server died mid-stream and the
answer must go on elsewhere. :func:`progress` reads what the client already
has (text, events, the stream's id); :func:`continuation` builds the request
that asks another server for the rest; :func:`rewrite` makes the new
server's events look like the old stream's (same id and created time, no
second role announcement), so the client sees one stream.

Limits (docs/serving.md): the continuation is exact for greedy decoding
(temperature 0) and a fair continuation otherwise (the sampler's state cannot
move between servers); the tokens already sent are bounded by the event
count here (vLLM merges tokens into one event under load) and counted by the
serving engine's tokenizer there (:func:`settle_continuation`); only a
string prompt (completions) or a message list (chat) with one choice
(``n`` = 1) can be continued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hexamesh.limits import MAX_PENDING_CHUNK
from hexamesh.serve.requests import CompletionRequest

__all__ = [
    "CONTINUES",
    "ChunkError",
    "ChunkScanner",
    "Progress",
    "chunk",
    "continuation",
    "dechunk",
    "progress",
    "rewrite",
    "settle_continuation",
]

DONE = b"[DONE]"
# The request field that marks a continuation for the agent whose engine
# serves it: {"text": what the client already holds, "counted": the tokens
# already taken off max_tokens for it}. That agent asks its engine how many
# tokens the text is and takes off the rest (``settle_continuation``); the
# field never reaches an engine. Clients may not send it.
CONTINUES = "hexamesh_continues"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class ChunkError(ValueError):
    """An upstream's chunked framing is broken (a bad size line, a chunk that
    does not end, one larger than ``limits.MAX_PENDING_CHUNK``): the upstream
    is failed, as one that broke off."""


def chunk_size(line: bytes) -> int:
    """The size on a chunk's size line (hex, optional extensions); ChunkError if bad."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise ChunkError(f"bad chunk size line {line[:40]!r}")
    return int(digits, 16)


class ChunkScanner:
    """Follows HTTP/1.1 chunked framing so a relay forwards whole chunks only.

    ``feed(data)`` returns the bytes that end on a chunk boundary (safe to
    send: if the server dies now, the client holds only whole events) and
    keeps the rest until it completes. ``done`` once the last chunk passed.
    Raises ChunkError on broken framing, or when more than
    ``MAX_PENDING_CHUNK`` bytes would wait for a chunk's end.
    """

    __slots__ = ("done", "pending")

    def __init__(self) -> None:
        self.pending = b""  # the start of an incomplete chunk (always at a boundary)
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        pos = cut = 0
        end = len(buf)
        while pos < end:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 64:  # a size line is a few hex digits
                    raise ChunkError(f"chunk size line over 64 bytes: {buf[pos : pos + 40]!r}")
                break
            size = chunk_size(buf[pos:eol])
            if size == 0:
                if buf[eol + 2 : eol + 4] == b"\r\n":  # no trailers, which servers here never send
                    cut = eol + 4
                    self.done = True
                break
            nxt = eol + 2 + size + 2  # data and its CRLF
            if nxt > end:
                break
            if buf[nxt - 2 : nxt] != b"\r\n":
                raise ChunkError("a chunk's data does not end with CRLF")
            pos = cut = nxt
        self.pending = buf[cut:]
        if len(self.pending) > MAX_PENDING_CHUNK:
            raise ChunkError(f"a chunk over {MAX_PENDING_CHUNK} bytes is not ended")
        return buf[:cut] if cut < end else buf


def dechunk(data: bytes) -> bytes:
    """The payload of whole chunks (the bytes a ChunkScanner let through)."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        size = chunk_size(data[pos:eol])
        if size == 0:
            break
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 4 + size
    return bytes(out)


def events(payload: bytes) -> list[bytes]:
    """The ``data:`` fields of an SSE byte stream, in order."""
    out = []
    for block in payload.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


@dataclass(frozen=True, slots=True)
class Progress:
    text: str  # generated so far, as the client received it
    tokens: int  # content events seen: a token each, or several (vLLM merges under load)
    stream_id: str | None
    created: int | None
    finished: bool  # a finish_reason or [DONE] already went out


def _delta_text(event: dict[str, Any], chat: bool) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    if chat:
        return str((choices[0].get("delta") or {}).get("content") or "")
    return str(choices[0].get("text") or "")


def progress(sent: bytes, *, chat: bool) -> Progress:
    """What the client holds of a stream: ``sent`` is the chunked bytes relayed."""
    text: list[str] = []
    tokens = 0
    stream_id: str | None = None
    created: int | None = None
    finished = False
    for data in events(dechunk(sent)):
        if data == DONE:
            finished = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        stream_id = stream_id or event.get("id")
        created = created or event.get("created")
        piece = _delta_text(event, chat)
        if piece:
            text.append(piece)
            tokens += 1
        for choice in event.get("choices") or []:
            if choice.get("finish_reason"):
                finished = True
    return Progress("".join(text), tokens, stream_id, created, finished)


def continuation(req: CompletionRequest, done: Progress) -> dict[str, Any] | None:
    """The request for the rest of the answer, or None if it cannot be continued."""
    body = dict(req.body)
    if body.get("n", 1) != 1:
        return None
    if req.max_tokens is not None:
        # Each event held at least one token: an upper bound of what is left,
        # made exact where the engine is (``settle_continuation``).
        left = req.max_tokens - done.tokens
        if left < 1:
            return None
        body[_max_key(body)] = left
        body[CONTINUES] = {"text": done.text, "counted": done.tokens}
    if req.chat:
        body["messages"] = [*body["messages"], {"role": "assistant", "content": done.text}]
        body["continue_final_message"] = True  # vLLM: extend the last message, no new turn
        body["add_generation_prompt"] = False
    else:
        if not isinstance(body.get("prompt"), str):
            return None
        body["prompt"] = body["prompt"] + done.text
        body.pop("echo", None)
    return body


def _max_key(body: dict[str, Any]) -> str:
    return "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"


def settle_continuation(body: dict[str, Any], text_tokens: int | None) -> dict[str, Any]:
    """A continuation's request for the engine: its ``CONTINUES`` field gone,
    and ``max_tokens`` less the tokens the text already sent is beyond those
    counted (``text_tokens``: the engine's count; None: unknown, keep the
    bound). At least one token is asked for: the first stream broke off before
    its end, so the answer is not complete."""
    body = dict(body)
    marker = body.pop(CONTINUES, None)
    key = _max_key(body)
    if text_tokens is None or not isinstance(marker, dict) or not isinstance(body.get(key), int):
        return body
    counted = marker.get("counted")
    if isinstance(counted, int) and text_tokens > counted:
        body[key] = max(1, body[key] - (text_tokens - counted))
    return body


def rewrite(data: bytes, done: Progress, *, chat: bool) -> bytes | None:
    """A continuation event made to look like the first stream's; None = drop it."""
    if data == DONE:
        return data
    try:
        event = json.loads(data)
    except ValueError:
        return data
    if not isinstance(event, dict):
        return data
    if done.stream_id is not None:
        event["id"] = done.stream_id
    if done.created is not None:
        event["created"] = done.created
    if chat:
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            delta.pop("role", None)
            if not delta and not choice.get("finish_reason"):
                return None  # the new server's opening role-only event
    return json.dumps(event, separators=(",", ":")).encode()
