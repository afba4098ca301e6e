"""The engine's key guard (vLLM ``--middleware``): every path but a health
check and a scrape needs the agent's key, not only vLLM's /v1 ones."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from hexamesh.engine.keyguard import EngineKeyGuard


async def call(guard: EngineKeyGuard, path: str, auth: str | None = None) -> int:
    headers = [(b"authorization", auth.encode())] if auth is not None else []
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    return int(sent[0]["status"])


async def app(scope: Any, receive: Any, send: Any) -> None:  # the model, reached
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ran"})


@pytest.mark.parametrize("path", ["/v1/completions", "/invocations", "/pooling", "/tokenize"])
def test_every_path_that_runs_the_model_needs_the_key(path: str) -> None:
    guard = EngineKeyGuard(app, key="s3cret")

    async def check() -> None:
        assert await call(guard, path) == 401
        assert await call(guard, path, "Bearer wrong") == 401
        assert await call(guard, path, "Basic s3cret") == 401
        assert await call(guard, path, "Bearer s3cret") == 200

    trio.run(check)


def test_health_and_metrics_stay_open_and_no_key_guards_nothing() -> None:
    async def check() -> None:
        guard = EngineKeyGuard(app, key="s3cret")
        assert await call(guard, "/health") == 200 and await call(guard, "/metrics") == 200
        assert await call(EngineKeyGuard(app, key=""), "/invocations") == 200

    trio.run(check)
