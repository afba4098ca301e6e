"""An async client for one vLLM OpenAI-compatible server (httpx).

Completions and chat completions, streamed or not. Errors come back typed:
``EngineUnavailable`` (cannot connect, or the server is overloaded or gone:
try another), ``EngineRequestError`` (the server refused the request: 4xx,
with vLLM's message), ``EngineProtocolError`` (an answer that is not what
the OpenAI API promises). A stream yields the parsed JSON chunks of the
server-sent events and stops at ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = [
    "EngineClient",
    "EngineProtocolError",
    "EngineRequestError",
    "EngineUnavailable",
]

CONNECT_TIMEOUT = 5.0  # s
READ_TIMEOUT = 300.0  # s between bytes of an answer (a long prompt's prefill on CPU)


class EngineClientError(Exception):
    """Base of the client's errors."""


class EngineUnavailable(EngineClientError):
    """The server cannot take the request now (down, restarting, overloaded)."""


class EngineRequestError(EngineClientError):
    """The server refused the request; ``status`` and vLLM's ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class EngineProtocolError(EngineClientError):
    """The server's answer is not valid OpenAI API output."""


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(body.get("message", err))
    return str(body)[:500]


class EngineClient:
    def __init__(self, base_url: str, *, http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        )

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plain requests ---------------------------------------------------

    async def models(self) -> list[str]:
        body = await self._json("GET", "/v1/models")
        try:
            return [m["id"] for m in body["data"]]
        except (KeyError, TypeError) as e:
            raise EngineProtocolError(f"/v1/models: {e!r}") from None

    async def completion(self, **request: Any) -> dict[str, Any]:
        """POST /v1/completions (``model``, ``prompt``, ``max_tokens``, ...)."""
        return await self._json("POST", "/v1/completions", {**request, "stream": False})

    async def chat(self, **request: Any) -> dict[str, Any]:
        """POST /v1/chat/completions (``model``, ``messages``, ...)."""
        return await self._json("POST", "/v1/chat/completions", {**request, "stream": False})

    # -- streams ----------------------------------------------------------

    def stream_completion(self, **request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/v1/completions", {**request, "stream": True})

    def stream_chat(self, **request: Any) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/v1/chat/completions", {**request, "stream": True})

    # -- plumbing ---------------------------------------------------------

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, self.base_url + path, json=body)
        except httpx.TransportError as e:
            raise EngineUnavailable(f"{self.base_url}: {e!r}") from None
        self._check(response)
        try:
            data = response.json()
        except ValueError:
            raise EngineProtocolError(f"{path}: not JSON: {response.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise EngineProtocolError(f"{path}: expected an object, got {type(data).__name__}")
        return data

    @staticmethod
    def _check(response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in (429, 502, 503, 504) or status >= 500:
            raise EngineUnavailable(f"{status}: {_error_message(response)}")
        raise EngineRequestError(status, _error_message(response))

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._http.stream("POST", self.base_url + path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._check(response)
                done = False
                # Read to the end even after [DONE] (the server closes right
                # after it): leaving httpx's line iterator early leaks its
                # inner generators.
                async for line in response.aiter_lines():
                    if done or not line.startswith("data:"):
                        continue  # blank separators, comments, keep-alives
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        continue
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise EngineProtocolError(f"{path}: bad event {data[:200]!r}") from None
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise EngineRequestError(400, _error_message_from(chunk))
                    yield chunk
        except httpx.TransportError as e:
            raise EngineUnavailable(f"{self.base_url}: {e!r}") from None


def _error_message_from(chunk: dict[str, Any]) -> str:
    err = chunk.get("error")
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)
