"""API requests checked before routing, and errors in OpenAI's shape.

Every refusal is an :class:`ApiError` that renders as OpenAI does::

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "max_tokens", "code": null}}

with a 4xx status for the client's mistakes and 5xx for ours. Every bound
is in ``hexamesh.limits``: ``MAX_BODY`` bytes of body, ``MAX_JSON_DEPTH``
levels of nesting, ``MAX_MODEL_NAME`` characters of model name,
``MAX_TOKENS_LIMIT`` tokens, ``MAX_CHOICES`` for ``n`` and ``best_of``,
``MAX_LOGPROBS``, ``MAX_LIST_ITEMS`` for the lists a request may carry.

Fields: a completion or chat request may carry OpenAI's fields and vLLM's
sampling extras (``COMPLETION_FIELDS``, ``CHAT_FIELDS``); any other field
is refused with a 400 that names it, as OpenAI's own API does. vLLM's
internal ones (``kv_transfer_params``, ``vllm_xargs``, a request's own
``chat_template``, prompt embeddings, its ``request_id``) are not for
clients of a shared swarm and are refused the same way. vLLM's ``priority``
is taken, and mapped to the swarm's three (``serve.priority``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hexamesh.limits import (
    MAX_BODY,
    MAX_CHOICES,
    MAX_JSON_DEPTH,
    MAX_LIST_ITEMS,
    MAX_LOGPROBS,
    MAX_MODEL_NAME,
    MAX_TOKENS_LIMIT,
)

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "MAX_BODY",
    "ApiError",
    "CompletionRequest",
    "parse_completion",
]

# The continuation marker peers add (``sse.CONTINUES``; refused from clients
# by the front door): named here to keep this module free of sse's imports.
_CONTINUES = "hexamesh_continues"
# Fields of both endpoints: OpenAI's, then vLLM's sampling extras.
_COMMON = frozenset(
    {
        "model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p",
        "stop", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "seed",
        "user", "response_format",
        "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens",
        "stop_token_ids", "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
        "spaces_between_special_tokens", "bad_words", "allowed_token_ids",
        "truncate_prompt_tokens", "add_special_tokens", "prompt_logprobs", "echo",
        "return_tokens_as_token_ids", "use_beam_search", "structured_outputs",
        "priority",
        _CONTINUES,
    }
)  # fmt: skip
COMPLETION_FIELDS = _COMMON | {"prompt", "suffix", "best_of"}
CHAT_FIELDS = _COMMON | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning_effort", "include_reasoning", "add_generation_prompt",
    "continue_final_message", "chat_template_kwargs", "documents",
}  # fmt: skip


class ApiError(Exception):
    """A request refused, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    chat: bool  # /v1/chat/completions (else /v1/completions)
    model: str
    stream: bool
    max_tokens: int | None
    body: dict[str, Any] = field(repr=False)  # the whole request, passed on as given


def json_depth(value: Any) -> int:
    """Levels of arrays and objects in a parsed JSON value (no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body of {len(raw)} bytes is over the {MAX_BODY}-byte limit")
    try:
        body = json.loads(raw)
    except RecursionError:  # the parser recurses per level: thousands of `[`
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _bounded_int(body: dict[str, Any], key: str, low: int, high: int) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"`{key}` must be an integer from {low} to {high}", param=key)


def _check_fields(body: dict[str, Any], chat: bool) -> None:
    """Known fields only, with bounded sizes (see the module doc)."""
    unknown = sorted(set(body) - (CHAT_FIELDS if chat else COMPLETION_FIELDS))
    if unknown:
        names = ", ".join(f"`{name[:64]}`" for name in unknown[:8])
        raise ApiError(400, f"unsupported field(s): {names}", param=unknown[0][:64])
    _bounded_int(body, "n", 1, MAX_CHOICES)
    _bounded_int(body, "priority", -(2**31), 2**31 - 1)  # vLLM's; mapped to ours (serve.priority)
    _bounded_int(body, "best_of", 1, MAX_CHOICES)
    _bounded_int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if not (chat and isinstance(body.get("logprobs"), bool)):  # chat: a switch; else a count
        _bounded_int(body, "logprobs", 0, MAX_LOGPROBS)
    for key in ("messages", "prompt", "stop", "logit_bias", "stop_token_ids", "tools"):
        value = body.get(key)
        if isinstance(value, list | dict) and len(value) > MAX_LIST_ITEMS:
            raise ApiError(400, f"`{key}` holds more than {MAX_LIST_ITEMS} items", param=key)


def parse_completion(raw: bytes, *, chat: bool) -> CompletionRequest:
    """Check a completions or chat request; raises ApiError (400/413)."""
    body = parse_json_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required and must be a string", param="model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise ApiError(
            400,
            f"`model` must be at most {MAX_MODEL_NAME} printable characters",
            param="model",
        )
    _check_fields(body, chat)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be true or false", param="stream")
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ApiError(400, f"`{key}` must be an integer", param=key)
        if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise ApiError(
                400,
                f"`{key}` must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}",
                param=key,
            )
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "`messages` must be a non-empty list", param="messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, "each message needs a `role` string", param="messages")
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "`prompt` must be a string or a non-empty list", param="prompt")
    return CompletionRequest(
        chat=chat, model=model, stream=stream, max_tokens=max_tokens, body=body
    )
