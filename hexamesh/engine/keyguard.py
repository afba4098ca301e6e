"""The engine's door: every request but a health check or a scrape needs the
agent's key.

vLLM's own ``VLLM_API_KEY`` check guards only paths under ``/v1``, ``/v2``,
``/inference`` and ``/cohere``; its ``/invocations`` (SageMaker), ``/pooling``,
``/classify`` and ``/tokenize`` run the model without it. The agent starts
vLLM with ``--middleware hexamesh.engine.keyguard.EngineKeyGuard``, which vLLM
adds to its app: a request without ``Authorization: Bearer $VLLM_API_KEY``
gets 401 before any route, whatever its path. Pure ASGI (no import of
vLLM's web stack): it runs inside vLLM's process, which imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["OPEN_PATHS", "EngineKeyGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})  # the supervisor's probe and scrape
_REFUSED = json.dumps({"error": {"message": "this engine takes its agent's requests only"}})


class EngineKeyGuard:
    def __init__(self, app: App, key: str | None = None) -> None:
        self.app = app
        key = key if key is not None else os.environ.get("VLLM_API_KEY", "")
        # compared as digests: equal length, constant time
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    def _allowed(self, scope: Scope) -> bool:
        if self._digest is None or scope.get("path") in OPEN_PATHS:
            return True
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                given = hashlib.sha256(token.strip().encode()).digest()
                return scheme.lower() == "bearer" and hmac.compare_digest(given, self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = _REFUSED.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
