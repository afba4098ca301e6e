"""API requests checked before routing, and errors in OpenAI's shape.

Every refusal is an :class:`ApiError` that renders as OpenAI does::

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "max_tokens", "code": null}}

with a 4xx status for the client's mistakes and 5xx for ours. Limits are
explicit: ``MAX_BODY`` bytes of request body, ``MAX_TOKENS_LIMIT`` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BODY",
    "ApiError",
    "CompletionRequest",
    "parse_completion",
]

MAX_BODY = 1024 * 1024  # bytes of request body; more is 413
MAX_TOKENS_LIMIT = 32768  # max_tokens above this is refused outright


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


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body of {len(raw)} bytes is over the {MAX_BODY}-byte limit")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def parse_completion(raw: bytes, *, chat: bool) -> CompletionRequest:
    """Check a completions or chat request; raises ApiError (400/413)."""
    body = parse_json_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required and must be a string", param="model")
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
