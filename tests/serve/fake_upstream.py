"""An in-process stand-in for a vLLM OpenAI server, for the front door's tests.

It answers /v1/completions and /v1/chat/completions like vLLM (HTTP/1.1,
chunked SSE when streaming, one token per event or ``per_event`` merged, as
vLLM does when its frontend falls behind) and /tokenize (a token per word),
with a deterministic
"model": token k of an answer is `` w<n>`` where n counts the words already in
the prompt (and, for chat, the messages), so a continuation from prompt +
text-so-far produces exactly the rest of the original answer. A stream that
asks for ``stream_options.include_usage`` ends with vLLM's usage event. Knobs
make it refuse (``status``), die before answering (``die_before``), break off
after a number of tokens (``die_after``), go silent with the connection open
as a frozen server does (``freeze_before`` the answer, ``freeze_after`` a
number of tokens), end a stream with an error event
(``error_after``), ignore the usage request (``usage``), close the connection
after each answer (``keep_alive``), go slowly (``token_delay``) or answer
with given bytes, malformed on purpose (``raw``).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio


@dataclass
class Behaviour:
    status: int = 200
    die_before: bool = False
    die_after: int | None = None  # tokens streamed, then the connection is cut
    freeze_before: bool = False  # read the request, then say nothing, connection open
    freeze_after: int | None = None  # tokens streamed, then silence, connection open
    token_delay: float = 0.0
    per_event: int = 1  # tokens merged into one streamed event
    error_after: int | None = None  # tokens streamed, then an error event ends the stream
    usage: bool = True  # honour stream_options.include_usage
    keep_alive: bool = True  # False: close the connection after each answer
    tokenize: bool = True  # answer /tokenize (else 404, as an engine without it)
    raw: bytes | None = None  # answer with these bytes as they are (malformed on purpose)...
    raw_then: str = "close"  # ... then "close" the connection, or "hang" with it open
    served: list[dict[str, Any]] = field(default_factory=list)  # request bodies seen
    tokenized: list[dict[str, Any]] = field(default_factory=list)  # /tokenize bodies seen
    connections: int = 0  # connections accepted


def words(body: dict[str, Any], chat: bool) -> int:
    if chat:
        return sum(len(str(m.get("content") or "").split()) for m in body["messages"])
    return len(str(body["prompt"]).split())


def answer(body: dict[str, Any], chat: bool) -> list[str]:
    start = words(body, chat)
    return [f" w{start + i}" for i in range(int(body.get("max_tokens") or 8))]


async def _read_request(stream: trio.SocketStream) -> tuple[str, dict[str, Any]] | None:
    conn = h11.Connection(h11.SERVER)
    target, body = "", b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            target = event.target.decode()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return target, json.loads(body)
        else:
            return None


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(stream: trio.SocketStream, b: Behaviour, name: str) -> None:
    """Answer requests on one connection (keep-alive, like vLLM) until one
    breaks off or the client leaves."""
    b.connections += 1
    try:
        while await _answer_one(stream, b, name):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def _answer_one(stream: trio.SocketStream, b: Behaviour, name: str) -> bool:
    """One request and its answer; False: the connection is to be closed."""
    got = await _read_request(stream)
    if got is None:
        return False
    target, body = got
    if target == "/tokenize":
        b.tokenized.append(body)
        count = len(str(body.get("prompt", "")).split())
        status, doc = (200, {"count": count}) if b.tokenize else (404, {"detail": "Not Found"})
        raw = json.dumps(doc).encode()
        await stream.send_all(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(raw), raw)
        )
        return True
    b.served.append(body)
    if b.raw is not None:
        await stream.send_all(b.raw)
        if b.raw_then == "hang":
            await trio.sleep_forever()
        return False
    if b.die_before:
        return False
    if b.freeze_before:
        await trio.sleep_forever()
    if b.status != 200:
        err = json.dumps({"error": {"message": "refused", "code": b.status}}).encode()
        await stream.send_all(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (b.status, len(err), err)
        )
        return True
    if body.get("model") != name:
        err = json.dumps(
            {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        ).encode()
        await stream.send_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(err), err)
        )
        return True
    chat = target.endswith("/chat/completions")
    tokens = answer(body, chat)
    if not body.get("stream"):
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
        text = "".join(tokens)
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        data = json.dumps(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(tokens),
                    "total_tokens": 1 + len(tokens),
                },
            }
        ).encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        return b.keep_alive
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    obj = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first = {
            "id": "cmpl-fake",
            "object": obj,
            "created": 7,
            "model": name,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        }
        await stream.send_all(_chunk(b"data: " + json.dumps(first).encode() + b"\n\n"))
    for i in range(0, len(tokens), b.per_event):
        if b.die_after is not None and i >= b.die_after:
            return False
        if b.freeze_after is not None and i >= b.freeze_after:
            await trio.sleep_forever()
        if b.error_after is not None and i >= b.error_after:
            error = {"error": {"message": "engine failed mid-stream", "code": 500}}
            await stream.send_all(_chunk(b"data: " + json.dumps(error).encode() + b"\n\n"))
            break
        tok = "".join(tokens[i : i + b.per_event])
        last = i + b.per_event >= len(tokens)
        choice = {"index": 0, "finish_reason": "length" if last else None}
        if chat:
            choice["delta"] = {"content": tok}
        else:
            choice["text"] = tok
        event = {
            "id": "cmpl-fake",
            "object": obj,
            "created": 7,
            "model": name,
            "choices": [choice],
        }
        await stream.send_all(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
        if b.token_delay:
            await trio.sleep(b.token_delay)
    else:
        if b.usage and (body.get("stream_options") or {}).get("include_usage"):
            n = len(tokens)
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
            event = {"id": "cmpl-fake", "object": obj, "created": 7, "model": name, "choices": []}
            event["usage"] = usage
            await stream.send_all(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
    await stream.send_all(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return b.keep_alive


async def serve_fake(
    name: str, behaviour: Behaviour, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(partial(handle, b=behaviour, name=name), listeners)


class Blackhole:
    """An address whose connects hang: a listener with a full accept queue
    (backlog 0, one connection waiting) drops further SYNs, as a host across
    a partition or a dead machine leaves them unanswered."""

    def __enter__(self) -> tuple[str, int]:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.addr = self.listener.getsockname()
        self.waiting = socket.create_connection(self.addr)  # fills the queue
        return self.addr

    def __exit__(self, *exc: object) -> None:
        self.waiting.close()
        self.listener.close()
