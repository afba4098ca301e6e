"""The official `openai` client against a front door (list models, completion,
chat, streaming), answered by a peer's engine one forward away."""

from __future__ import annotations

import openai
import pytest
import trio

from hexamesh.wire import KeyRing
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, link, start_door


async def test_openai_client_end_to_end() -> None:
    keyring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        a = await start_door(nursery, keyring, 1, api_keys=("k1",))
        b = await start_door(nursery, keyring, 2, engine=Behaviour())
        link(a, b)

        def use_client() -> dict[str, object]:
            client = openai.OpenAI(base_url=a.api, api_key="k1", max_retries=0, timeout=10)
            out: dict[str, object] = {}
            out["models"] = [m.id for m in client.models.list()]
            out["completion"] = (
                client.completions.create(model=MODEL, prompt="a b", max_tokens=3).choices[0].text
            )
            chat = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a b"}], max_tokens=3
            )
            out["chat"] = chat.choices[0].message.content
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "a b"}],
                max_tokens=3,
                stream=True,
            )
            out["stream"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            bad = openai.OpenAI(base_url=a.api, api_key="nope", max_retries=0, timeout=10)
            try:
                bad.models.list()
            except openai.AuthenticationError as e:
                out["auth"] = e.status_code
            try:
                client.completions.create(model="missing", prompt="x")
            except openai.NotFoundError as e:
                out["missing"] = e.status_code
            return out

        out = await trio.to_thread.run_sync(use_client)
        assert out == {
            "models": [MODEL],
            "completion": " w2 w3 w4",
            "chat": " w2 w3 w4",
            "stream": " w2 w3 w4",
            "auth": 401,
            "missing": 404,
        }
        nursery.cancel_scope.cancel()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
