"""Priorities: what a client asks (header or vLLM's field), capped by the
policy, routed by, carried with a forward, and written for the engine."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from hexamesh.serve.priority import PriorityPolicy, engine_body, of_client
from hexamesh.serve.router import Priority
from hexamesh.wire import KeyRing
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, link, start_door

H = "x-hexamesh-priority"


def test_what_a_client_asks_is_mapped_and_capped() -> None:
    policy = PriorityPolicy()
    assert of_client({}, {}, policy) is Priority.MEDIUM
    assert of_client({H: "HIGH"}, {"priority": 5}, policy) is Priority.HIGH  # the header wins
    assert of_client({}, {"priority": -3}, policy) is Priority.HIGH  # vLLM's: lower first
    assert of_client({}, {"priority": 7}, policy) is Priority.LOW
    assert of_client({}, {"priority": 0}, policy) is Priority.MEDIUM
    capped = PriorityPolicy(default=Priority.LOW, client_max=Priority.MEDIUM)
    assert of_client({}, {}, capped) is Priority.LOW
    assert of_client({H: "high"}, {}, capped) is Priority.MEDIUM
    assert of_client({H: "high"}, {}, capped, admin=True) is Priority.HIGH
    with pytest.raises(ValueError):
        of_client({H: "urgent"}, {}, policy)


def test_the_engine_gets_the_swarms_priority_not_the_clients_number() -> None:
    plain = b'{"model": "m", "prompt": "x"}'
    assert engine_body(plain, Priority.MEDIUM) is plain  # the common case: untouched
    assert json.loads(engine_body(plain, Priority.HIGH))["priority"] == -1
    assert json.loads(engine_body(plain, Priority.LOW))["priority"] == 1
    forced = b'{"model": "m", "prompt": "x", "priority": -1000}'
    assert json.loads(engine_body(forced, Priority.MEDIUM))["priority"] == 0


async def test_a_priority_travels_with_the_forward_to_the_engine() -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        a = await start_door(nursery, ring, 1)
        b = await start_door(nursery, ring, 2, engine=Behaviour())
        link(a, b)
        a.front.priorities = PriorityPolicy(client_max=Priority.MEDIUM)
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        for headers in ({H: "low"}, {}, {H: "high"}):
            r = await client.post(f"{a.api}/completions", json=body, headers=headers)
            assert r.status_code == 200
        r = await client.post(f"{a.api}/completions", json=body | {"priority": -9})
        assert r.status_code == 200
        r = await client.post(f"{a.api}/completions", json=body, headers={H: "now"})
        assert r.status_code == 400 and H in r.text
        assert b.behaviour is not None
        seen = [s.get("priority") for s in b.behaviour.served]
        # low: 1; medium: none; high capped to medium: none; -9 capped: 0 (rewritten)
        assert seen == [1, None, None, 0]
        metric = a.front.metrics.priorities.labels("low")._value.get()
        assert metric == 1
        nursery.cancel_scope.cancel()


async def test_low_requests_leave_a_share_of_the_engines_slots_free() -> None:
    """With 4 slots and a quarter reserved, three low streams fill what low
    may take: a fourth waits in the agent, a high one goes straight in."""
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=20) as client:
        a = await start_door(nursery, ring, 1, engine=Behaviour(token_delay=0.05))
        a.front._engine_slots = lambda model: 4
        engine = a.behaviour
        assert engine is not None
        body = {"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": True}
        ends: dict[str, float] = {}

        async def ask(name: str, priority: str) -> None:
            async with client.stream(
                "POST", f"{a.api}/completions", json=body, headers={H: priority}
            ) as r:
                assert r.status_code == 200
                async for _ in r.aiter_bytes():
                    pass
            ends[name] = trio.current_time()

        async with trio.open_nursery() as inner:
            for i in range(3):
                inner.start_soon(ask, f"low{i}", "low")
            with trio.fail_after(5):
                while len(engine.served) < 3:
                    await trio.sleep(0.01)
            inner.start_soon(ask, "low3", "low")
            await trio.sleep(0.2)
            assert len(engine.served) == 3  # the fourth low waits in the agent
            assert a.front.low_gate.waited == 1
            inner.start_soon(ask, "high", "high")
            with trio.fail_after(5):
                while len(engine.served) < 4:
                    await trio.sleep(0.01)
            assert engine.served[3].get("priority") == -1  # the high one went in
        assert ends["high"] < ends["low3"]  # and ended before the low that waited
        nursery.cancel_scope.cancel()


def test_an_engines_slots_are_its_max_num_seqs_or_vllms_default() -> None:
    from hexamesh.engine.device import Device
    from hexamesh.engine.supervisor import ModelSpec, max_num_seqs

    cpu, gpu = Device(gpu=False, name="cpu"), Device(gpu=True, name="gpu")
    assert max_num_seqs(ModelSpec(name="m", model="d"), cpu) == 128
    assert max_num_seqs(ModelSpec(name="m", model="d"), gpu) == 256
    spec = ModelSpec(name="m", model="d", extra_args=("--max-num-seqs=8",))
    assert max_num_seqs(spec, cpu) == 8
    spec = ModelSpec(name="m", model="d", extra_args=("--max-num-seqs", "16"))
    assert max_num_seqs(spec, gpu) == 16


def test_an_escaped_priority_key_is_rewritten_too() -> None:
    sneaky = b'{"model": "m", "prompt": "x", "\\u0070riority": -2147483648}'
    assert json.loads(engine_body(sneaky, Priority.MEDIUM))["priority"] == 0


async def test_a_low_request_waits_for_a_slot_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    from hexamesh.serve import priority as priority_mod

    monkeypatch.setattr(priority_mod, "LOW_WAIT_LIMIT", 0.05)
    gate = priority_mod.LowGate(reserve=0.5)
    release = await gate.enter("m", 2)  # the one slot low may take
    with pytest.raises(priority_mod.SlotTimeout):
        await gate.enter("m", 2)
    release()
    release()  # twice does nothing
    (await gate.enter("m", 2))()
