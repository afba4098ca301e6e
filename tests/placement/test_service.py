"""Placement in real agents (one trio process, loopback sockets, a stand-in vLLM):
an operator's vote through the API loads the model on a winner; slots bound it."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hexamesh.agent import STATUS_FILE_NAME, AgentStatus, run_agent
from hexamesh.comb.waggle import Dance
from hexamesh.config import AgentConfig
from hexamesh.engine.load import EngineLoad
from hexamesh.engine.supervisor import EngineConfig, EngineState, ModelSpec
from hexamesh.identity import Identity
from hexamesh.operator import (
    OPERATOR_KEY_FILE_NAME,
    create_operator_key,
    encode_public,
    load_operator_key,
)
from hexamesh.placement.order import Order, order_to_json, sign_order
from hexamesh.placement.service import run_swarmscale, source_allowed
from hexamesh.placement.swarmscale import ScaleConfig, Swarmscale
from tests.helpers import run_hexamesh
from tests.placement.helpers import order

FAKE_ENGINE = EngineConfig(
    server_module="tests.engine.fake_vllm", ready_timeout=20.0, stop_grace=2.0, scrape_interval=0.2
)


def status_of(data_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((data_dir / STATUS_FILE_NAME).read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


ADMIN = "admin-secret"  # the first agent's admin key
AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}


async def start_swarm(
    tmp_path: Path, nursery: trio.Nursery, n: int, **changes: Any
) -> list[AgentStatus]:
    """``n`` agents; the first only proposes, and keeps the operator's key;
    the others take placements of what lies under ``tmp_path``. ``changes``:
    config changes for every agent but the first."""
    operator = create_operator_key(tmp_path / "a0" / OPERATOR_KEY_FILE_NAME)
    agents: list[AgentStatus] = []
    for i in range(n):
        cfg = AgentConfig(
            data_dir=tmp_path / f"a{i}",
            host="127.0.0.1",
            port=0,
            api_port=0,
            join=(agents[0].address,) if agents else (),
            swarm_key=tmp_path / "a0" / "swarm.key" if agents else None,
            admin_keys=(ADMIN,) if i == 0 else (),
            operator_keys=(encode_public(operator.public_key),),
            accept_placements=i > 0,
            placement_sources=(f"{tmp_path}/*",),
        )
        if i > 0:
            cfg = dataclasses.replace(cfg, **changes)
        agents.append(
            await nursery.start(
                lambda task_status, c=cfg: run_agent(
                    c, engine_config=FAKE_ENGINE, task_status=task_status
                )
            )
        )
    ids = {a.node_id for a in agents}
    while True:  # everyone placed and holding everyone else alive
        states = [status_of(tmp_path / f"a{i}") for i in range(n)]
        if all(s.get("cell") and ids <= set(s.get("alive", [])) | {s["node_id"]} for s in states):
            return agents
        await trio.sleep(0.1)


async def models(client: httpx.AsyncClient, api: str) -> set[str]:
    return {m["id"] for m in (await client.get(f"{api}/models")).json()["data"]}


async def test_an_operator_vote_places_replicas_where_there_is_room(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agents = await start_swarm(tmp_path, nursery, 4)
            api = str(agents[0].api)
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(
                    f"{api}/placements",
                    json={"model": "tiny", "source": str(model_dir)},
                    headers=AS_ADMIN,
                )
                assert r.status_code == 200, r.text
                doc = r.json()
                assert doc["state"] == "placed" and doc["replicas"] == 1
                assert doc["scouts"] == 4 and doc["quorum"] == 3
                [winner] = doc["winners"]
                assert winner["slot"] == 0 and winner["node"] != agents[0].node_id
                # The winner loaded it; the proposer, which runs no engine, routes to it.
                while "tiny" not in await models(client, api):
                    await trio.sleep(0.1)
                answer = await client.post(
                    f"{api}/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}
                )
                assert answer.status_code == 200
                assert answer.headers["x-hexamesh-served-by"] == winner["node"]
                # Three wanted, two agents have room left: two placed, never three.
                r = await client.post(
                    f"{api}/placements",
                    json={"model": "tiny2", "source": str(model_dir), "replicas": 3, "ttl": 3},
                    headers=AS_ADMIN,
                )
                doc = r.json()
                assert doc["state"] == "placed" and len(doc["winners"]) == 2
                nodes = {w["node"] for w in doc["winners"]}
                assert winner["node"] not in nodes and agents[0].node_id not in nodes
                # Everyone is full now: no candidate, no quorum, nothing moves.
                done = await trio.to_thread.run_sync(
                    lambda: run_hexamesh(
                        "place",
                        "tiny3",
                        "--source",
                        str(model_dir),
                        "--ttl",
                        "2",
                        "--peer",
                        api,
                        env={"HEXAMESH_ADMIN_KEY": ADMIN},
                    )
                )
                assert done.returncode == 1 and "no quorum: nothing moved" in done.stderr
                assert "4 scouts, quorum 3" in done.stdout
                assert "tiny3" not in await models(client, api)
            nursery.cancel_scope.cancel()


BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({}, "model"),
    ({"model": ""}, "model"),
    ({"model": "x" * 65}, "model"),
    ({"model": "tiny", "replicas": 0}, "replicas"),
    ({"model": "tiny", "replicas": 9}, "replicas"),
    ({"model": "tiny", "replicas": "2"}, "replicas"),
    ({"model": "tiny", "source": 7}, "source"),
    ({"model": "tiny", "mem_need": -1}, "mem_need"),
    ({"model": "tiny", "ttl": 0.5}, "ttl"),
    ({"model": "tiny", "ttl": 61}, "ttl"),
]


async def test_bad_placement_requests_get_clear_errors(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            cfg = AgentConfig(
                data_dir=tmp_path, host="127.0.0.1", port=0, api_port=0, admin_keys=(ADMIN,)
            )
            agent: AgentStatus = await nursery.start(
                lambda task_status: run_agent(cfg, task_status=task_status)
            )
            async with httpx.AsyncClient(timeout=10, headers=AS_ADMIN) as client:
                for body, param in BAD_REQUESTS:
                    r = await client.post(f"{agent.api}/placements", json=body)
                    assert (r.status_code, r.json()["error"]["param"]) == (400, param), body
                r = await client.get(f"{agent.api}/placements")
                assert r.status_code == 405
                r = await client.post(f"{agent.api}/placements", content=b"{not json")
                assert r.status_code == 400
            nursery.cancel_scope.cancel()


# -- swarmscale in the agent: the loop over stand-ins, on trio's mock clock ------


class FakeEngine:
    def __init__(self, load: float) -> None:
        self.load = load
        self.loaded = {"tiny": EngineState.READY}
        self.unloaded: list[str] = []

    def models(self) -> dict[str, EngineState]:
        return dict(self.loaded)

    def load_of(self, name: str) -> EngineLoad:
        return EngineLoad(load=self.load, running=1, waiting=0, kv=0.1, tok_s=10.0, ttft_s=0.05)

    def spec(self, name: str) -> ModelSpec:
        return ModelSpec(name=name, model="/models/tiny")

    async def unload(self, name: str) -> None:
        del self.loaded[name]
        self.unloaded.append(name)


class FakeComb:
    def __init__(self, node: bytes, peers: list[Dance]) -> None:
        self.node, self.peers = node, peers

    def peers_with(self, model: str) -> list[Dance]:
        return self.peers


class FakePlacements:
    def __init__(self, won: dict[tuple[str, int], int], *, ordered: bool = True) -> None:
        self.won = won
        self.ordered = ordered  # holds an order for the model (a vote placed it)
        self.votes: list[tuple[str, str, int]] = []
        self.given_back: list[str] = []

    def order_for(self, model: str) -> Order | None:
        return order(model, "/models/tiny") if self.ordered else None

    def propose(self, order: Order, replicas: int) -> str:
        self.votes.append((order.model, order.source, replicas))
        return "election"

    def spawn(self, election: str) -> None:
        assert election == "election"

    async def give_back(self, model: str) -> bool:
        self.given_back.append(model)
        return True


def peer(node: bytes, load: float) -> Dance:
    return Dance.first(node, ("10.0.0.9", 1), 1, 0, models=("tiny",), load=load)


async def scale_for(
    seconds: float, engine: FakeEngine, comb: FakeComb, placements: FakePlacements
) -> None:
    scale = Swarmscale(ScaleConfig())
    with trio.move_on_after(seconds):
        await run_swarmscale(
            placements,  # type: ignore[arg-type]
            engine,  # type: ignore[arg-type]
            comb,  # type: ignore[arg-type]
            scale,
            clock=trio.current_time,
        )


async def test_swarmscale_calls_a_vote_when_hot_and_only_the_lowest_id_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    me = b"\x05" * 20
    hot = FakeEngine(load=0.95)
    placements = FakePlacements({})
    await scale_for(75.0, hot, FakeComb(me, [peer(b"\x09" * 20, 0.9)]), placements)
    # Hot for 10 s: a vote; still hot after the 60 s cooldown: another.
    assert placements.votes == [("tiny", "/models/tiny", 1)] * 2
    follower = FakePlacements({})
    await scale_for(75.0, hot, FakeComb(me, [peer(b"\x01" * 20, 0.9)]), follower)
    assert follower.votes == []  # the peer with the lower id decides for the neighbourhood
    unordered = FakePlacements({}, ordered=False)  # served by --model: no operator ordered it
    await scale_for(75.0, hot, FakeComb(me, [peer(b"\x09" * 20, 0.9)]), unordered)
    assert unordered.votes == []


async def test_swarmscale_unloads_only_a_voted_in_replica_when_cold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    me = b"\x05" * 20
    others = [peer(b"\x09" * 20, 0.05)]
    cold = FakeEngine(load=0.05)
    voted_in = FakePlacements({("tiny", 123): 0})
    await scale_for(305.0, cold, FakeComb(me, others), voted_in)
    assert voted_in.given_back == ["tiny"] and cold.unloaded == ["tiny"]
    operators = FakeEngine(load=0.05)
    configured = FakePlacements({})  # loaded with --model: swarmscale leaves it
    await scale_for(305.0, operators, FakeComb(me, others), configured)
    assert configured.given_back == [] and operators.unloaded == []
    alone = FakeEngine(load=0.0)
    await scale_for(305.0, alone, FakeComb(me, []), FakePlacements({("tiny", 1): 0}))
    assert alone.unloaded == []  # the last replica stays


# -- who may place what (issue 31) -------------------------------------------------


async def test_placement_needs_an_admin_key_and_a_trusted_order(tmp_path: Path) -> None:
    model_dir, other_dir = tmp_path / "tiny", tmp_path / "other"
    model_dir.mkdir()
    other_dir.mkdir()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agents = await start_swarm(tmp_path, nursery, 3)
            api, plain = str(agents[0].api), str(agents[1].api)
            body = {"model": "tiny", "source": str(model_dir), "ttl": 2}
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(f"{api}/placements", json=body)
                assert r.status_code == 401, r.text  # no key
                r = await client.post(
                    f"{api}/placements", json=body, headers={"authorization": "Bearer client"}
                )
                assert r.status_code == 403, r.text  # a key, not an admin's
                r = await client.post(f"{plain}/placements", json=body, headers=AS_ADMIN)
                assert r.json()["error"]["code"] == "no_admin_key"  # an agent without one
                # An order signed by a key no agent trusts, or for another source
                stranger = Identity.from_private_bytes(b"\x33" * 32)
                operator = load_operator_key(tmp_path / "a0" / OPERATOR_KEY_FILE_NAME)
                for signer, source in [(stranger, str(model_dir)), (operator, str(other_dir))]:
                    forged = order_to_json(sign_order(signer, "tiny", source, now=time.time()))
                    r = await client.post(
                        f"{api}/placements", json={**body, "order": forged}, headers=AS_ADMIN
                    )
                    assert r.status_code == 403 and r.json()["error"]["param"] == "order", r.text
                # A source outside every agent's placement_sources: won, not loaded
                r = await client.post(
                    f"{api}/placements",
                    json={**body, "model": "etc", "source": "/etc"},
                    headers=AS_ADMIN,
                )
                assert r.status_code == 200 and r.json()["winners"] == [], r.text
                # Placed from one source, the name is refused from another (409)
                r = await client.post(f"{api}/placements", json=body, headers=AS_ADMIN)
                assert r.status_code == 200 and len(r.json()["winners"]) == 1, r.text
                while "tiny" not in await models(client, api):
                    await trio.sleep(0.1)
                r = await client.post(
                    f"{api}/placements",
                    json={**body, "source": str(other_dir)},
                    headers=AS_ADMIN,
                )
                assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken", r.text
                assert "etc" not in await models(client, api)
                # the winner that gave /etc back counted it where operators look
                refused = 0.0
                for agent in agents[1:]:
                    text = (await client.get(str(agent.api).removesuffix("/v1") + "/metrics")).text
                    name = 'hexamesh_authority_refused_total{what="placement_load"}'
                    refused += sum(
                        float(li.split()[-1]) for li in text.splitlines() if li.startswith(name)
                    )
                assert refused >= 1
            nursery.cancel_scope.cancel()


async def test_an_agent_takes_no_placement_unless_its_operator_said_so(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agents = await start_swarm(tmp_path, nursery, 3, accept_placements=False)
            api = str(agents[0].api)
            body = {"model": "tiny", "source": str(model_dir), "ttl": 2}
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(f"{api}/placements", json=body, headers=AS_ADMIN)
                assert r.status_code == 200 and r.json()["state"] == "no quorum", r.text
                assert r.json()["scouts"] == 3  # the vote ran: nobody would load it
            nursery.cancel_scope.cancel()


def test_a_placement_source_is_matched_as_it_resolves_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/models/*` matched `/models/../etc` and a symlink out of it; `Qwen/*`
    matched a directory `Qwen/x` beside the agent (vLLM loads that first)."""
    root = tmp_path.resolve()
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "models" / "out").symlink_to(root / "etc")
    allowed = functools.partial(source_allowed, patterns=(f"{root}/models/*", "Qwen/*"))
    assert allowed(f"{root}/models/tiny") and allowed("Qwen/Qwen2-0.5B")
    assert not allowed(f"{root}/models/../etc") and not allowed(f"{root}/models/out")
    assert not allowed("Qwen/../etc") and not allowed("../models/tiny")
    monkeypatch.chdir(root)
    (root / "Qwen" / "local").mkdir(parents=True)
    assert not allowed("Qwen/local")
